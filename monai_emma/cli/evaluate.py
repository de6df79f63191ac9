"""``monai-emma evaluate``: fuse a paired dataset with EMMA, the classical rules and learned peers;
score and report."""

from __future__ import annotations

import argparse

from monai_emma.cli.base import CLIError, Command
from monai_emma.cli.options import ZERO_EMPTY_HELP, add_datalist_options, add_precision_option, datalist_of

__all__ = ["EvaluateCommand"]


class EvaluateCommand(Command):
    name = "evaluate"
    help = "fuse a paired dataset with EMMA and classical rules; score and report"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("root", nargs="*", help="Harvard-style or IVF-style folder(s) of pairs (or give --datalist)")
        p.add_argument(
            "--datalist",
            metavar="JSON",
            help="MONAI datalist of volume studies instead of folders: scores the axial slices of the studies of --key",
        )
        p.add_argument("--key", help="with --datalist: the list to score (default: validation)")
        add_datalist_options(p)
        p.add_argument(
            "--split",
            metavar="SPLIT_JSON",
            help="score only the validation pairs of a training run (its split.json; give the run's data roots, "
            "or its datalist with --key training when the run split the training studies)",
        )
        p.add_argument(
            "--methods",
            default="emma,mean,max,laplacian,wavelet",
            help="comma-separated methods: emma, mean, max, laplacian, wavelet, and the learned peers ifcnn, densefuse",
        )
        p.add_argument(
            "--ifcnn-weights",
            metavar="PTH",
            help="IFCNN-MAX snapshot for --methods ...,ifcnn (default: $EMMA_IFCNN_WEIGHTS; Code/snapshots/"
            "IFCNN-MAX.pth of github.com/uzeful/IFCNN, not shipped)",
        )
        p.add_argument(
            "--densefuse-weights",
            metavar="MODEL",
            help="DenseFuse snapshot for --methods ...,densefuse (default: $EMMA_DENSEFUSE_WEIGHTS; "
            "models/densefuse_gray.model of github.com/hli1221/densefuse-pytorch, not shipped)",
        )
        p.add_argument("--weights", help="U-Fuser state dict or shipped set for emma (default: the shipped default)")
        p.add_argument("--output", default="emma-eval", help="report folder (default: emma-eval)")
        p.add_argument("--grid-pairs", type=int, default=4, help="pairs in the comparison grid")
        p.add_argument("--device", default="cpu")
        p.add_argument("--mlflow-uri", help="also log the tables and grid to this MLflow tracking URI")
        p.add_argument("--no-zero-empty", action="store_true", help=ZERO_EMPTY_HELP)
        add_precision_option(p)

    def check(self, args: argparse.Namespace) -> None:
        self.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not self.methods:
            raise CLIError(f"--methods {args.methods!r}: no method named")
        if bool(args.root) == bool(args.datalist):
            raise CLIError("give the data folders or --datalist (one of them)")
        if args.key and not args.datalist:
            raise CLIError("--key goes with --datalist")
        self.data = datalist_of(args) or args.root

    def run(self, args: argparse.Namespace) -> int:
        from monai_emma.data.pairs import PairDataError
        from monai_emma.evaluation import evaluate, split_ids

        try:
            result = evaluate(
                self.data,
                self.methods,
                ids=split_ids(args.split) if args.split else None,
                zero_empty=not args.no_zero_empty,
                weights=args.weights,
                output=args.output,
                grid_pairs=args.grid_pairs,
                device=args.device,
                mlflow_uri=args.mlflow_uri,
                precision=args.precision,
                peer_weights={"ifcnn": args.ifcnn_weights, "densefuse": args.densefuse_weights},
                key=args.key or "validation",
            )
        except (PairDataError, ValueError, FileNotFoundError) as err:
            raise CLIError(str(err)) from err
        for kind, path in result.files.items():
            print(f"wrote {kind}: {path}")
        return 0
