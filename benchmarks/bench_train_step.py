"""Stage-2 (U-Fuser) training step: seconds per step and peak memory, through the real engine step,
and side by side with the official EMMA training step.

Examples::

    python benchmarks/bench_train_step.py                      # the cpu recipe and the paper recipe at batch 1
    python benchmarks/bench_train_step.py --device cuda --recipes paper --batch-size 4
    python benchmarks/bench_train_step.py --official-dir ../MMIF-EMMA --batch-sizes 1 4 --repeats 3
    python benchmarks/bench_train_step.py --profile             # where our paper-recipe step goes

``--official-dir`` is a checkout of ``Zhaozixiang1228/MMIF-EMMA`` (its code is imported from
there, never copied; it needs ``kornia``, ``einops``, ``h5py`` and ``opencv``). The comparison
uses the paper's stage-2 recipe: 128x128 patches, the group of 3 shifts, 3 rotations and 3
reflections (10 elements with the identity), the paper's U-Net sensors (39.4M parameters each),
Adam at 1e-4 and EMMA's loss without the prior. Both sides start from the same random weights
(the official networks' initialisation, loaded into ours through the official key maps) and
see the same inputs; at step 0 they also draw the same shifts, and the losses must agree to
1e-5. Then the two steps alternate (official, ours, official, ...) in one process and the medians
are compared. The official loop is the body of its ``train_Fusion.py``: its ``Ufuser``, two
``UNet5`` sensors in eval mode, its ``Transformer`` group and ``loss_fusion``; its sensors'
parameters keep ``requires_grad`` (as in that script), ours are frozen. Current kornia has no
``kornia.rotate``; the official group then uses ``kornia.geometry.transform.rotate``, the same
function under its present name.

Peak memory is the resident-set high-water mark growth on CPU (Linux) and
``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Engine:
    """The attributes of an ignite engine that :class:`~monai_emma.engines.FuserStep` reads."""

    class _State:
        pass

    def __init__(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.network, self.optimizer = network, optimizer
        self.state = self._State()
        self.state.device, self.state.iteration = device, 0


def _our_step(cfg, bank, fuser: torch.nn.Module, device: torch.device):
    from monai_emma.engines import FuserStep
    from monai_emma.losses import EMMALoss
    from monai_emma.transforms import TransformGroup

    group = TransformGroup(cfg.shifts, cfg.rotations, cfg.reflections)
    step = FuserStep(bank, EMMALoss(cfg.alpha), group, seed=0)
    engine = _Engine(fuser, torch.optim.Adam(fuser.parameters(), lr=cfg.fuser.lr), device)
    return step, engine


def bench(
    recipe_name: str, device: torch.device, batch_size: int | None, repeats: int, precision: str = "fp32"
) -> dict:
    """Our stage-2 step alone on random patches: median seconds per step and peak memory, in
    ``precision`` (``"fp32"`` or ``"bf16"``, the engine's ``precision``)."""
    from monai_emma.engines import recipe
    from monai_emma.networks import SensorBank, UFuser

    cfg = recipe(recipe_name)
    b = batch_size or cfg.fuser.batch_size
    p = cfg.fuser.patch_size
    torch.set_flush_denormal(True)
    bank = SensorBank(["mri", "ct"], preset=cfg.sensor_preset).to(device)
    fuser = UFuser().to(device)
    step, engine = _our_step(cfg, bank, fuser, device)
    engine.precision = precision
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
        _sync(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb("VmHWM") - base
    sensor_grads = sum(p.grad is not None for p in bank.parameters())
    return {
        "recipe": recipe_name,
        "precision": precision,
        "batch": b,
        "patch": p,
        "group": step.group.size,
        "sensor_params": sum(q.numel() for q in bank.parameters()) // len(bank.modalities),
        "s_per_step": statistics.median(times),
        "peak_mb": peak,
        "sensor_params_with_grad": sensor_grads,
    }


# --- the official training step ---------------------------------------------------------------


def load_official(official_dir: str):
    """The official ``Ufuser``, ``UNet5``, ``loss_fusion`` and ``Transformer`` from a checkout."""
    path = Path(official_dir).resolve()
    if not (path / "nets" / "Ufuser.py").is_file() or not (path / "utils.py").is_file():
        raise SystemExit(f"{path}: not a MMIF-EMMA checkout (nets/Ufuser.py and utils.py expected)")
    import kornia

    if not hasattr(kornia, "rotate"):  # the official group calls kornia.rotate (kornia < 0.6)
        kornia.rotate = kornia.geometry.transform.rotate
    sys.path.insert(0, str(path))
    from nets.Ufuser import Ufuser
    from nets.Unet5 import UNet5
    from utils import Transformer, loss_fusion

    return Ufuser, UNet5, loss_fusion, Transformer


def _perturb_batch_norm(net: torch.nn.Module, seed: int) -> None:
    """Move the sensors' batch-norm statistics and affine terms off their initial values."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _official_shifts(seed: int, h: int, w: int, n: int) -> list[tuple[int, int]]:
    """The (row, column) shifts the official group draws after ``random.seed(seed)``: ``n`` row
    offsets sampled from ±[1, H-1], then ``n`` column offsets from ±[1, W-1]."""
    rng = random.Random(seed)
    rows = rng.sample(list(np.concatenate([-np.arange(1, h), np.arange(1, h)])), n)
    cols = rng.sample(list(np.concatenate([-np.arange(1, w), np.arange(1, w)])), n)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


class Comparison:
    """The official step and ours on the same weights, inputs and recipe (see the module docstring)."""

    def __init__(self, official_dir: str, device: torch.device, batch: int, seed: int = 0) -> None:
        from monai_emma.engines import recipe
        from monai_emma.networks import PseudoSensor, SensorBank, UFuser
        from monai_emma.networks.official import ufuser_key_from_official

        Ufuser, UNet5, loss_fusion, Transformer = load_official(official_dir)
        cfg = recipe("paper")
        self.cfg, self.device, self.batch = cfg, device, batch
        p = cfg.fuser.patch_size
        torch.manual_seed(seed)
        self.model = Ufuser().to(device).train()
        self.f2v, self.f2i = UNet5().to(device), UNet5().to(device)
        for i, sensor in enumerate((self.f2v, self.f2i)):
            _perturb_batch_norm(sensor, seed + 10 + i)
            sensor.eval()
        self.loss = loss_fusion()
        self.group = Transformer(cfg.shifts, cfg.rotations, cfg.reflections)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.fuser.lr, weight_decay=0)

        fuser = UFuser()
        fuser.load_state_dict({ufuser_key_from_official(k): v for k, v in self.model.state_dict().items()})
        bank = SensorBank(["vis", "ir"], preset="paper")
        bank.sensors["vis"].load_state_dict(PseudoSensor.from_official(self.f2v.state_dict()).state_dict())
        bank.sensors["ir"].load_state_dict(PseudoSensor.from_official(self.f2i.state_dict()).state_dict())
        self.fuser = fuser.to(device)
        self.step, self.engine = _our_step(cfg, bank.to(device), self.fuser, device)
        g = torch.Generator().manual_seed(seed + 1)
        self.vis = torch.rand(batch, 1, p, p, generator=g).to(device)
        self.ir = torch.rand(batch, 1, p, p, generator=g).to(device)
        self.our_batch = {"a": self.vis, "b": self.ir, "a_modality": ["vis"] * batch, "b_modality": ["ir"] * batch}

    def official(self) -> float:
        """One step of the official loop (the body of ``train_Fusion.py``)."""
        fused = self.model(self.ir, self.vis)
        ft = self.group.apply(fused)
        ft_caret = self.model(self.f2i(ft), self.f2v(ft))
        self.opt.zero_grad()
        alpha = self.cfg.alpha
        sensing = self.loss(self.f2v(fused), self.vis) + self.loss(self.f2i(fused), self.ir)
        total = sensing + alpha * self.loss(ft, ft_caret)
        total.backward()
        self.opt.step()
        return float(total.detach())

    def ours(self) -> float:
        self.engine.state.iteration += 1
        return float(self.step(self.engine, self.our_batch)["loss"])

    def first_losses(self, seed: int = 0) -> tuple[float, float]:
        """Step 0 of both sides with the same draw of shifts: (official loss, our loss)."""
        p = self.cfg.fuser.patch_size
        shifts = _official_shifts(seed, p, p, self.cfg.shifts)
        shift = self.step.group.shift
        shift.offsets, draw = shifts, shift.randomize
        shift.randomize = lambda data: None  # keep the official draw for this step
        try:
            random.seed(seed)
            official = self.official()
            ours = self.ours()
        finally:
            shift.randomize = draw
        return official, ours


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def compare(official_dir: str, device: torch.device, batch_sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for b in batch_sizes:
        c = Comparison(official_dir, device, b)
        official_0, ours_0 = c.first_losses()
        diff = abs(official_0 - ours_0)
        print(f"batch {b}: step-0 loss official {official_0!r}, ours {ours_0!r}, |difference| {diff:.2e}")
        if diff > 1e-5:
            raise SystemExit(f"step-0 losses differ by {diff:.2e} (> 1e-5)")
        times: dict[str, list[float]] = {"official": [], "ours": []}
        for _ in range(repeats):
            for name, fn in (("official", c.official), ("ours", c.ours)):
                t = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t)
        row = {
            "batch": b,
            "official_s": statistics.median(times["official"]),
            "ours_s": statistics.median(times["ours"]),
            "official_all_s": times["official"],
            "ours_all_s": times["ours"],
            "loss_difference_step0": diff,
        }
        row["speedup"] = row["official_s"] / row["ours_s"]
        official_s, ours_s = row["official_s"], row["ours_s"]
        print(f"batch {b}: official {official_s:.2f} s/step, ours {ours_s:.2f} s/step, {row['speedup']:.2f}x")
        rows.append(row)
        del c
    return rows


# --- where our step goes ---------------------------------------------------------------------


def profile(device: torch.device, batch: int, repeats: int, precision: str = "fp32") -> dict[str, float]:
    """Seconds per part of our paper-recipe step (median over ``repeats``): the U-Fuser on the
    inputs, the group, the sensors (once per modality on the whole group, as the step runs
    them), the re-fusion, the loss, the backward pass and Adam."""
    import contextlib

    from monai_emma.engines import recipe
    from monai_emma.networks import SensorBank, UFuser
    from monai_emma.precision import autocast
    from monai_emma.transforms import TransformGroup

    cfg = recipe("paper")
    p = cfg.fuser.patch_size
    torch.set_flush_denormal(True)
    bank = SensorBank(["vis", "ir"], preset="paper").to(device).freeze()
    fuser = UFuser().to(device).train()
    loss_fn = _our_step(cfg, bank, fuser, device)[0].loss_fn
    optimizer = torch.optim.Adam(fuser.parameters(), lr=cfg.fuser.lr)
    group = TransformGroup(cfg.shifts, cfg.rotations, cfg.reflections).set_random_state(seed=0)
    a, b = torch.rand(batch, 1, p, p, device=device), torch.rand(batch, 1, p, p, device=device)
    parts: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed(name: str):
        _sync(device)
        t = time.perf_counter()
        yield
        _sync(device)
        parts.setdefault(name, []).append(time.perf_counter() - t)

    for i in range(repeats + 1):
        with autocast(precision, device):
            with timed("fuse"):
                fused = fuser(torch.cat([a, b], 1))
            with timed("group"):
                transformed = group(fused)
            g = transformed.shape[0] // batch
            with timed("sensors"):
                sensed_a, sensed_b = bank(transformed, ["vis"] * g * batch), bank(transformed, ["ir"] * g * batch)
            with timed("re-fuse"):
                refused = fuser(torch.cat([sensed_a, sensed_b], 1))
            with timed("loss"):
                total = loss_fn.components(sensed_a[:batch], a, sensed_b[:batch], b, transformed, refused, fused)
        optimizer.zero_grad(set_to_none=True)
        with timed("backward"):
            total["total"].backward()
        with timed("adam"):
            optimizer.step()
        if i == 0:  # warm-up
            parts.clear()
    out = {k: statistics.median(v) for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's (cpu 4); paper is timed at 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-dir", help="a MMIF-EMMA checkout: compare with the official training step")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="with --official-dir")
    parser.add_argument("--profile", action="store_true", help="where our paper-recipe step goes")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="our step's")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    rows: list[dict] = []
    if args.official_dir:
        rows = compare(args.official_dir, device, args.batch_sizes, args.repeats)
    elif args.profile:
        for precision in args.precision:
            for b in args.batch_sizes:
                parts = profile(device, b, args.repeats, precision)
                print(f"{precision} batch {b}: " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
                rows.append({"precision": precision, "batch": b, **parts})
    else:
        print(f"{'recipe':<7} {'precision':<9} {'batch':>5} {'patch':>5} {'group':>5} {'sensor params':>13} ", end="")
        print(f"{'s/step':>7} {'peak MB':>8}")
        for name in args.recipes:
            for precision in args.precision:
                bs = args.batch_size or (1 if name == "paper" and device.type == "cpu" else None)
                row = bench(name, device, bs, args.repeats, precision)
                rows.append(row)
                print(
                    f"{row['recipe']:<7} {precision:<9} {row['batch']:>5} {row['patch']:>5} {row['group']:>5} "
                    f"{row['sensor_params']:>13,} {row['s_per_step']:>7.2f} {row['peak_mb']:>8.0f}"
                )
                assert row["sensor_params_with_grad"] == 0, "frozen sensors must not hold gradients"
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
