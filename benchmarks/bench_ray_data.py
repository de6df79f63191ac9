"""Ray Data in the pipeline: slices produced vs consumed, memory per worker as the data grow, and
one epoch against the single-process datalist path.

    python benchmarks/bench_ray_data.py --datalist ../shared/data/volumes/dataset.json --window ct=0,255

Runs, one after the other (the machine should be otherwise idle):

1. **produced**: the training studies' Ray Dataset (:func:`monai_emma.pipeline.data.study_dataset`)
   iterated by the driver alone, no training: slices/s with preprocessing (cold) and from a warm
   on-disk cache;
2. **pipeline x1**: ``pipelines/train.py --datalist`` semantics with 2 workers, one epoch per stage,
   default cpu recipe, a cold cache; every rank logs after each epoch the slices it received, the
   epoch's seconds and its peak resident memory (``ru_maxrss``);
3. **pipeline xK** (``--copies``, default 4): the same with every training study listed K times
   (distinct names, so K times the slices stream by; the same number of patches is drawn,
   ``samples_per_epoch``, so only the data grow);
4. **single process**: ``monai-emma train --datalist`` one epoch per stage, same recipe, cold cache.

Prints a table and writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import ROOT, _env, _timed  # noqa: E402


def _copies(datalist: Path, k: int, out: Path, seed: int = 0) -> Path:
    """The datalist's split by study (the pipeline's rule) with the training studies listed ``k``
    times under distinct names and the validation studies once, as an explicit datalist."""
    from monai_emma.engines import recipe
    from monai_emma.studies import Datalist

    cfg = recipe("cpu")
    train, val, _ = Datalist(datalist).study_split(cfg.val_fraction, seed)

    def entry(s, name):
        return {s.a_modality: str(s.anatomical), s.b_modality: str(s.other), "name": name}

    data = {
        "training": [entry(s, f"{s.name}-c{j}") for j in range(k) for s in train],
        "validation": [entry(s, s.name) for s in val],
    }
    intensity = json.loads(datalist.read_text()).get("intensity")
    if intensity:
        data["intensity"] = intensity
    out.write_text(json.dumps(data, indent=1))
    return out


def produced(datalist: Path, window: list[str], cache: Path) -> dict:
    """Slices/s of the training studies' Ray Dataset, iterated with nothing else running."""
    import ray

    sys.path.insert(0, str(ROOT))
    from monai_emma.cli.options import datalist_of
    from monai_emma.engines import recipe
    from monai_emma.pipeline.data import study_dataset

    args = argparse.Namespace(
        datalist=str(datalist), cache_dir=None, window=window, percentiles=[], register=None, suv=None
    )
    dl = datalist_of(args)
    cfg = recipe("cpu")
    train, _, _ = dl.study_split(cfg.val_fraction, cfg.seed)
    options = dl.resolved_options().to_dict()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {}
    try:
        for label, cache_dir in (("cold", None), ("fill cache", cache), ("cached", cache)):
            t = time.perf_counter()
            n = sum(len(b["z"]) for b in study_dataset(train, options, cache_dir).iter_batches(batch_size=64))
            s = time.perf_counter() - t
            out[label] = {"slices": n, "seconds": round(s, 2), "slices_per_s": round(n / s, 1)}
    finally:
        ray.shutdown()
    return out


