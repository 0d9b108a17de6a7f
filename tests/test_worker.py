"""The compute worker: main-thread delivery, cancellation, latest-wins, errors, progress bars, shutdown."""

from __future__ import annotations

import threading

import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from napari.utils.progress import progress

from napari_medadapt._worker import ComputeWorker, JobState, get_worker
from napari_medadapt.core.errors import MedAdaptError

WAIT_MS = 10_000


@pytest.fixture
def worker(qtbot):
    compute_worker = ComputeWorker()
    yield compute_worker
    compute_worker.shutdown()


@pytest.fixture
def notifications():
    """Collect napari notifications (severity, message) shown during the test."""
    received: list[tuple[NotificationSeverity, str]] = []

    def collect(event) -> None:
        received.append((event.severity, str(event.message)))

    notification_manager.notification_ready.connect(collect)
    yield received
    notification_manager.notification_ready.disconnect(collect)


def _blocking_job(release: threading.Event, started: threading.Event | None = None, *, ctx):
    """Report progress until ``release`` is set (or the job is cancelled)."""
    if started is not None:
        started.set()
    step = 0
    while not release.wait(0.005):
        step += 1
        ctx.progress(step % 100, 100, "waiting")
    return "released"


def test_result_is_delivered_on_main_thread(worker, qtbot):
    seen: dict[str, object] = {}

    def job(a, b, *, ctx, scale):
        seen["job_thread"] = threading.current_thread()
        ctx.progress(1, 1, "done")
        return (a + b) * scale

    def on_result(value):
        seen["result"] = value
        seen["callback_thread"] = threading.current_thread()

    handle = worker.submit(job, 2, 3, scale=10, description="add", on_result=on_result)
    with qtbot.waitSignal(handle.finished, timeout=WAIT_MS):
        pass
    assert seen["result"] == 50
    assert handle.result == 50 and handle.state is JobState.DONE and handle.done
    assert seen["job_thread"] is not threading.main_thread()
    assert seen["callback_thread"] is threading.main_thread()


def test_cancel_stops_running_job_within_one_step(worker, qtbot, notifications):
    reached = threading.Event()
    cancel_sent = threading.Event()
    steps: list[int] = []

    def job(*, ctx):
        for step in range(1000):
            ctx.progress(step, 1000, "stepping")
            steps.append(step)
            if step == 5:
                reached.set()
                cancel_sent.wait(WAIT_MS / 1000)
        return "finished"

    results: list[object] = []
    handle = worker.submit(job, description="long job", on_result=results.append)
    assert reached.wait(WAIT_MS / 1000)
    handle.cancel()
    cancel_sent.set()
    assert handle.wait(WAIT_MS / 1000)
    assert steps[-1] == 5
    assert handle.state is JobState.CANCELLED and handle.cancelled and not handle.superseded
    assert results == []
    assert any(sev == NotificationSeverity.INFO and "long job: cancelled" in msg for sev, msg in notifications)


def test_cancel_queued_job_never_runs_and_cancel_all(worker, qtbot):
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []
    blocker = worker.submit(_blocking_job, release, started, description="blocker")
    queued = worker.submit(lambda *, ctx: ran.append("queued"), description="queued")
    assert started.wait(WAIT_MS / 1000)
    queued.cancel()
    assert queued.wait(WAIT_MS / 1000) and queued.state is JobState.CANCELLED
    other = worker.submit(lambda *, ctx: ran.append("other"), description="other")
    worker.cancel_all()
    assert blocker.wait(WAIT_MS / 1000) and other.wait(WAIT_MS / 1000)
    assert blocker.state is JobState.CANCELLED and other.state is JobState.CANCELLED
    assert ran == [] and not worker.is_busy


def test_only_latest_interactive_request_of_a_burst_runs(worker, qtbot):
    release = threading.Event()
    started = threading.Event()
    ran: list[int] = []
    results: list[int] = []
    worker.submit(_blocking_job, release, started, description="busy")
    assert started.wait(WAIT_MS / 1000)

    def click(index, *, ctx):
        ctx.progress(1, 1)
        ran.append(index)
        return index

    handles = [
        worker.submit(click, index, description="click", on_result=results.append, interactive_key="sam")
        for index in range(5)
    ]
    release.set()
    assert handles[-1].wait(WAIT_MS / 1000)
    assert ran == [4] and results == [4]
    assert all(h.superseded and h.cancelled and h.done for h in handles[:-1])
    assert handles[-1].state is JobState.DONE


