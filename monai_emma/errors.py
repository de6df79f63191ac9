"""Turning exceptions into the one-line messages users see."""

from __future__ import annotations

__all__ = ["first_line", "FusionError", "transform_cause"]


class FusionError(ValueError):
    """The inputs cannot be fused as asked; one line naming them and the problem."""


_BOILERPLATE = ("Traceback", "File ", "The above exception", "During handling", "^", "~", "===")


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first meaningful line of an exception's message, at most ``limit`` characters.

    MONAI's reader errors embed whole tracebacks in their text; those lines are skipped. An empty
    message gives the exception's type name.

    Example:
        >>> first_line(ValueError("bad header\\nTraceback (most recent call last):\\n  File x"))
        'bad header'
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    return (lines[0] if lines else type(err).__name__)[:limit]


def transform_cause(err: BaseException) -> BaseException:
    """The exception a MONAI ``Compose`` wrapped: MONAI re-raises every failure of a transform as
    ``RuntimeError("applying transform ...")`` from it, once per nesting level."""
    while isinstance(err, RuntimeError) and str(err).startswith("applying transform") and err.__cause__ is not None:
        err = err.__cause__
    return err