def _rank_log(path: str):
    """Worker handler: per epoch, what each rank received, its epoch time and peak memory."""

    class RankLog:
        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.EPOCH_STARTED, self.start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.end)

        def start(self, engine):
            self.t0 = time.perf_counter()

        def end(self, engine):
            import ray.train

            ds = engine.data_loader.dataset
            line = {
                "rank": ray.train.get_context().get_world_rank(),
                "slices": getattr(ds, "slices_seen", None),
                "studies": len(getattr(ds, "studies_seen", ())),
                "iterations": engine.state.iteration,
                "epoch_s": round(time.perf_counter() - self.t0, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")

    return RankLog()


def child(datalist: str, window: list[str], run_root: str, log: str) -> None:
    """One pipeline run (both stages, 2 workers, one epoch, a cold cache) with the rank log."""
    sys.path.insert(0, str(ROOT))
    from monai_emma.cli.options import datalist_of
    from monai_emma.pipeline import PipelineOptions, run_pipeline

    args = argparse.Namespace(datalist=datalist, cache_dir=None, window=window, percentiles=[], register=None, suv=None)
    opts = PipelineOptions(
        datalist=datalist,
        study_options=datalist_of(args).options.to_dict(),
        num_workers=2,
        epochs=1,
        run_root=run_root,
        worker_handlers={"sensors": [_rank_log(log)], "fuser": [_rank_log(log)]},
    )
    run_pipeline(opts)


def pipeline(datalist: Path, window: list[str], work: Path, name: str, timeout: float) -> dict:
    log = work / f"{name}.jsonl"
    cmd = [sys.executable, __file__, "--child", str(datalist), "--run-root", str(work / name), "--rank-log", str(log)]
    cmd += [f"--window={w}" for w in window]
    wall = _timed(cmd, work / f"{name}.log", timeout)
    ranks = [json.loads(x) for x in log.read_text().splitlines()]
    stages = {"sensors": ranks[:2], "fuser": ranks[2:]}
    timings = json.loads((work / name / "emma" / "timings.json").read_text())
    return {"wall": round(wall, 1), "ranks": stages, "timings": timings}


def single(datalist: Path, window: list[str], work: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "monai_emma.cli", "train", "--datalist", str(datalist), "--recipe", "cpu"]
    cmd += ["--epochs", "1", "--output", str(work / "single"), "--cache-dir", str(work / "single-cache")]
    cmd += [f"--window={w}" for w in window]
    return {"wall": round(_timed(cmd, work / "single.log", timeout), 1)}


def report(r: dict) -> str:
    lines = ["produced (driver alone, Ray Data, no training):"]
    for label, p in r["produced"].items():
        lines.append(f"  {label:<11} {p['slices']} slices in {p['seconds']} s: {p['slices_per_s']} slices/s")
    lines += ["", "| run | wall s | stage | rank | slices | studies | epoch s | consumed slices/s | peak RSS MiB |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name in [k for k in r if k.startswith("pipeline")]:
        for stage, ranks in r[name]["ranks"].items():
            for x in ranks:
                rate = x["slices"] / x["epoch_s"] if x["epoch_s"] else float("nan")
                lines.append(
                    f"| {name} | {r[name]['wall']} | {stage} | {x['rank']} | {x['slices']} | {x['studies']} | "
                    f"{x['epoch_s']} | {rate:.1f} | {x['peak_rss_mb']} |"
                )
    s, p = r["single"]["wall"], r["pipeline x1"]["wall"]
    goal = f"goal <= 1.5x + 45 s = {1.5 * s + 45:.0f} s"
    lines.append(f"\nsingle process {s} s; pipeline x1 {p} s = {p / s:.2f}x ({goal})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datalist", type=Path)
    p.add_argument("--window", action="append", default=[])
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--run-root", help=argparse.SUPPRESS)
    p.add_argument("--rank-log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.window, args.run_root, args.rank_log)
        return 0
    import os

    os.environ.update(_env())
    work = args.work or Path(tempfile.mkdtemp(prefix="emma-bench-raydata-"))
    work.mkdir(parents=True, exist_ok=True)
    one = _copies(args.datalist.resolve(), 1, work / "x1.json")
    many = _copies(args.datalist.resolve(), args.copies, work / f"x{args.copies}.json")
    results = {"produced": produced(one, args.window, work / "produced-cache")}
    results["pipeline x1"] = pipeline(one, args.window, work, "x1", args.timeout)
    results[f"pipeline x{args.copies}"] = pipeline(many, args.window, work, f"x{args.copies}", args.timeout)
    results["single"] = single(one, args.window, work, args.timeout)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
