"""Distributed two-stage EMMA training on Ray Train, tracked in MLflow (see docs/cluster.md).

Laptop (local Ray runtime, SQLite MLflow under ./emma-runs)::

    python pipelines/train.py --data ../shared/data/harvard
    python pipelines/train.py --datalist studies/dataset.json --window ct=0,255   # NIfTI/DICOM via Ray Data

Cluster::

    ray job submit --working-dir . -- python pipelines/train.py --data /shared/harvard \\
        --num-workers 8 --use-gpu --storage-path /shared/ray --tracking-uri http://mlflow:5000

Importable too: ``from pipelines.train import main; main(["--data", ...])``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipelines/train.py", description=__doc__.splitlines()[0])
    from monai_emma.cli.options import add_datalist_options

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        action="append",
        help="Harvard-style (<PAIR>/<MOD>/n.png) or IVF-style root; repeat to train on several roots",
    )
    source.add_argument(
        "--datalist",
        metavar="FILE",
        help="a MONAI datalist of NIfTI/DICOM studies (paths, or URIs such as s3://...), streamed to the workers "
        "by Ray Data (see docs/training.md)",
    )
    add_datalist_options(p)
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP ranks), default 2")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--resources-per-worker", type=json.loads, help='JSON, e.g. \'{"CPU": 4, "GPU": 1}\'')
    p.add_argument(
        "--threads-per-worker",
        type=int,
        help="CPU threads of each worker (default: its CPU allocation; the driver's OMP_NUM_THREADS is not inherited)",
    )
    p.add_argument("--storage-path", help="Ray storage: local path or shared URI (default: emma-runs/ray)")
    p.add_argument("--name", default="emma", help="run name; the same name resumes (default: emma)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts per stage (default 1)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<run-root>/mlflow.db)")
    p.add_argument("--recipe", choices=["cpu", "paper"], help="default: cpu, or paper with --use-gpu")
    p.add_argument("--epochs", type=int, help="epochs of both stages")
    p.add_argument("--sensor-epochs", type=int)
    p.add_argument("--fuser-epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per-worker batch size of both stages")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="bf16: training steps under bfloat16 autocast (CPUs with AMX/AVX-512-BF16, recent GPUs); default fp32",
    )
    p.add_argument("--run-root", default="emma-runs", help="embedded defaults live here (default: emma-runs)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local runtime)")
    p.add_argument("--model-name", default="emma-ufuser", help="registered model name (default: emma-ufuser)")
    p.add_argument("--alias", default="candidate", help="alias set on the new model version")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE training setting, e.g. fuser_lr=1e-4")
    p.add_argument(
        "--init",
        metavar="NAME|PATH|URI",
        help="fine-tune: stage 2 starts from these U-Fuser weights (a shipped set such as v3, a weights file, a run "
        "or bundle folder, models:/NAME@ALIAS in --tracking-uri's registry) against their sensors; no stage 1",
    )
    p.add_argument("--init-sensors", metavar="PATH|NAME", help="with --init: the pseudo-sensors to fine-tune against")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from monai_emma.cli.base import CLIError
    from monai_emma.cli.options import datalist_of
    from monai_emma.data.pairs import PairDataError
    from monai_emma.engines.config import parse_overrides
    from monai_emma.extras import MissingExtraError
    from monai_emma.pipeline import PipelineOptions, run_pipeline
    from monai_emma.pipeline.driver import format_timings

    try:
        overrides = parse_overrides(args.override)
        datalist = datalist_of(args)
    except (ValueError, CLIError) as err:
        print(f"pipelines/train.py: error: {err}", file=sys.stderr)
        return 2
    opts = PipelineOptions(
        data=args.data,
        datalist=args.datalist,
        cache_dir=args.cache_dir,
        study_options=datalist.options.to_dict() if datalist is not None else {},
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        resources_per_worker=args.resources_per_worker,
        threads_per_worker=args.threads_per_worker,
        storage_path=args.storage_path,
        name=args.name,
        max_failures=args.max_failures,
        tracking_uri=args.tracking_uri,
        recipe=args.recipe,
        epochs=args.epochs,
        sensor_epochs=args.sensor_epochs,
        fuser_epochs=args.fuser_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        precision=args.precision,
        run_root=args.run_root,
        address=args.address,
        model_name=args.model_name,
        alias=args.alias,
        overrides=overrides,
        init=args.init,
        init_sensors=args.init_sensors,
    )
    try:
        result = run_pipeline(opts)
    except (PairDataError, ValueError, MissingExtraError) as err:
        print(f"pipelines/train.py: error: {err}", file=sys.stderr)
        return 2
    if opts.init:
        print(f"fine-tuned from {opts.init}")
    print(f"registered {result.model_uri} (alias {opts.alias}) in {result.tracking_uri}")
    print(f"sensors: {', '.join(f'emma-sensor-{m} v{v}' for m, v in result.sensor_versions.items())}")
    for stage, path in result.stage_checkpoints.items():
        print(f"{stage} checkpoint: {path}")
    print(format_timings(result.timings))
    print(f"total {result.seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
