"""One prepared GPU check: inference throughput, the paper recipe's training step, a one-epoch Ray
pipeline run on the GPU and the bundle's multi-GPU overlay (NCCL, world size 1).

    python benchmarks/gpu_check.py --device cuda --data ../shared/data/harvard --output gpu-check
    python benchmarks/gpu_check.py --device cpu --quick --output /tmp/gpu-check    # the test's way

Sized to finish in about 8 minutes on one H100/H200-class card. Writes ``gpu_check.json`` and
``gpu_check.md`` (a Markdown table per section) to ``--output``. Every section records its own
failure instead of stopping the others, so one run gives every answer it can.

Sections:

1. ``device``: torch, CUDA, cuDNN, the card and its memory.
2. ``throughput``: fused slices/s of the U-Fuser (shipped weights, inference mode) at 256² and
   512², batch 1 to 64, fp32 and autocast fp16/bf16, contiguous and channels-last; peak memory.
   Goal: at least 1,000 slices/s at 256² with AMP on one H100/H200-class card.
3. ``train_step``: the paper recipe's stage-2 step (39.4 M-parameter sensors, 128² patches,
   10-element group) through the real engine step, in fp32 and bf16: seconds per step and peak
   memory (``bench_train_step.py``); with ``--official-dir`` (a MMIF-EMMA checkout) also the
   official step side by side at batch 1 and 4, step-0 losses compared.
4. ``pipeline``: ``pipelines/train.py --use-gpu`` for one epoch of each stage on ``--data``.
5. ``bundle_ddp``: ``torchrun --nproc_per_node 1`` with ``train_fuser.json`` +
   ``multi_gpu_train.json`` for one epoch on ``--data`` (NCCL on CUDA).

``--quick`` shrinks everything (64² and 128² slices, batch 1 and 2, the cpu recipe's step, and
the pipeline and bundle sections only when ``--data`` is given) so that the script itself is
tested on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def throughput(device: torch.device, sizes: list[int], batches: list[int], dtypes: list[str], seconds: float) -> list:
    """Fused slices per second for every combination (median of timed repeats after a warm-up)."""
    from monai_emma.networks import ufuser
    from monai_emma.weights import UFuserWeights

    net = ufuser(weights=UFuserWeights.DEFAULT).to(device)
    rows = []
    for size in sizes:
        for batch in batches:
            for dtype in dtypes:
                for layout in ("contiguous", "channels_last"):
                    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                    net = net.to(memory_format=fmt)
                    x = torch.rand(batch, 2, size, size, device=device).to(memory_format=fmt)
                    amp = dtype != "fp32"
                    cast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
                    row = {"size": size, "batch": batch, "dtype": dtype, "layout": layout}
                    try:
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        with torch.inference_mode(), torch.autocast(device.type, dtype=cast, enabled=amp):
                            net(x)  # warm-up (cuDNN autotuning, allocator)
                            _sync(device)
                            times, end = [], time.perf_counter() + seconds
                            while time.perf_counter() < end or len(times) < 3:
                                t = time.perf_counter()
                                net(x)
                                _sync(device)
                                times.append(time.perf_counter() - t)
                        row["slices_per_s"] = round(batch / statistics.median(times), 1)
                        if device.type == "cuda":
                            row["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
                    except Exception as err:  # e.g. fp16 unsupported on this device, out of memory
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    rows.append(row)
    return rows


def should_work(device: torch.device, dtype: str) -> bool:
    """Whether a throughput cell must succeed: fp32 and bf16 autocast everywhere on CPU; on CUDA
    fp32, fp16, and bf16 where the card supports it."""
    if device.type != "cuda" or dtype in ("fp32", "fp16"):
        return True
    return torch.cuda.is_bf16_supported()


def failures(report: dict, device: torch.device) -> list[str]:
    """The cells and sections that should have worked and raised (each one line)."""
    out = [
        f"throughput {r['size']} b{r['batch']} {r['dtype']} {r['layout']}: {r['error']}"
        for r in report.get("throughput", [])
        if "error" in r and should_work(device, r["dtype"])
    ]
    step = report.get("train_step", {})
    if "error" in step:
        out.append(f"train_step: {step['error']}")
    for precision in ("fp32", "bf16"):
        if "error" in step.get(precision, {}) and should_work(device, precision):
            out.append(f"train_step {precision}: {step[precision]['error']}")
    for name in ("pipeline", "bundle_ddp"):
        section = report.get(name, {})
        if section and "skipped" not in section and not section.get("ok", False):
            out.append(f"{name}: {section.get('error', 'failed')}"[:300])
    return out


def train_step(device: torch.device, quick: bool, official_dir: str | None = None) -> dict:
    """Our step in fp32 and bf16 and, with ``official_dir``, the official step beside ours."""
    from bench_train_step import bench, compare

    name, batch, repeats = ("cpu", 1, 1) if quick else ("paper", None, 5)
    out: dict = {}
    for precision in ("fp32", "bf16"):
        try:
            out[precision] = bench(name, device, batch, repeats, precision)
        except Exception as err:  # recorded, the other cells still run
            out[precision] = {"error": f"{type(err).__name__}: {err}"[:500]}
    if official_dir:
        try:
            out["official"] = compare(official_dir, device, [1] if quick else [1, 4], 1 if quick else 3)
        except (Exception, SystemExit) as err:
            out["official"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    return out


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd), "ok": False, "error": f"timed out after {timeout:.0f} s"}
    out = {"command": " ".join(cmd), "ok": proc.returncode == 0, "seconds": round(time.perf_counter() - t, 1)}
    if proc.returncode:
        out["error"] = (proc.stderr or proc.stdout)[-1500:]
    return out


def pipeline(data: str, device: torch.device, work: Path, timeout: float) -> dict:
    cmd = [sys.executable, "pipelines/train.py", "--data", data, "--num-workers", "1"]
    cmd += ["--sensor-epochs", "1", "--fuser-epochs", "1", "--run-root", str(work / "runs"), "--name", "gpu-check"]
    if device.type == "cuda":
        cmd.append("--use-gpu")
    return _run(cmd, timeout)


def bundle_ddp(data: str, device: torch.device, work: Path, timeout: float) -> dict:
    configs = ROOT / "bundles" / "emma" / "configs"
    files = f"['{configs / 'train_fuser.json'}','{configs / 'multi_gpu_train.json'}']"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "1", "-m", "monai.bundle", "run", "--config_file", files]
    cmd += ["--dataset_dir", data, "--bundle_root", str(ROOT / "bundles" / "emma"), "--epochs", "1"]
    cmd += ["--output_dir", str(work / "bundle"), "--device", "cuda" if device.type == "cuda" else "cpu"]
    return _run(cmd, timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _markdown(report: dict) -> str:
    lines = ["# GPU check", "", "| device | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["device"].items()]
    lines += ["", "## Throughput (U-Fuser, fused slices/s)", ""]
    lines += ["| size | batch | dtype | layout | slices/s | peak MB |", "|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        value = r.get("slices_per_s", r.get("error", ""))
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['dtype']} | {r['layout']} | {value} | {r.get('peak_mb', '')} |"
        )
    for section in ("train_step", "pipeline", "bundle_ddp"):
        lines += ["", f"## {section}", "", "```json", json.dumps(report[section], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes: a CPU smoke run of the script itself")
    p.add_argument("--data", help="Harvard-style root for the pipeline and bundle sections")
    p.add_argument("--output", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--seconds", type=float, help="timing per throughput cell (default 2, quick 0.2)")
    p.add_argument("--official-dir", help="a MMIF-EMMA checkout: the official training step beside ours")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (use --device cpu --quick for a smoke run)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    report: dict = {"device": device_info(device), "quick": quick}
    t0 = time.perf_counter()
    sizes, batches = ([64, 128], [1, 2]) if quick else ([256, 512], [1, 4, 16, 64])
    dtypes = ["fp32", "bf16"] if device.type == "cpu" else ["fp32", "fp16", "bf16"]
    seconds = args.seconds or (0.2 if quick else 2.0)
    report["throughput"] = throughput(device, sizes, batches, dtypes, seconds)
    try:
        report["train_step"] = train_step(device, quick, args.official_dir)
    except Exception as err:
        report["train_step"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn, limit in (("pipeline", pipeline, 240.0), ("bundle_ddp", bundle_ddp, 180.0)):
            if args.data:
                report[name] = fn(args.data, device, Path(tmp), limit)
            else:
                report[name] = {"skipped": "no --data given"}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(_markdown(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({report['seconds']} s)")
    broken = failures(report, device)
    if broken:  # loudly: a cell that should work and raised is a failed check, not a footnote
        print("FAILED (should have worked):\n  " + "\n  ".join(broken), file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
