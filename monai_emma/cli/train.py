"""``monai-emma train``: both EMMA stages in-process (pseudo-sensors, then the U-Fuser)."""

from __future__ import annotations

import argparse

from monai_emma.cli.base import CLIError, Command
from monai_emma.cli.options import add_precision_option

__all__ = ["TrainCommand", "time_breakdown"]


class TrainCommand(Command):
    name = "train"
    help = "train both EMMA stages (pseudo-sensors, then the U-Fuser) in-process"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data",
            required=True,
            action="append",
            help="Harvard-style (<PAIR>/<MOD>/n.png) or IVF-style root; repeat to train on several roots",
        )
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

    def run(self, args: argparse.Namespace) -> int:
        import logging

        from monai_emma.data.pairs import PairDataError
        from monai_emma.engines import run_training

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        for noisy in (
            "ignite.engine.engine.EMMATrainer",
            "ignite.engine.engine.Evaluator",
            "monai.data.nvimgcodec_pydicom_plugin",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            results = run_training(args.data, args.output, self.config, device=args.device, resume=not args.restart)
        except PairDataError as err:
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
