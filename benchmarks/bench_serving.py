"""Serving under load: the registered U-Fuser behind ``mlflow models serve`` with 1, 2 and 4
worker processes, 8 concurrent clients x 25 requests of one 256² slice each, a malformed request
mixed in after every fifth.

    python benchmarks/bench_serving.py --workers 1 2 4 --clients 8 --requests 25 --size 256 --json serving.json

Registers the shipped U-Fuser in a temporary SQLite registry (``monai-emma register``), starts
the server on 127.0.0.1 for each worker count (threads per worker: the usable CPUs shared between
the workers, or --threads-per-worker), and runs
:func:`monai_emma.serving.load_test`: every answer is compared with in-process fusion (1e-4),
every malformed request must get HTTP 400. Prints p50/p95 latency and throughput per worker count.
Run it alone on the machine: client and server share the cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads-per-worker", type=int, help="default: the usable CPUs shared between the workers")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from monai_emma.cli import main as cli
    from monai_emma.data.phantom import phantom_slice_pair
    from monai_emma.networks import ufuser
    from monai_emma.serving import load_test, mlflow_server
    from monai_emma.weights import UFuserWeights

    mri, pet = phantom_slice_pair(args.size, "pet")
    batch = np.stack([mri, pet])[None]
    with torch.inference_mode():
        expected = ufuser(weights=UFuserWeights.DEFAULT)(torch.from_numpy(batch)).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        assert cli(["register", "--tracking-uri", uri]) == 0
        for workers in args.workers:
            log = Path(tmp) / f"serve-{workers}.log"
            with mlflow_server(
                "models:/emma-ufuser/1", uri, workers, log=log, threads_per_worker=args.threads_per_worker
            ) as url:
                load_test(url, batch, expected, clients=1, requests=2, malformed_every=0)  # warm every path once
                result = load_test(url, batch, expected, clients=args.clients, requests=args.requests)
            row = {"workers": workers, "size": args.size, **result.summary()}
            rows.append(row)
            print(json.dumps(row))
    print()
    print("| server workers | answered | errors | wrong | malformed → 400 | p50 s | p95 s | requests/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['answered']} | {r['errors']} | {r['wrong']} | "
            f"{r['malformed_refused_400']}/{r['malformed_sent']} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
            f"{r['throughput_per_s']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["errors"] == 0 and r["wrong"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
