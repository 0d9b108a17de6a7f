"""The caller's side of a compute-worker job: its state, its handle (cancel, wait, signals), its progress bar.

See :mod:`napari_medadapt._worker` for the worker that runs jobs.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QCoreApplication, QEventLoop, QObject, Signal

from napari_medadapt.core.jobs import JobContext

__all__ = ["PROGRESS_MIN_INTERVAL_S", "JobHandle", "JobProgressBar", "JobState"]

class JobRunner(Protocol):
    """What a job handle needs from the worker that runs it (:class:`~napari_medadapt._worker.ComputeWorker`)."""

    def cancel_job(self, job: JobHandle, reason: JobState) -> None:
        """Cancel ``job`` (queued: never runs; running: stops at its next progress step)."""

    def progress_ready(self, job: JobHandle) -> None:
        """``job`` has new progress for the main thread (called from the compute thread)."""


#: Minimum time between two progress-bar updates of one job (seconds).
PROGRESS_MIN_INTERVAL_S = 0.2


class JobState(str, enum.Enum):
    """Life cycle of a submitted job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


_FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.SUPERSEDED})


class JobProgressBar(cancelable_progress):
    """A napari progress bar whose Cancel button cancels the job at once."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class JobHandle(QObject):
    """The caller's view of one submitted job.

    ``finished`` is emitted on the Qt main thread once the job reached a final state (done, failed,
    cancelled or superseded) and its callbacks ran; ``qtbot.waitSignal(handle.finished)`` waits for it.
    ``progressed(done, total, message)`` is emitted on the main thread with the job's (coalesced) progress.
    """

    finished = Signal()
    progressed = Signal(int, int, str)

    def __init__(
        self,
        worker: JobRunner,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        description: str,
        on_result: Callable[[Any], Any] | None,
        on_error: Callable[[BaseException], Any] | None,
        interactive_key: Hashable | None,
    ) -> None:
        super().__init__()
        self.description = description
        self.interactive_key = interactive_key
        self.result: Any = None
        self.error: BaseException | None = None
        self._worker = worker
        self._call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = (fn, args, kwargs)
        self._on_result = on_result
        self._on_error = on_error
        self._state = JobState.QUEUED
        self._cancel_reason: JobState | None = None
        self._finished_event = threading.Event()
        self._ctx = JobContext(on_progress=self._report_progress)
        self._progress_bar: JobProgressBar | None = None
        self._latest_progress: tuple[int, int, str] = (0, 0, "")
        self._progress_pending = False
        self._last_progress_emit = 0.0
        self._shown_description = description

    @property
    def state(self) -> JobState:
        """Current :class:`JobState`."""
        return self._state

    @property
    def done(self) -> bool:
        """Whether the job reached a final state and its callbacks ran."""
        return self._state in _FINAL_STATES

    @property
    def cancelled(self) -> bool:
        """Whether the job ended cancelled or superseded (its result, if any, was discarded)."""
        return self._state in (JobState.CANCELLED, JobState.SUPERSEDED)

    @property
    def superseded(self) -> bool:
        """Whether a newer job with the same ``interactive_key`` replaced this one."""
        return self._state is JobState.SUPERSEDED

    def cancel(self) -> None:
        """Cancel the job: a queued job never runs; a running one stops at its next progress step."""
        self._worker.cancel_job(self, JobState.CANCELLED)

    def drop(self) -> None:
        """Cancel the job quietly because newer work made it unneeded: it ends ``superseded``, no notification."""
        self._worker.cancel_job(self, JobState.SUPERSEDED)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is final and its callbacks ran; return False on timeout.

        Called on the Qt main thread it keeps processing Qt events (the callbacks run there);
        from any other thread it simply waits.
        """
        if threading.current_thread() is not threading.main_thread():
            return self._finished_event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            self._finished_event.wait(0.002)
        return True

    def _report_progress(self, done: int, total: int, message: str) -> None:
        """Progress sink of the job's context (compute thread): coalesce, then signal the UI."""
        self._latest_progress = (done, total, message)
        now = time.monotonic()
        if self._progress_pending or now - self._last_progress_emit < PROGRESS_MIN_INTERVAL_S:
            return
        self._progress_pending = True
        self._last_progress_emit = now
        self._worker.progress_ready(self)

    def __repr__(self) -> str:
        return f"JobHandle({self.description!r}, state={self._state.value})"
