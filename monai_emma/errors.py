"""Turning exceptions into the one-line messages users see."""

from __future__ import annotations

__all__ = ["first_line"]

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
