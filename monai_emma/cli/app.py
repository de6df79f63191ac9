"""The ``monai-emma`` parser and entry point: one sub-command per :class:`~monai_emma.cli.base.Command`.

Heavy modules (torch, MONAI, MLflow, Ray) are imported inside the commands, so
``monai-emma --help`` answers at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from monai_emma.cli.base import CLIError, Command, positive_int
from monai_emma.cli.demo import DemoCommand
from monai_emma.cli.evaluate import EvaluateCommand
from monai_emma.cli.fuse import FuseCommand, ViewCommand
from monai_emma.cli.fuse_folder import FuseFolderCommand
from monai_emma.cli.phantom import PhantomCommand
from monai_emma.cli.register import RegisterCommand
from monai_emma.cli.train import TrainCommand

__all__ = ["COMMANDS", "build_parser", "main"]

#: the commands in the order ``--help`` lists them
COMMANDS: tuple[type[Command], ...] = (
    DemoCommand,
    TrainCommand,
    EvaluateCommand,
    FuseCommand,
    ViewCommand,
    PhantomCommand,
    RegisterCommand,
    FuseFolderCommand,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``monai-emma`` parser; each sub-parser's ``command`` default is its :class:`Command` class."""
    from monai_emma import __version__

    parser = argparse.ArgumentParser(
        prog="monai-emma", description="EMMA multi-modality image fusion (MRI with CT, PET, SPECT) for MONAI."
    )
    parser.add_argument("--version", action="version", version=f"monai-emma {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cls in COMMANDS:
        p = sub.add_parser(cls.name, help=cls.help, description=cls.description or cls.help)
        cls().add_arguments(p)
        p.add_argument(
            "--threads",
            type=positive_int,
            help="CPU threads for this command (default: the CPUs free for it, re-checked as it runs; "
            "OMP_NUM_THREADS when set)",
        )
        p.set_defaults(command_class=cls)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is so that its outputs are rolled back like on Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (so tests can call it in-process)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cls: type[Command] | None = getattr(args, "command_class", None)
    if cls is None:
        parser.print_help()
        return 1
    from monai_emma.extras import MissingExtraError

    previous = None
    try:  # SIGTERM (a scheduler's kill) cleans up like Ctrl-C; only where signals can be set
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        command = cls()
        if cls.computes:
            from monai_emma.threads import apply_thread_policy

            apply_thread_policy(args.threads)  # --threads, else OMP_NUM_THREADS, else the free CPUs
        command.check(args)
        return command.run(args)
    except (CLIError, MissingExtraError) as err:
        if args.debug:
            raise
        print(f"monai-emma: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"monai-emma: {'terminated' if isinstance(err, _Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(err, _Terminated) else 130
    except Exception as err:  # never a bare traceback for users; --debug shows it
        if args.debug:
            raise
        from monai_emma.errors import first_line

        print(
            f"monai-emma: error: {type(err).__name__}: {first_line(err, 200)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
