"""One long-lived compute thread per napari viewer, shared by every dock.

Docks never compute on the Qt main thread. They hand a core function to the viewer's
:class:`ComputeWorker`::

    handle = get_worker(viewer, dock).submit(
        predict_volume, model, volume, description="Segment tumour", on_result=show_labels
    )

``fn(*args, ctx=JobContext, **kwargs)`` runs in the compute thread, one job at a time in submission
order. Everything the user sees happens on the Qt main thread: a napari progress bar per running job
(with a Cancel button), ``on_result(result)`` / ``on_error(exception)``, and a napari notification for
errors and cancellations. Progress signals are coalesced (at most one pending update per job and
``PROGRESS_MIN_INTERVAL_S`` between updates, see :mod:`napari_medadapt._job_handle`) so a job that reports
thousands of steps cannot flood the event loop, and a job gets its progress bar only once it has run
:data:`PROGRESS_BAR_DELAY_S`, so short interactive requests never flash one (see
docs/benchmarks/ui_responsiveness.md).

Interactive requests (a SAM click, a slider) pass ``interactive_key``: a newer job with the same key
replaces a queued one (which never runs; its handle ends as ``superseded``) and cancels a running one
at its next progress step ("latest wins").

Before each job, once torch is loaded, the compute thread bounds torch's CPU threads to
``max(1, cores - 1)`` (:func:`napari_medadapt.core.device.limit_torch_threads`) so that the UI thread
keeps a core. This module never imports torch itself.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QCoreApplication, QObject, Qt, QTimer, Signal, Slot
from qtpy.QtWidgets import QMainWindow, QWidget

from napari_medadapt._job_handle import (
    JobHandle,
    JobProgressBar,
    JobState,
)
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.jobs import JobCancelled
from napari_medadapt.core.session import ModelSession

logger = logging.getLogger(__name__)

#: A job gets a progress bar once it has run this long (short interactive jobs never flash one).
PROGRESS_BAR_DELAY_S = 0.3
#: The same error of consecutive jobs within this many seconds is notified once.
ERROR_REPEAT_S = 10.0


class ComputeWorker(QObject):
    """A single compute thread that runs submitted jobs one after another.

    Create it on the Qt main thread (use :func:`get_worker` for a viewer's worker). All callbacks,
    progress bars and notifications are handled on that thread.

    Parameters
    ----------
    name
        Name of the compute thread (shown in debuggers and logs).
    torch_threads
        CPU threads torch may use in the compute thread; default ``max(1, cores - 1)``.
    """

    #: emitted (main thread) when a dock published a derived model: the docks' model lists refresh
    models_changed = Signal()
    _started_signal = Signal(object)
    _progress_signal = Signal(object)
    _finished_signal = Signal(object, object, object)

    def __init__(self, name: str = "medadapt-compute", torch_threads: int | None = None) -> None:
        super().__init__()
        self._torch_threads = torch_threads
        self._torch_threads_limited = False
        self._condition = threading.Condition()
        self._queue: deque[JobHandle] = deque()
        self._running: JobHandle | None = None
        self._stopping = False
        #: models and segmentations shared by the viewer's docks; used only by jobs (compute thread)
        self.session = ModelSession()
        #: cards of the session's variants the docks may offer (main thread; see :meth:`publish_variant`)
        self.variant_cards: dict[str, Any] = {}
        self._last_error: tuple[str, float] = ("", 0.0)  # text and time of the last error notification
        queued = Qt.ConnectionType.QueuedConnection
        self._started_signal.connect(self._deliver_started, queued)
        self._progress_signal.connect(self._deliver_progress, queued)
        self._finished_signal.connect(self._deliver_finished, queued)
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- public API
    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        description: str | None = None,
        on_result: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        interactive_key: Hashable | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Queue ``fn(*args, ctx=JobContext, **kwargs)`` for the compute thread.

        Parameters
        ----------
        fn
            The computation; it must accept a keyword ``ctx`` and should call ``ctx.progress``.
        description
            Short text for the progress bar and notifications (default: the function's name).
        on_result
            Called on the Qt main thread with the return value when the job succeeds.
        on_error
            Called on the Qt main thread with the exception when the job fails (a notification
            is shown as well).
        interactive_key
            Jobs sharing this key follow "latest wins": this job replaces a queued one with the same
            key and cancels a running one.

        Returns
        -------
        JobHandle
            Handle to cancel the job, inspect its state or wait for it.
        """
        if description is None:
            description = getattr(fn, "__name__", "computation").replace("_", " ")
        handle = JobHandle(self, fn, args, kwargs, description, on_result, on_error, interactive_key)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the compute worker was shut down (its viewer was closed)")
            if interactive_key is not None:
                for queued in [job for job in self._queue if job.interactive_key == interactive_key]:
                    self._queue.remove(queued)
                    self._finished_signal.emit(queued, JobState.SUPERSEDED, None)
                running = self._running
                if running is not None and running.interactive_key == interactive_key:
                    self._request_cancel(running, JobState.SUPERSEDED)
            self._queue.append(handle)
            self._condition.notify_all()
        return handle

    def cancel_all(self) -> None:
        """Cancel every queued job and the running one."""
        with self._condition:
            for queued in list(self._queue):
                self._queue.remove(queued)
                self._finished_signal.emit(queued, JobState.CANCELLED, None)
            if self._running is not None:
                self._request_cancel(self._running, JobState.CANCELLED)

    @property
    def is_busy(self) -> bool:
        """Whether a job is running or queued."""
        with self._condition:
            return self._running is not None or bool(self._queue)

    def is_alive(self) -> bool:
        """Whether the compute thread is running (False after :meth:`shutdown`)."""
        return self._thread.is_alive()

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Cancel all jobs, close their progress bars and stop the compute thread.

        Call on the Qt main thread. Jobs end as cancelled without notifications or callbacks.
        Returns whether the thread ended within ``timeout`` seconds (a job that never reports
        progress cannot be interrupted; the thread is a daemon and ends with it).
        """
        with self._condition:
            self._stopping = True
            abandoned = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._request_cancel(self._running, JobState.CANCELLED)
                abandoned.append(self._running)
            self._condition.notify_all()
        for job in abandoned:
            try:
                self._finalize(job, JobState.CANCELLED, notify=False)
            except RuntimeError:  # at interpreter exit Qt may have deleted the job's objects already
                logger.debug("job %r ended with its Qt objects already deleted", job.description)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self.session.clear()  # models and segmentations go with the viewer
        return stopped

    # ------------------------------------------------------------------------------ compute thread
    def _run_loop(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job._state = JobState.RUNNING
                self._running = job
                call = job._call  # taken under the lock: shutdown() may finalise the job meanwhile
                assert call is not None, "queued jobs are never finalised"
            self._started_signal.emit(job)
            self._bound_torch_threads()
            outcome, payload = self._execute(job, call)
            self._bound_torch_threads()
            with self._condition:
                self._running = None
                if job._cancel_reason is not None:
                    outcome, payload = job._cancel_reason, None
            self._finished_signal.emit(job, outcome, payload)

    def _execute(
        self, job: JobHandle, call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
    ) -> tuple[JobState, Any]:
        fn, args, kwargs = call
        try:
            return JobState.DONE, fn(*args, ctx=job._ctx, **kwargs)
        except JobCancelled:
            return job._cancel_reason or JobState.CANCELLED, None
        except Exception as err:  # every failure is reported; the thread must survive it
            if not isinstance(err, MedAdaptError):
                logger.exception("%s failed", job.description)
            return JobState.FAILED, err

    def _bound_torch_threads(self) -> None:
        """Limit torch threads in this thread once torch is loaded (set per calling thread)."""
        if self._torch_threads_limited or "torch" not in sys.modules:
            return
        from napari_medadapt.core.device import limit_torch_threads

        count = limit_torch_threads(self._torch_threads)
        self._torch_threads_limited = True
        logger.debug("compute thread uses %d torch thread(s)", count)

    def _request_cancel(self, job: JobHandle, reason: JobState) -> None:
        """Flag a running job (caller holds the lock); it stops at its next progress step."""
        if job._cancel_reason is None:
            job._cancel_reason = reason
        job._ctx.cancel()

    def publish_variant(self, card: Any) -> None:
        """Offer a session variant (its card, named as in the session) in every dock's model list."""
        self.variant_cards[card.name] = card
        self.models_changed.emit()

    def progress_ready(self, job: JobHandle) -> None:
        """Deliver ``job``'s latest progress on the main thread (called from the compute thread)."""
        self._progress_signal.emit(job)

    def cancel_job(self, job: JobHandle, reason: JobState) -> None:
        """Cancel ``job``: a queued job never runs; a running one stops at its next progress step."""
        with self._condition:
            if job in self._queue:
                self._queue.remove(job)
                self._finished_signal.emit(job, reason, None)
            elif job is self._running:
                self._request_cancel(job, reason)

    # ------------------------------------------------------------------------------- main thread
    @Slot(object)
    def _deliver_started(self, job: JobHandle) -> None:
        if not job.done:
            QTimer.singleShot(int(PROGRESS_BAR_DELAY_S * 1000), lambda: self._show_progress_bar(job))

    def _show_progress_bar(self, job: JobHandle) -> None:
        """Give a job that is still running its progress bar (indeterminate until a total is known)."""
        if job.done or job._progress_bar is not None:
            return
        job._progress_bar = JobProgressBar(
            total=job._latest_progress[1], desc=job.description, cancel_callback=job.cancel
        )
        self._update_progress_bar(job)

    @Slot(object)
    def _deliver_progress(self, job: JobHandle) -> None:
        job._progress_pending = False
        if not job.done:
            job.progressed.emit(*job._latest_progress)
        self._update_progress_bar(job)

    @staticmethod
    def _update_progress_bar(job: JobHandle) -> None:
        bar = job._progress_bar
        if bar is None or job.done:
            return
        done, total, message = job._latest_progress
        if total != bar.total:
            bar.total = total
        if done != bar.n:
            bar.update(done - bar.n)
        description = f"{job.description}: {message}" if message else job.description
        if description != job._shown_description:
            job._shown_description = description
            bar.set_description(description)

    @Slot(object, object, object)
    def _deliver_finished(self, job: JobHandle, outcome: JobState, payload: Any) -> None:
        self._finalize(job, outcome, payload)

    def _finalize(self, job: JobHandle, outcome: JobState, payload: Any = None, notify: bool = True) -> None:
        """Close the progress bar, record the outcome, run callbacks and notify (main thread)."""
        if job.done:
            return
        if job._progress_bar is not None:
            job._progress_bar.close()
            job._progress_bar = None
        on_result, on_error = job._on_result, job._on_error
        job._call = job._on_result = job._on_error = None
        job._state = outcome
        if outcome is JobState.DONE:
            job.result = payload
            if on_result is not None:
                self._run_callback(job, on_result, payload)
        elif outcome is JobState.FAILED:
            job.error = payload
            if notify:
                self._notify_error(payload, _error_message(job.description, payload))
            if on_error is not None:
                self._run_callback(job, on_error, payload)
        elif outcome is JobState.CANCELLED and notify:
            show_info(f"{job.description}: cancelled")
        job._finished_event.set()
        job.finished.emit()

    def _notify_error(self, error: BaseException, message: str) -> None:
        """Show an error notification, but not again when the same error repeats within a few seconds
        (e.g. a missing checkpoint met by the model preparation and then by the first click)."""
        now = time.monotonic()
        key = f"{type(error).__name__}: {error}"
        text, shown = self._last_error
        if str(error) and key == text and now - shown < ERROR_REPEAT_S:
            return
        self._last_error = (key, now)
        show_error(message)

    @staticmethod
    def _run_callback(job: JobHandle, callback: Callable[[Any], Any], value: Any) -> None:
        try:
            callback(value)
        except Exception as err:  # a broken callback must not break the worker or the event loop
            logger.exception("callback of %s failed", job.description)
            show_error(f"{job.description}: showing the result failed: {type(err).__name__}: {err}")


def _error_message(description: str, error: BaseException) -> str:
    """The notification text for a failed job."""
    if isinstance(error, MedAdaptError):
        return f"{description}: {error}"
    return f"{description} failed: {type(error).__name__}: {error} (details in the log)"


# viewer id -> (weak reference to the viewer, its worker)
_WORKERS: dict[int, tuple[weakref.ReferenceType[Any], ComputeWorker]] = {}
_EXIT_HOOKED = False
#: viewers (by id) whose main window's ``destroyed`` signal already shuts their worker down
_WATCHED_WINDOWS: set[int] = set()


def _main_window(widget: QWidget | None) -> QMainWindow | None:
    """The main window holding ``widget`` (a dock, floating or not), or ``None`` when it is not docked."""
    while widget is not None and not isinstance(widget, QMainWindow):
        widget = widget.parentWidget()
    return widget


def get_worker(viewer: Any, dock: QWidget | None = None) -> ComputeWorker:
    """Return the viewer's compute worker, creating it on first use (call on the Qt main thread).

    The worker shuts down when the main window holding ``dock`` (the calling dock widget) is destroyed,
    and at application exit.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)  # docks get napari's PublicOnlyProxy: one worker per viewer
    key = id(viewer)
    entry = _WORKERS.get(key)
    if entry is not None and entry[0]() is viewer and entry[1].is_alive():
        worker = entry[1]
    else:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("get_worker() must be called on the Qt main thread")
        worker = ComputeWorker(name=f"medadapt-compute-{key:x}")
        _WORKERS[key] = (weakref.ref(viewer), worker)
        global _EXIT_HOOKED
        app = QCoreApplication.instance()
        if app is not None and not _EXIT_HOOKED:
            app.aboutToQuit.connect(_shutdown_all_workers)
            _EXIT_HOOKED = True
    window = _main_window(dock)
    if window is not None and key not in _WATCHED_WINDOWS:
        _WATCHED_WINDOWS.add(key)
        window.destroyed.connect(lambda *_: _window_closed(key))
    return worker


def _window_closed(key: int) -> None:
    _WATCHED_WINDOWS.discard(key)
    entry = _WORKERS.get(key)
    if entry is not None:
        _shutdown_worker(key, entry[1])


def _shutdown_worker(key: int, worker: ComputeWorker) -> None:
    entry = _WORKERS.get(key)
    if entry is not None and entry[1] is worker:
        del _WORKERS[key]
    worker.shutdown()


def _shutdown_all_workers() -> None:
    for key, (_, worker) in list(_WORKERS.items()):
        _shutdown_worker(key, worker)