def test_newer_interactive_request_cancels_running_one(worker, qtbot, notifications):
    release = threading.Event()
    started = threading.Event()
    results: list[object] = []
    first = worker.submit(
        _blocking_job, release, started, description="preview", on_result=results.append, interactive_key="k"
    )
    assert started.wait(WAIT_MS / 1000)
    second = worker.submit(lambda *, ctx: "new", description="preview", on_result=results.append, interactive_key="k")
    assert second.wait(WAIT_MS / 1000)
    assert first.done and first.superseded
    assert results == ["new"]
    assert not any("cancelled" in msg for _, msg in notifications)


def test_failing_job_notifies_and_worker_stays_usable(worker, qtbot, notifications):
    errors: list[BaseException] = []

    def broken(*, ctx):
        raise ValueError("bad shape (3, 4)")

    def user_problem(*, ctx):
        raise MedAdaptError("The volume has no FLAIR channel; load a FLAIR image first.")

    failed = worker.submit(broken, description="segment", on_error=errors.append)
    assert failed.wait(WAIT_MS / 1000)
    assert failed.state is JobState.FAILED and isinstance(failed.error, ValueError)
    assert errors and errors[0] is failed.error
    user_failed = worker.submit(user_problem, description="segment")
    assert user_failed.wait(WAIT_MS / 1000)
    ok = worker.submit(lambda *, ctx: 42, description="next")
    assert ok.wait(WAIT_MS / 1000) and ok.result == 42
    error_messages = [msg for sev, msg in notifications if sev == NotificationSeverity.ERROR]
    assert any("ValueError" in msg and "bad shape (3, 4)" in msg for msg in error_messages)
    assert "segment: The volume has no FLAIR channel; load a FLAIR image first." in error_messages


def test_failing_result_callback_is_reported(worker, qtbot, notifications):
    def bad_callback(value):
        raise RuntimeError("layer gone")

    handle = worker.submit(lambda *, ctx: 1, description="paste", on_result=bad_callback)
    assert handle.wait(WAIT_MS / 1000)
    assert any("layer gone" in msg for _, msg in notifications)
    assert worker.submit(lambda *, ctx: 2).wait(WAIT_MS / 1000)


def test_progress_bar_appears_updates_and_closes(worker, qtbot):
    release = threading.Event()
    started = threading.Event()
    handle = worker.submit(_blocking_job, release, started, description="bar job")

    def bars():
        return [bar for bar in progress._all_instances if bar.desc.startswith("bar job")]

    qtbot.waitUntil(lambda: len(bars()) == 1 and bars()[0].total == 100, timeout=WAIT_MS)
    release.set()
    assert handle.wait(WAIT_MS / 1000)
    assert bars() == []


def test_progress_bar_cancel_button_cancels_job(worker, qtbot):
    release = threading.Event()
    handle = worker.submit(_blocking_job, release, description="cancel me")
    qtbot.waitUntil(lambda: handle._progress_bar is not None, timeout=WAIT_MS)
    handle._progress_bar.cancel()
    assert handle.wait(WAIT_MS / 1000)
    assert handle.state is JobState.CANCELLED


def test_torch_threads_are_bounded_in_compute_thread(qtbot):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    bounded = ComputeWorker(torch_threads=1)
    try:
        handle = bounded.submit(lambda *, ctx: torch.get_num_threads(), description="threads")
        assert handle.wait(WAIT_MS / 1000)
        assert handle.result == 1
    finally:
        bounded.shutdown()
        torch.set_num_threads(before)


def test_worker_is_per_viewer_and_shuts_down_with_it(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QWidget

    viewer = make_napari_viewer()
    dock = QWidget()
    viewer.window.add_dock_widget(dock, name="a dock")
    worker = get_worker(viewer, dock)
    assert get_worker(viewer) is worker
    release = threading.Event()
    started = threading.Event()
    running = worker.submit(_blocking_job, release, started, description="viewer job")
    assert started.wait(WAIT_MS / 1000)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=WAIT_MS)
    assert running.done and running.cancelled
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(lambda *, ctx: None)
