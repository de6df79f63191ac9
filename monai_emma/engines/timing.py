"""Where a training run's time goes: wall-clock seconds per phase.

:class:`PhaseTimer` adds up the seconds of named phases: blocks of code (``with
timer.phase("setup")``), the trainer's batch loading and optimisation steps (:meth:`attach`), and
the handlers that run when an event fires (:meth:`around`: the checkpoint saver, the validation
handler, ...). ``monai-emma train``, the bundle and the Ray pipeline all train through
:func:`~monai_emma.engines.trainer.build_stage_trainer`, which keeps one on ``trainer.timings``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["PhaseTimer"]


class PhaseTimer:
    """Seconds and counts per named phase (monotonic wall clock).

    Example:
        >>> timer = PhaseTimer()
        >>> with timer.phase("setup"):
        ...     pass
        >>> timer.count("setup"), timer.seconds("setup") >= 0
        (1, True)
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._open: dict[str, float] = {}

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + float(seconds)
        self._counts[name] = self._counts.get(name, 0) + int(count)

    def start(self, name: str) -> None:
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        started = self._open.pop(name, None)
        if started is not None:
            self.add(name, time.perf_counter() - started)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as one occurrence of ``name``."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def seconds(self, name: str) -> float:
        return self._seconds.get(name, 0.0)

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def as_dict(self) -> dict[str, float]:
        """``{phase: seconds}`` and ``{phase_count: n}`` of every phase seen."""
        out = {name: round(s, 4) for name, s in self._seconds.items()}
        out.update({f"{name}_count": float(n) for name, n in self._counts.items()})
        return out

    def attach(self, engine: Any) -> None:
        """Time an ignite engine's batch loading (``data``) and iterations (``steps``). Attach it
        before other handlers so that ``steps`` holds the optimisation step alone."""
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, lambda _: self.start("data"))
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: self.stop("data"))
        engine.add_event_handler(Events.ITERATION_STARTED, lambda _: self.start("steps"))
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self.stop("steps"))

    @contextlib.contextmanager
    def around(self, engine: Any, event: Any, name: str) -> Iterator[None]:
        """Handlers attached to ``engine`` inside the block for ``event`` are timed as ``name``
        (ignite runs an event's handlers in the order they were added)."""
        engine.add_event_handler(event, lambda _: self.start(name))
        yield
        engine.add_event_handler(event, lambda _: self.stop(name))
