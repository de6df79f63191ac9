"""Speed on a busy machine: quiet vs one and two CPU-bound competitors.

    python benchmarks/bench_busy.py --reference-dir ../MMIF-CDDFuse            # all cases, 0/1/2 competitors
    python benchmarks/bench_busy.py --cases ufuser,metrics --competitors 0 1
    python benchmarks/bench_busy.py --env OMP_NUM_THREADS=2 --cases pipeline    # a shell that exports threads

Each case runs in a fresh process with the environment of this one (plus ``--env``), so the
package's thread policy (:mod:`monai_emma.threads`) decides its threads as a user's command would.
A competitor is a Python busy loop (one CPU-bound process each), started before the case and
stopped after it. Cases:

* ``ufuser``: the shipped U-Fuser (v3), one 256x256 slice (batch 1), ``--repeats`` forwards;
* ``volume``: ``monai-emma fuse`` of a 200-slice phantom MRI/PET pair (NIfTI), the whole command;
* ``metrics``: ``fusion_metrics`` on 256x256 pairs, first call included, alternating with the
  reference evaluator (``--reference-dir``: a checkout of Zhaozixiang1228/MMIF-CDDFuse; its
  ``utils/Evaluator.py`` is imported from there at run time) in the same busy window;
* ``train``: one stage-2 training step of the cpu recipe (batch 4, 64x64 patches);
* ``pipeline``: one epoch per stage of ``pipelines/train.py`` with 2 workers against
  ``monai-emma train`` on the same small phantom dataset (whole commands).

Prints, per case and load, the median and 95th percentile (ms) and their ratio to the quiet
median; writes everything to ``--json``.
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

ROOT = Path(__file__).resolve().parents[1]
CASES = ("ufuser", "volume", "metrics", "train", "pipeline")


def _policy() -> str:
    """Apply the package's thread policy as a command does; a checkout from before it (to time the
    "before" side) keeps PyTorch's defaults."""
    if not (ROOT / "monai_emma" / "threads.py").is_file():  # (an editable install would still find one)
        import torch

        return f"{torch.get_num_threads()} threads (no policy)"
    from monai_emma.threads import apply_thread_policy

    return apply_thread_policy().describe()


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


# --- the cases (run in a child process) --------------------------------------------------------


def case_ufuser(repeats: int) -> dict:
    import torch

    from monai_emma.weights import load_ufuser

    policy = _policy()
    net = load_ufuser("v3").eval()
    x = torch.rand(1, 2, 256, 256)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        for _ in range(repeats):
            t = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t) * 1e3)
    return {"ms": times, "policy": policy}


def case_metrics(repeats: int, reference_dir: str | None) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_metrics import _pairs, _reference

    ref = _reference(reference_dir)  # imported first, as bench_metrics does
    policy = _policy()  # as monai-emma evaluate starts
    from monai_emma.metrics import fusion_metrics

    times, rtimes = [], []
    for f, a, b in _pairs(repeats):
        t = time.perf_counter()
        fusion_metrics(f, a, b)
        times.append((time.perf_counter() - t) * 1e3)
        if ref is not None:
            t = time.perf_counter()
            ref(f, a, b)
            rtimes.append((time.perf_counter() - t) * 1e3)
    return {"ms": times, "reference_ms": rtimes, "policy": policy}


