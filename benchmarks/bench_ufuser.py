"""U-Fuser inference speed: ms per slice, achieved GFLOP/s and peak memory.

Examples::

    python benchmarks/bench_ufuser.py                     # 256 and 512, batch 1 and 8, 2 threads
    python benchmarks/bench_ufuser.py --official-dir ../MMIF-EMMA   # adds the official model side by side
    python benchmarks/bench_ufuser.py --compile --sizes 256 --batches 1
    python benchmarks/bench_ufuser.py --profile            # where the time goes, against the CPU's rates

``--official-dir`` is a checkout of ``Zhaozixiang1228/MMIF-EMMA`` (needs ``einops``); it is
imported from there at run time and never copied into this project. Official and monai-emma runs
are interleaved (A, B, A, B, ...) so that machine noise hits both alike; the ratio is the ratio of
the medians. FLOPs are counted with ``torch.utils.flop_counter`` on the plain (paper) path, so
"GFLOP/s" is the model's nominal work per second; the fast path executes fewer FLOPs than that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load_official(official_dir: str | None):
    if not official_dir:
        return None
    path = Path(official_dir)
    if not (path / "nets" / "Ufuser.py").is_file():
        print(f"[skip] {path}/nets/Ufuser.py not found: official comparison skipped")
        return None
    sys.path.insert(0, str(path))
    try:
        from nets.Ufuser import Ufuser  # type: ignore[import-not-found]
    except ImportError as err:  # einops missing, typically
        print(f"[skip] cannot import the official U-Fuser ({err}): official comparison skipped")
        return None
    return Ufuser


def model_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        # the plain path: grad enabled selects it; no backward is run
        was = net.training
        net.train()
        net(x)
        net.train(was)
    return int(counter.get_total_flops())


def tune_glibc_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds so freed tensors stay in the heap (no page faults)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 256 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def time_interleaved(fns: dict[str, callable], repeats: int, warmup: int = 2) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory_mb(size: int, batch: int, threads: int, compile_: bool) -> float:
    """Peak resident-memory growth while fusing one batch, in a fresh process (Linux ``VmHWM``
    reset through ``/proc/self/clear_refs``, so import-time peaks do not hide it)."""
    code = "\n".join(
        [
            "import sys, torch",
            f"torch.set_num_threads({threads})",
            f"sys.path.insert(0, {str(ROOT)!r})",
            "from monai_emma.networks import UFuser",
            "def status(key):",
            "    for line in open('/proc/self/status'):",
            "        if line.startswith(key): return int(line.split()[1]) / 1024",
            "net = UFuser().eval()",
            "net = torch.compile(net)" if compile_ else "",
            f"x = torch.rand({batch}, 2, {size}, {size})",
            "with torch.inference_mode(): net(x)",
            "open('/proc/self/clear_refs', 'w').write('5')",
            "base = status('VmRSS')",
            "with torch.inference_mode(): net(x)",
            "print(status('VmHWM') - base)",
        ]
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return float("nan")


def _rate_ms(fn, repeats: int = 21) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def machine_rates() -> dict[str, float]:
    """GFLOP/s this CPU reaches for fp32 GEMM and for 3x3 channels-last convolutions of 8 and 16
    channels (the U-Fuser's first level), measured here and now."""
    import torch.nn.functional as F

    out = {}
    a = torch.rand(1024, 1024)
    out["GEMM 1024^3"] = 2 * 1024**3 / _rate_ms(lambda: a @ a) / 1e6
    for c, hw in ((8, 256), (16, 256), (32, 64)):
        x = torch.rand(1, c, hw + 2, hw + 2).contiguous(memory_format=torch.channels_last)
        w = torch.rand(c, c, 3, 3)
        out[f"conv3x3 {c}->{c} @ {hw}^2"] = 2 * c * c * 9 * hw * hw / _rate_ms(lambda x=x, w=w: F.conv2d(x, w)) / 1e6
    return out


def profile_fast_path(size: int = 256, batch: int = 1, repeats: int = 5, bf16: bool = False) -> list[dict]:
    """Self time per op kind (ms per forward) on the inference path, with GFLOP/s for convolutions
    and matrix products (FLOPs from the recorded shapes); ``bf16`` runs it under bfloat16 autocast."""
    import contextlib

    from torch.profiler import ProfilerActivity, profile

    from monai_emma.networks import UFuser

    net = UFuser().eval()
    x = torch.rand(batch, 2, size, size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for _ in range(3):
            net(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(repeats):
                net(x)
    rows: dict[str, dict[str, float]] = {}
    for ev in prof.events():
        if ev.cpu_parent is not None:
            continue  # top-level ops, each with the time of everything it called
        shapes, args = ev.input_shapes or [], getattr(ev, "concrete_inputs", None) or []
        flops, key = 0.0, ev.name
        if ev.name == "aten::conv2d" and len(shapes) > 1 and len(args) > 6:
            (n, _, h, w), (co, ci, kh, kw) = shapes[0], shapes[1]
            stride, pad = args[3], args[4]
            ho, wo = (h + 2 * pad[0] - kh) // stride[0] + 1, (w + 2 * pad[1] - kw) // stride[1] + 1
            flops = 2.0 * n * co * ci * kh * kw * ho * wo / args[6]
            key = f"conv {ci}->{co} {kh}x{kw}/{stride[0]} -> {ho}x{wo}"
        elif ev.name in ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul") and len(shapes) >= 2:
            sa, sb = (shapes[1], shapes[2]) if ev.name == "aten::baddbmm" else (shapes[0], shapes[1])
            if len(sa) >= 2 and len(sb) >= 2:
                flops = 2.0 * math.prod(sa) * sb[-1]
        row = rows.setdefault(key, {"ms": 0.0, "flops": 0.0, "calls": 0})
        row["ms"] += ev.cpu_time_total / 1e3 / repeats
        row["flops"] += flops / repeats
        row["calls"] += 1 / repeats
    out = []
    for key, row in sorted(rows.items(), key=lambda kv: -kv[1]["ms"]):
        gflops = row["flops"] / (row["ms"] / 1e3) / 1e9 if row["flops"] and row["ms"] else float("nan")
        out.append({"op": key, "ms_per_forward": row["ms"], "calls": row["calls"], "gflops": gflops})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--official-dir", default=os.environ.get("EMMA_OFFICIAL_DIR"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(UFuser)")
    parser.add_argument("--bf16", action="store_true", help="also time the fast path under bfloat16 autocast")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print where the fast path spends its time and exit")
    parser.add_argument(
        "--tune-allocator",
        action="store_true",
        help="keep freed memory in glibc's heap (mallopt) so no run pays page faults; helps both models",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.profile:
        rates = machine_rates()
        for k, v in rates.items():
            print(f"machine: {k}: {v:.0f} GFLOP/s")
        rows = profile_fast_path(args.sizes[0], args.batches[0], bf16=args.bf16)
        total = sum(r["ms_per_forward"] for r in rows)
        kind = "bf16 autocast" if args.bf16 else "fp32"
        print(f"fast path ({kind}), {args.sizes[0]}^2 batch {args.batches[0]}: {total:.1f} ms of op time per forward")
        print(f"{'op':<34} {'ms':>7} {'share':>6} {'calls':>6} {'GFLOP/s':>8}")
        for r in rows[:25]:
            print(
                f"{r['op']:<34} {r['ms_per_forward']:>7.2f} {r['ms_per_forward'] / total:>6.1%} "
                f"{r['calls']:>6.0f} {r['gflops']:>8.0f}"
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"rates": rates, "profile": rows}, indent=2))
        return {"rates": rates, "profile": rows}
    from monai_emma.networks import UFuser
    from monai_emma.precision import autocast

    official_cls = _load_official(args.official_dir)
    net = UFuser().eval()
    official = None
    if official_cls is not None:
        from monai_emma.networks.official import ufuser_key_to_official

        official = official_cls().eval()
        official.load_state_dict({ufuser_key_to_official(k): v for k, v in net.state_dict().items()})
    compiled = torch.compile(net) if args.compile else None

    print(f"torch {torch.__version__}, {args.threads} threads, fp32, median of {args.repeats}")
    header = f"{'size':>5} {'batch':>5} {'path':<10} {'ms/slice':>9} {'GFLOP/s':>8} {'peak MB':>8} {'max|diff|':>10}"
    print(header)
    results = []
    if args.tune_allocator:
        print("glibc allocator tuned:", tune_glibc_allocator())
    flops_per_slice = {}
    for size in args.sizes:
        for batch in args.batches:
            x = torch.rand(batch, 2, size, size)
            fns = {"monai-emma": lambda x=x: net(x)}
            if official is not None:
                fns["official"] = lambda x=x: official(x[:, 1:2], x[:, 0:1])
            if compiled is not None:
                fns["compiled"] = lambda x=x: compiled(x)
            if args.bf16:

                def bf16(x=x):
                    with autocast("bf16", x.device):
                        return net(x)

                fns["bf16"] = bf16
            with torch.inference_mode():
                ref = net(x)
                diffs = {k: float((fn() - ref).abs().max()) for k, fn in fns.items()}
                med = time_interleaved(fns, args.repeats)
            if size not in flops_per_slice:
                # counted after timing: the plain path's large allocations would otherwise
                # pre-warm the allocator and flatter whichever model runs next
                flops_per_slice[size] = model_flops(net, torch.rand(1, 2, size, size))
            for name, sec in med.items():
                mem = float("nan")
                if not args.no_memory and name not in ("official", "bf16"):
                    mem = peak_memory_mb(size, batch, args.threads, name == "compiled")
                row = {
                    "size": size,
                    "batch": batch,
                    "path": name,
                    "ms_per_slice": 1e3 * sec / batch,
                    "gflops": flops_per_slice[size] * batch / sec / 1e9,
                    "peak_mb": mem,
                    "max_abs_diff": diffs[name],
                }
                results.append(row)
                print(
                    f"{size:>5} {batch:>5} {name:<10} {row['ms_per_slice']:>9.1f} {row['gflops']:>8.1f} "
                    f"{mem:>8.0f} {diffs[name]:>10.1e}"
                )
            if "official" in med:
                print(f"{'':>11} speed-up vs official: {med['official'] / med['monai-emma']:.2f}x")
                if "bf16" in med:
                    print(f"{'':>11} bf16 speed-up vs official: {med['official'] / med['bf16']:.2f}x")
    for size, flops in flops_per_slice.items():
        print(f"model FLOPs per {size}x{size} slice: {flops / 1e9:.2f} GFLOP")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return {"results": results}


if __name__ == "__main__":
    main()
