"""Stage-2 (U-Fuser) training step: seconds per step and peak memory, through the real engine step.

Examples::

    python benchmarks/bench_train_step.py                      # the cpu recipe and the paper recipe at batch 1
    python benchmarks/bench_train_step.py --device cuda --recipes paper --batch-size 4

The paper recipe uses the 39.4M-parameter sensors, 128x128 patches and the 10-element group;
on this CPU one step at batch 1 takes tens of seconds. Peak memory is the resident-set high-water
mark growth on CPU (Linux) and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb(key: str) -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def bench(recipe_name: str, device: torch.device, batch_size: int | None, repeats: int) -> dict:
    from monai_emma.engines import FuserStep, recipe
    from monai_emma.losses import EMMALoss
    from monai_emma.networks import SensorBank, UFuser
    from monai_emma.transforms import TransformGroup

    cfg = recipe(recipe_name)
    b = batch_size or cfg.fuser.batch_size
    p = cfg.fuser.patch_size
    torch.set_flush_denormal(True)
    bank = SensorBank(["mri", "ct"], preset=cfg.sensor_preset).to(device)
    fuser = UFuser().to(device)
    step = FuserStep(bank, EMMALoss(cfg.alpha), TransformGroup(cfg.shifts, cfg.rotations, cfg.reflections), 0)

    class Engine:
        pass

    engine = Engine()
    engine.network, engine.state = fuser, Engine()
    engine.state.device, engine.state.iteration = device, 0
    engine.optimizer = torch.optim.Adam(fuser.parameters(), lr=cfg.fuser.lr)
    batch = {
        "a": torch.rand(b, 1, p, p),
        "b": torch.rand(b, 1, p, p),
        "a_modality": ["mri"] * b,
        "b_modality": ["ct"] * b,
    }
    step(engine, batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        open("/proc/self/clear_refs", "w").write("5")
    base = _rss_mb("VmRSS")
    times = []
    for i in range(repeats):
        engine.state.iteration = i + 1
        t = time.perf_counter()
        step(engine, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb("VmHWM") - base
    sensor_grads = sum(p.grad is not None for p in bank.parameters())
    return {
        "recipe": recipe_name,
        "batch": b,
        "patch": p,
        "group": step.group.size,
        "sensor_params": sum(q.numel() for q in bank.parameters()) // len(bank.modalities),
        "s_per_step": statistics.median(times),
        "peak_mb": peak,
        "sensor_params_with_grad": sensor_grads,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's (cpu 4); paper is timed at 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    print(f"{'recipe':<7} {'batch':>5} {'patch':>5} {'group':>5} {'sensor params':>13} {'s/step':>7} {'peak MB':>8}")
    for name in args.recipes:
        bs = args.batch_size or (1 if name == "paper" and device.type == "cpu" else None)
        row = bench(name, device, bs, args.repeats)
        rows.append(row)
        print(
            f"{row['recipe']:<7} {row['batch']:>5} {row['patch']:>5} {row['group']:>5} {row['sensor_params']:>13,} "
            f"{row['s_per_step']:>7.2f} {row['peak_mb']:>8.0f}"
        )
        assert row["sensor_params_with_grad"] == 0, "frozen sensors must not hold gradients"
    return rows


if __name__ == "__main__":
    main()
