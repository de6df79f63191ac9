"""``monai-emma register``: log a U-Fuser to MLflow and register it, ready to serve."""

from __future__ import annotations

import argparse

from monai_emma.cli.base import Command
from monai_emma.cli.options import WEIGHTS_HELP, load_model

__all__ = ["RegisterCommand"]


class RegisterCommand(Command):
    name = "register"
    help = "log and register a U-Fuser in an MLflow model registry (as the pipeline does), to serve it"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group()
        src.add_argument("--weights", help=WEIGHTS_HELP)
        src.add_argument("--bundle", help="EMMA MONAI bundle folder (uses models/model.pt)")
        p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///emma-runs/mlflow.db")
        p.add_argument("--name", default="emma-ufuser", help="registered model name (default: emma-ufuser)")
        p.add_argument("--alias", default="candidate", help="alias set on the new version (default: candidate)")
        p.add_argument("--experiment", default="emma", help="MLflow experiment of the logging run (default: emma)")

    def check(self, args: argparse.Namespace) -> None:
        from monai_emma.extras import require

        require("mlflow", "monai-emma register")

    def run(self, args: argparse.Namespace) -> int:
        from monai_emma.registry import register_fuser

        net, where = load_model(args)
        uri, _ = register_fuser(
            net, args.tracking_uri, model_name=args.name, alias=args.alias, experiment=args.experiment, source=where
        )
        print(f"registered {where} as {uri} (alias {args.alias}) in {args.tracking_uri}")
        print(f"serve it: mlflow models serve -m {uri} --env-manager local -h 127.0.0.1 -p 5000")
        return 0
