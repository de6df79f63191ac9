"""The ``monai-emma`` command line.

Heavy modules (torch, MONAI, MLflow, Ray) are imported inside the sub-commands, so
``monai-emma --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "CLIError"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from monai_emma.data.phantom import phantom_slice_pair
    from monai_emma.io.png import save_montage
    from monai_emma.networks import UFuser

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    net = UFuser.pretrained() if hasattr(UFuser, "pretrained") else UFuser()
    net.eval()
    rows = []
    for modality in ("ct", "pet", "spect"):
        mri, other = phantom_slice_pair(args.size, modality, seed=args.seed)
        x = torch.from_numpy(np.stack([mri, other]))[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            fused = net(x)[0, 0].numpy()
        ms = 1e3 * (time.perf_counter() - t0)
        print(
            f"{modality:>5}: fused {args.size}x{args.size} in {ms:.0f} ms (range {fused.min():.2f}-{fused.max():.2f})"
        )
        rows.append([mri, other, fused])
    path = save_montage(rows, out / "demo_montage.png", titles=["MRI", "other", "EMMA"])
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from monai_emma import __version__

    parser = argparse.ArgumentParser(
        prog="monai-emma", description="EMMA multi-modality image fusion (MRI with CT, PET, SPECT) for MONAI."
    )
    parser.add_argument("--version", action="version", version=f"monai-emma {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="fuse generated phantom slices and write a PNG montage")
    demo.add_argument("--output", default="emma-output", help="output folder (default: emma-output)")
    demo.add_argument("--size", type=int, default=256, help="slice size in pixels")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (so tests can call it in-process)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 1
    try:
        return func(args)
    except CLIError as err:
        if args.debug:
            raise
        print(f"monai-emma: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
