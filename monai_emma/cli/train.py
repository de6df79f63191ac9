"""``monai-emma train``: both EMMA stages in-process (pseudo-sensors, then the U-Fuser)."""

from __future__ import annotations

import argparse

from monai_emma.cli.base import CLIError, Command
from monai_emma.cli.options import add_datalist_options, add_precision_option, datalist_of

__all__ = ["TrainCommand", "time_breakdown"]


class TrainCommand(Command):
    name = "train"
    help = "train both EMMA stages (pseudo-sensors, then the U-Fuser) in-process"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        data = p.add_mutually_exclusive_group(required=True)
        data.add_argument(
            "--data",
            action="append",
            help="Harvard-style (<PAIR>/<MOD>/n.png) or IVF-style root; repeat to train on several roots",
        )
        data.add_argument(
            "--datalist",
            metavar="JSON",
            help="MONAI datalist of volume studies ({'training': [{'mri': ..., 'ct': ...}, ...], 'validation': [...]}; "
            "without a validation list the studies are split by study); see docs/training.md",
        )
        add_datalist_options(p)
        p.add_argument("--output", default="emma-runs/train", help="run folder (checkpoints, weights, history)")
        p.add_argument("--recipe", choices=["cpu", "paper"], help="default: paper on CUDA, cpu otherwise")
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--epochs", type=int, help="epochs of both stages")
        p.add_argument("--sensor-epochs", type=int)
        p.add_argument("--fuser-epochs", type=int)
        p.add_argument("--batch-size", type=int, help="batch size of both stages")
        p.add_argument("--sensor-lr", type=float, help="stage-1 learning rate")
        p.add_argument("--fuser-lr", type=float, help="stage-2 learning rate")
        p.add_argument("--seed", type=int)
        p.add_argument("--alpha", type=float, help="weight of the equivariance term (paper: 0.1)")
        p.add_argument(
            "--prior-weight", type=float, help="weight of the max-fidelity prior in stage 2 (not in the paper; 0: off)"
        )
        p.add_argument(
            "--sensors",
            choices=["lite", "paper", "identity"],
            help="pseudo-sensor preset; identity skips stage 1 (the no-pseudo-sensing ablation)",
        )
        p.add_argument("--rules", help="stage-1 fusion rules to mix, e.g. mean,max,laplacian")
        p.add_argument("--fused-dir", help="folder of fused images (any method) for stage 1 instead of rules")
        p.add_argument(
            "--override",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any training setting, e.g. fuser_patch_size=96, fuser_schedule=cosine, prior_gradient_weight=4",
        )
        p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
        add_precision_option(p)
        p.add_argument("--restart", action="store_true", help="ignore existing checkpoints in --output")
        p.add_argument(
            "--init",
            metavar="NAME|PATH|URI",
            help="fine-tune: stage 2 starts from these U-Fuser weights (a shipped set such as v3, a weights file or "
            "checkpoint, a run or bundle folder, models:/NAME@ALIAS) against their own pseudo-sensors; no stage 1",
        )
        p.add_argument(
            "--init-sensors",
            metavar="PATH|NAME",
            help="with --init: the pseudo-sensors to fine-tune against (sensors.pt, a run folder, a shipped set)",
        )
        p.add_argument("--tracking-uri", help="the MLflow registry of an --init models:/ URI")

    def check(self, args: argparse.Namespace) -> None:
        import torch

        from monai_emma.engines import recipe
        from monai_emma.engines.config import parse_overrides

        name = args.recipe or ("paper" if args.device.startswith("cuda") else "cpu")
        settings = dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            sensor_epochs=args.sensor_epochs,
            fuser_epochs=args.fuser_epochs,
            sensor_lr=args.sensor_lr,
            fuser_lr=args.fuser_lr,
            seed=args.seed,
            alpha=args.alpha,
            prior_weight=args.prior_weight,
            sensor_preset=args.sensors,
            fused_dir=args.fused_dir,
            stage1_rules=tuple(args.rules.split(",")) if args.rules else None,
            amp=args.amp or None,
            precision=args.precision if args.precision != "fp32" else None,
        )
        try:
            for key, value in parse_overrides(args.override).items():
                if settings.get(key) is not None:
                    raise ValueError(f"--override {key}: set twice (also by its own flag)")
                settings[key] = value
            self.config = recipe(name, **settings)
        except (ValueError, TypeError) as err:
            raise CLIError(f"training settings: {err}") from err
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
        self.data = datalist_of(args) or args.data
        if args.datalist and args.fused_dir:
            raise CLIError("--fused-dir takes 2D pair folders; with --datalist stage 1 uses the rules (--rules)")
        self.init = self._check_init(args, settings)

    def _check_init(self, args: argparse.Namespace, settings: dict):
        """The resolved ``--init`` (None without one); refuses what cannot go with it."""
        from monai_emma.engines.finetune import InitError, check_stage1, resolve_init
        from monai_emma.networks.sensor_bank import IDENTITY_SENSORS

        try:
            if not args.init:
                if args.init_sensors:
                    raise InitError("--init-sensors goes with --init (the sensors its weights are fine-tuned against)")
                check_stage1(self.config, None)
                return None
            if settings.get("sensor_epochs"):
                raise InitError(
                    f"--init fine-tunes against the sensors that come with the weights (or --init-sensors); "
                    f"--sensor-epochs {settings['sensor_epochs']} would train new ones: leave it out or give 0"
                )
            identity = self.config.sensor_preset == IDENTITY_SENSORS
            return resolve_init(args.init, args.init_sensors, args.tracking_uri, need_sensors=not identity)
        except InitError as err:
            raise CLIError(str(err)) from err

    def run(self, args: argparse.Namespace) -> int:
        import logging

        from monai_emma.data.pairs import PairDataError
        from monai_emma.engines import run_training
        from monai_emma.engines.finetune import InitError

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        for noisy in (
            "ignite.engine.engine.EMMATrainer",
            "ignite.engine.engine.Evaluator",
            "monai.data.nvimgcodec_pydicom_plugin",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            results = run_training(
                self.data, args.output, self.config, device=args.device, resume=not args.restart, init=self.init
            )
        except (PairDataError, InitError) as err:
            raise CLIError(str(err)) from err
        for stage, res in results.items():
            last = res.history[-1] if res.history else {}
            summary = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith(("train_total", "val_")))
            print(f"{stage}: {res.weights} ({res.seconds / 60:.1f} min) {summary}")
            if res.timings.get("steps_count"):
                print(f"  {time_breakdown(res.timings)}")
        return 0


def time_breakdown(timings: dict[str, float]) -> str:
    """``steps 80.1 s (87 x 0.921 s), data 0.4 s, validation 9.8 s, checkpoint 0.3 s``"""
    n = int(timings["steps_count"])
    parts = [f"steps {timings['steps']:.1f} s ({n} x {timings['steps'] / n:.3f} s)"]
    parts += [f"{k} {timings[k]:.1f} s" for k in ("data", "validation", "checkpoint") if k in timings]
    return ", ".join(parts)