def case_train(repeats: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_train_step import _our_step

    from monai_emma.engines import recipe
    from monai_emma.networks import SensorBank, UFuser

    policy = _policy()
    cfg = recipe("cpu")
    b, p = cfg.fuser.batch_size, cfg.fuser.patch_size
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    bank, fuser = SensorBank(["mri", "ct"], preset=cfg.sensor_preset), UFuser()
    step, engine = _our_step(cfg, bank, fuser, torch.device("cpu"))
    batch = {"a": torch.rand(b, 1, p, p), "b": torch.rand(b, 1, p, p), "a_modality": ["mri"] * b}
    batch["b_modality"] = ["ct"] * b
    step(engine, batch)
    times = []
    for i in range(repeats):
        engine.state.iteration = i + 1
        t = time.perf_counter()
        step(engine, batch)
        times.append((time.perf_counter() - t) * 1e3)
    return {"ms": times, "policy": policy}


def _volume_inputs(folder: Path) -> tuple[Path, Path]:
    from monai_emma.data.phantom import write_phantom_nifti

    if not (folder / "mri.nii.gz").exists():
        # 200 axial slices at 1 mm, 200 mm head, MRI + PET
        write_phantom_nifti(folder, head_mm=200.0, modalities=("mri", "pet"), mri_spacing=1.0)
    return folder / "mri.nii.gz", folder / "pet.nii.gz"


def case_volume(repeats: int, work: Path) -> dict:
    mri, pet = _volume_inputs(work / "volume")
    times = []
    for i in range(repeats):
        out = work / f"fused-{i}.nii.gz"
        cmd = [sys.executable, "-m", "monai_emma.cli", "fuse", str(mri), str(pet), "-o", str(out)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append((time.perf_counter() - t) * 1e3)
        out.unlink(missing_ok=True)
    return {"ms": times}


def case_pipeline(work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_phantom_dataset

    data = write_phantom_dataset(work / "pairs", n=15)
    single = [sys.executable, "-m", "monai_emma.cli", "train", "--data", str(data), "--recipe", "cpu"]
    single += ["--epochs", "1", "--output", str(work / "single")]
    ray = [sys.executable, "pipelines/train.py", "--data", str(data), "--num-workers", "2", "--epochs", "1"]
    ray += ["--run-root", str(work / "ray")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = {}
    for name, cmd in (("single_s", single), ("pipeline_s", ray)):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
        out[name] = time.perf_counter() - t
    return out


def child(args) -> dict:
    work = Path(args.work)
    if args.child == "ufuser":
        return case_ufuser(args.repeats)
    if args.child == "metrics":
        return case_metrics(args.repeats, args.reference_dir)
    if args.child == "train":
        return case_train(max(4, args.repeats // 4))
    if args.child == "volume":
        return case_volume(2, work)
    if args.child == "pipeline":
        return case_pipeline(work)
    raise SystemExit(f"unknown case {args.child}")


# --- the driver --------------------------------------------------------------------------------


def _competitors(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_case(case: str, load: int, args, env: dict[str, str], work: Path) -> dict:
    busy = _competitors(load)
    try:
        time.sleep(0.5 if load else 0)  # let the competitors reach full speed
        out = work / f"{case}-{load}.json"
        cmd = [sys.executable, __file__, "--child", case, "--json", str(out), "--work", str(work)]
        cmd += ["--repeats", str(args.repeats)]
        cmd += ["--reference-dir", args.reference_dir] if args.reference_dir else []
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text())
    finally:
        for p in busy:
            p.kill()
            p.wait()


def summary(results: dict) -> list[str]:
    lines = ["| case | competitors | median ms | p95 ms | median / quiet | p95 / quiet | notes |"]
    lines.append("|---|---|---|---|---|---|---|")
    for case, by_load in results.items():
        quiet = by_load.get("0")
        for load, r in by_load.items():
            if "ms" in r:
                med, p95 = statistics.median(r["ms"]), _p95(r["ms"])
                q = statistics.median(quiet["ms"]) if quiet else float("nan")
                note = r.get("policy", "")
                if r.get("reference_ms"):
                    rmed = statistics.median(r["reference_ms"])
                    first = r["ms"][0]
                    note = f"reference {rmed:.0f} ms: {rmed / med:.1f}x (first call {first:.0f} ms)"
                lines.append(f"| {case} | {load} | {med:.1f} | {p95:.1f} | {med / q:.2f} | {p95 / q:.2f} | {note} |")
            else:
                s, p = r["single_s"], r["pipeline_s"]
                lines.append(
                    f"| {case} | {load} | single {s:.0f} s | pipeline {p:.0f} s | {p / s:.2f}x | | "
                    f"goal <= {1.5 * s + 45:.0f} s |"
                )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="ufuser,metrics,train,volume")
    p.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--reference-dir", help="a checkout of Zhaozixiang1228/MMIF-CDDFuse (the reference evaluator)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the cases' environment")
    p.add_argument("--json", type=Path)
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT))  # this checkout's package (e.g. an older worktree for "before")
        Path(args.json).write_text(json.dumps(child(args)))
        return 0
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    work = Path(args.work or tempfile.mkdtemp(prefix="emma-busy-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}: choose from {', '.join(CASES)}")
        for load in args.competitors:
            results.setdefault(case, {})[str(load)] = run_case(case, load, args, env, work)
            print(f"{case} with {load} competitor(s): done", flush=True)
    print(f"cpus {os.cpu_count()}, environment: {' '.join(args.env) or 'nothing set'}")
    print("\n".join(summary(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
