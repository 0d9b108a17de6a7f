"""Progress reporting and cooperative cancellation for long computations.

Every long-running core function takes an optional ``ctx: JobContext``. It calls
``ctx.progress(done, total, message)`` at each step; that call raises :class:`JobCancelled`
when the job was cancelled, so a cancelled computation stops within one progress step.
The napari worker, the CLI and plain Python callers all drive core through this one protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

ProgressCallback = Callable[[int, int, str], None]


class JobCancelled(Exception):
    """Raised inside a job when its :class:`JobContext` was cancelled."""


class JobContext:
    """Progress sink and cancellation flag handed to a long computation.

    Parameters
    ----------
    on_progress
        Called as ``on_progress(done, total, message)`` at every step (from the computing thread).
    cancel_event
        A :class:`threading.Event`; once set, the next :meth:`progress` or :meth:`check` raises
        :class:`JobCancelled`. A fresh event is created when omitted.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> None:
        self._on_progress = on_progress
        self._cancel_event = cancel_event if cancel_event is not None else threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested."""
        return self._cancel_event.is_set()

    def cancel(self) -> None:
        """Request cancellation; the computation stops at its next progress step."""
        self._cancel_event.set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested."""
        if self._cancel_event.is_set():
            raise JobCancelled("the job was cancelled")

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report that ``done`` of ``total`` steps are finished, then honour cancellation."""
        self.check()
        if self._on_progress is not None:
            self._on_progress(int(done), int(total), message)
        self.check()


def ensure_context(ctx: JobContext | None) -> JobContext:
    """Return ``ctx``, or a silent never-cancelled context when it is ``None``."""
    return ctx if ctx is not None else JobContext()
