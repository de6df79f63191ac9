"""One epoch of each stage, four ways, on the same data: where the distributed pipeline's time goes.

    python benchmarks/bench_pipeline.py --data ROOT                 # single process, 2x1, 1x2
    python benchmarks/bench_pipeline.py --data ROOT --cluster       # + a two-node loopback cluster job

Runs, one after the other, each in fresh processes (the machine should be otherwise idle):

1. ``monai-emma train --data ROOT --recipe cpu --epochs 1`` (one process, all threads);
2. ``python pipelines/train.py --data ROOT --num-workers 2 --epochs 1`` (local Ray, SQLite
   MLflow: two workers with one CPU thread each);
3. the same with ``--num-workers 1 --resources-per-worker '{"CPU": N}'`` (one worker, N threads);
4. with ``--cluster``: the pipeline as a Ray job on a head and a second node started with
   ``ray start`` on 127.0.0.1 (one CPU each) and an MLflow server, as docs/cluster.md describes
   (``tests/loopback_cluster.py`` starts them), timed from the first ``ray start`` to the job's
   success.

Prints the wall time of each, the pipelines' breakdown (``timings.json``: worker-group start,
set-up, steps, validation, checkpoints, MLflow, report, shutdown, and the driver's phases) and the
seconds per optimisation step inside and outside Ray, and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _timed(cmd: list[str], log: Path, timeout: float) -> float:
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=_env(), timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t


def single_process(data: str, work: Path, timeout: float) -> dict:
    out = work / "single"
    cmd = [sys.executable, "-m", "monai_emma.cli", "train", "--data", data, "--recipe", "cpu", "--epochs", "1"]
    seconds = _timed([*cmd, "--output", str(out)], work / "single.log", timeout)
    steps = {}
    for line in (work / "single.log").read_text().splitlines():
        m = re.search(r"steps ([\d.]+) s \((\d+) x ([\d.]+) s\)", line)
        if m:
            steps[f"stage{len(steps) + 1}"] = {"steps": float(m.group(1)), "count": int(m.group(2))}
    return {"wall": round(seconds, 1), "steps": steps}


def pipeline(data: str, work: Path, name: str, workers: int, cpus: int, timeout: float) -> dict:
    run_root = work / name
    cmd = [sys.executable, "pipelines/train.py", "--data", data, "--num-workers", str(workers), "--epochs", "1"]
    cmd += ["--resources-per-worker", json.dumps({"CPU": cpus}), "--run-root", str(run_root), "--name", name]
    seconds = _timed(cmd, work / f"{name}.log", timeout)
    timings = json.loads((run_root / name / "timings.json").read_text())
    return {"wall": round(seconds, 1), "timings": timings}


def cluster(data: str, work: Path, timeout: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.loopback_cluster import LoopbackCluster

    # Ray's socket paths must stay short
    base = Path(tempfile.mkdtemp(prefix="emma-bc-", dir="/tmp"))
    c = LoopbackCluster(base)
    t0 = time.perf_counter()
    try:
        c.start_head()
        c.start_worker("node2")
        c.start_mlflow()
        up = time.perf_counter() - t0
        entry = ["python", "pipelines/train.py", "--data", str(Path(data).resolve()), "--num-workers", "2"]
        entry += ["--resources-per-worker", '{"CPU": 1}', "--tracking-uri", c.tracking_uri, "--epochs", "1"]
        entry += ["--storage-path", str(work / "cluster" / "ray"), "--run-root", str(work / "cluster"), "--name", "bc"]
        submitted = time.perf_counter()
        c.submit(ROOT, entry, "bench-cluster")
        status = c.wait_for_job("bench-cluster", timeout)
        if status != "SUCCEEDED":
            raise SystemExit(f"cluster job {status}:\n{c.job_logs('bench-cluster')[-3000:]}")
        done = time.perf_counter()
        timings = json.loads((work / "cluster" / "bc" / "timings.json").read_text())
    finally:
        c.stop()
    return {
        "wall": round(done - t0, 1),
        "cluster_up": round(up, 1),
        "job": round(done - submitted, 1),
        "timings": timings,
    }


def report(results: dict) -> str:
    lines = ["| run | wall s | vs single process |", "|---|---|---|"]
    single = results["single"]["wall"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['wall']:.1f} | {r['wall'] / single:.2f}x |")
    from monai_emma.pipeline.driver import format_timings  # the pipeline's own table, not a second one

    for name, r in results.items():
        if "timings" in r:
            lines += ["", f"{name}:", format_timings(r["timings"])]
    steps = results["single"]["steps"]
    if steps:
        lines.append("")
        lines.append(
            "single process s per step: "
            + ", ".join(f"{k} {v['steps'] / v['count']:.3f} ({v['count']} steps)" for k, v in steps.items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Harvard-style root (e.g. 15 pairs of each pair type)")
    p.add_argument("--cluster", action="store_true", help="also run the job on a two-node loopback cluster")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="threads of the one-worker run")
    p.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    data = str(Path(args.data).resolve())
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="emma-bench-pipeline-") as tmp:
        work = Path(tmp)
        results["single"] = single_process(data, work, args.timeout)
        results["ray 2x1"] = pipeline(data, work, "w2", 2, 1, args.timeout)
        results[f"ray 1x{args.cpus}"] = pipeline(data, work, "w1", 1, args.cpus, args.timeout)
        if args.cluster:
            results["cluster job"] = cluster(data, work, args.timeout)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
