"""What every command shares: the :class:`Command` class, the user-facing error, small parsers."""

from __future__ import annotations

import argparse
import sys

__all__ = ["CLIError", "Command", "parse_range", "positive_int", "status"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Command:
    """One ``monai-emma`` command.

    A subclass names itself and its help, declares its options in :meth:`add_arguments`, checks
    them in :meth:`check` — the one place where a command refuses options that cannot apply,
    before any input is read — and does its work in :meth:`run`. One instance serves one call,
    so :meth:`check` may keep what it parsed on ``self`` for :meth:`run`.

    Example:
        >>> class Hello(Command):
        ...     name, help = "hello", "say hello"
        ...     def run(self, args):
        ...         print("hello")
        ...         return 0
    """

    name: str = ""
    help: str = ""
    description: str | None = None
    #: whether the command computes with PyTorch (its threads then follow ``--threads`` or
    #: :mod:`monai_emma.threads`' policy)
    computes: bool = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's options."""

    def check(self, args: argparse.Namespace) -> None:
        """Refuse options that cannot apply (raise :class:`CLIError`) before anything is read."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; returns the exit code."""
        raise NotImplementedError


def parse_range(text: str | None, flag: str) -> tuple[float, float] | None:
    """``"LOW,HIGH"`` (or ``LOW:HIGH``) as two increasing numbers, or None."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.replace(":", ",").split(","))
    except ValueError as err:
        raise CLIError(f"{flag} {text!r}: expected two numbers LOW,HIGH") from err
    if not hi > lo:
        raise CLIError(f"{flag} {text!r}: LOW must be below HIGH")
    return lo, hi


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def status(message: str, quiet: bool = False) -> None:
    """One progress line on stderr (what a long command is doing now), unless ``quiet``."""
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(f"{message}…", file=sys.stderr)
