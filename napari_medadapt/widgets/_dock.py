"""What every dock shares: a scrollable body, a progress panel for its long jobs, viewer-level set-up.

- :class:`DockBody`: the docks join each other as tabs and scroll, so all docks opened at once fit a laptop
  screen (instead of squashing their inputs or growing the window past the screen).
- :class:`JobDock`: the skeleton of a computing dock (one job at a time, progress, Cancel, status line).
- :class:`JobPanel`: the dock's own progress bar for its long jobs (1-6 min on a CPU), with the stage, the
  elapsed time, an estimate of the time left, and Cancel; napari's activity panel is collapsed by default.
- :func:`prepare_viewer`: once per viewer, NIfTI files open with this plugin by default (napari asks which
  reader to use otherwise), and coronal/sagittal views show the head upright and centred.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_medadapt.widgets._layers import keep_on_top

PLUGIN_NAME = "napari-medadapt"
NIFTI_PATTERNS = ("*.nii", "*.nii.gz")

#: A job's progress appears after this long, so instant interactive requests never flash the panel.
SHOW_AFTER_MS = 400

_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()


class DockBody(QScrollArea):
    """A dock whose content scrolls: lay widgets out on ``self.body``'s layout (``self.layout_``).

    When it is docked beside another napari-medadapt dock, it joins that dock as a tab (and comes to the
    front), so every dock gets the full height of the window instead of a squashed share of it. The first dock
    re-fits the view to the narrower canvas, so the scans stay whole on screen.

    Parameters
    ----------
    viewer
        The viewer the dock works on (napari hands plugin docks a proxy of it).
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.body = QWidget()
        self.layout_ = QVBoxLayout(self.body)
        self.setWidget(self.body)
        self.setMinimumHeight(120)
        self._tabbed = False
        self._last_error = ""
        #: the dock's status line (each dock places it in its layout)
        self.status = QLabel()
        self.status.setWordWrap(True)
        prepare_viewer(viewer)

    def report(self, err: BaseException | str) -> None:
        """Show a problem in the status line and as an error notification (not again for the same problem
        twice in a row, e.g. one message for three buttons pressed on an unusable image)."""
        text = str(err)
        self.status.setText(text)
        if text != self._last_error:
            show_error(text)
        self._last_error = text

    def clear_report(self) -> None:
        """The next problem is notified even when it repeats the last one (something changed)."""
        self._last_error = ""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """As wide as the content needs (it scrolls vertically only), but it may be short."""
        width = self.body.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, self.minimumHeight())

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._tabbed:
            self._tabbed = True
            QTimer.singleShot(0, self._join_sibling_docks)

    def _join_sibling_docks(self) -> None:
        """Tabify this dock with the other napari-medadapt docks of its window area (Qt API only)."""
        mine = _dock_widget(self)
        window = mine.parentWidget() if mine is not None else None
        if not isinstance(window, QMainWindow) or mine.isFloating():
            return
        area = window.dockWidgetArea(mine)
        ours = [
            dock
            for dock in window.findChildren(QDockWidget)
            if dock.findChild(DockBody) is not None
            and not dock.isFloating()
            and window.dockWidgetArea(dock) == area
            and (dock.isVisible() or dock is mine)
        ]
        if ours and ours[0] is not mine:  # every dock joins the first one: one group of tabs
            window.tabifyDockWidget(ours[0], mine)
            mine.show()
            mine.raise_()
        else:  # the first dock narrows the canvas: fit the scans into what is left of it
            QTimer.singleShot(150, self._fit_view)

    def _fit_view(self) -> None:
        """Re-fit the view to the layers once the canvas has its new size (the image would be cut off)."""
        if len(self.viewer.layers):
            self.viewer.reset_view()


def keep_results_checkbox() -> QCheckBox:
    """The "keep earlier results" option of a dock: off, a new result replaces the previous one of the same dock
    and model (undoable); on, each run adds new layers."""
    check = QCheckBox("keep earlier results")
    check.setToolTip(
        "Off: a new result replaces this dock's previous result of the same model (Ctrl+Z on the labels layer "
        "brings it back). On: every run adds new layers."
    )
    return check


def _dock_widget(widget: QWidget) -> QDockWidget | None:
    while widget is not None and not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    return widget


def _format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def widget_deleted(widget: Any) -> bool:
    """Whether Qt has deleted ``widget`` already (its viewer was closed while a job ended)."""
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False


class JobPanel(QWidget):
    """Progress of the dock's running long job: bar, stage, elapsed time, time left, and Cancel.

    Hidden while no job runs. The estimate of the time left is per stage (a job such as "segment, adapt,
    segment again" reports each stage from 0 to its own total): time so far in the stage per step, times
    the steps left.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; nothing is changed")
        self.cancel_button.setEnabled(False)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.label)
        self._handle: Any = None
        self._started = 0.0
        self._stage: tuple[int, float] = (0, 0.0)  # total and start time of the current stage
        self._last: tuple[int, int, str] = (0, 0, "")
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._refresh)
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(SHOW_AFTER_MS)
        self._show_timer.timeout.connect(lambda: self.setVisible(self.busy))
        self.cancel_button.clicked.connect(self.cancel)
        self.setVisible(False)

    def track(self, handle: Any) -> Any:
        """Show the progress of ``handle`` (a compute-worker job) until it finishes; returns the handle."""
        self._handle = handle
        self._started = time.monotonic()
        self._stage = (-1, self._started)
        self._last = (0, 0, "starting")
        handle.progressed.connect(lambda *progress: self._on_progress(handle, *progress))
        handle.finished.connect(lambda: self._on_finished(handle))
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)
        self._refresh()
        self._timer.start()
        self._show_timer.start()
        return handle

    @property
    def busy(self) -> bool:
        """Whether a tracked job is still running."""
        return self._handle is not None and not self._handle.done

    def cancel(self) -> None:
        """Cancel the tracked job."""
        if self.busy:
            self._handle.cancel()
            self.label.setText("Cancelling...")

    def _on_progress(self, handle: Any, done: int, total: int, message: str) -> None:
        if handle is not self._handle or widget_deleted(self):  # a job replaced by a newer one; a closed viewer
            return
        now = time.monotonic()
        if total != self._stage[0] or done < self._last[0]:
            self._stage = (total, now)
        self._last = (done, total, message)
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)
        self._refresh()

    def _refresh(self) -> None:
        done, total, message = self._last
        now = time.monotonic()
        text = f"{message} - {_format_seconds(now - self._started)} elapsed"
        stage_total, stage_start = self._stage
        if total > 0 and 0 < done < total and stage_total == total:
            left = (now - stage_start) / done * (total - done)
            text += f", about {_format_seconds(left)} left in this step"
        self.label.setText(text)

    def _on_finished(self, handle: Any) -> None:
        if handle is not self._handle or widget_deleted(self._timer):
            return
        self._timer.stop()
        self._show_timer.stop()
        self.cancel_button.setEnabled(False)
        self.setVisible(False)
        self._handle = None


class JobDock(DockBody):
    """The skeleton of a dock that computes: :class:`DockBody` plus its jobs in the viewer's compute worker
    (which runs them one at a time), its :class:`JobPanel` (progress, time left, Cancel), errors in the status
    line, and results of jobs that :meth:`forget_jobs` made obsolete dropped. A dock adds its inputs (e.g. a
    :class:`~napari_medadapt.widgets._model_inputs.ModelInputsPanel`), a button that calls :meth:`run_job`
    with a core function, and a method that shows the result.
    """

    #: status text when the user cancels a job
    cancelled_text = "Cancelled; nothing was changed."

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer)
        self.job_panel = JobPanel()
        self.cancel_button = self.job_panel.cancel_button
        self.handle: Any = None  # the most recent job, until it ends
        self._open: list[Any] = []  # every job of the dock not ended yet (the worker runs them in turn)
        self._generation = 0

    @property
    def worker(self) -> Any:
        """The viewer's compute worker (its ``session`` holds the loaded models)."""
        from napari_medadapt._worker import get_worker

        return get_worker(self.viewer, self)

    @property
    def busy(self) -> bool:
        """Whether a job of this dock is queued or running."""
        return any(not handle.done for handle in self._open)

    def run_job(
        self, fn: Any, *args: Any, description: str, on_result: Any, disable: tuple[QWidget, ...] = (),
        interactive_key: str | None = None, input_layers: Any = (), **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the compute worker; ``on_result`` receives its result unless
        :meth:`forget_jobs` ran meanwhile, or one of ``input_layers`` (the layers the job computes from) was
        closed meanwhile: then the result is dropped with a note. ``disable`` lists widgets off while it runs; an
        ``interactive_key`` job replaces a queued one with the same key (latest wins) and leaves the progress
        panel to a long job of the dock that is still running. Returns the job handle."""
        generation = self._generation
        inputs = {layer.unique_id: layer.name for layer in input_layers}
        for widget in disable:
            widget.setEnabled(False)

        def deliver(result: Any) -> None:
            if generation != self._generation:
                return
            open_ids = {layer.unique_id for layer in self.viewer.layers}
            closed = [name for uid, name in inputs.items() if uid not in open_ids]
            if closed:
                note = (
                    f"{description}: the result was dropped because its input layer {', '.join(map(repr, closed))} "
                    "was closed while it ran. Open the image again and run again."
                )
                self.status.setText(note)
                show_info(note)
                return
            on_result(result)

        handle = self.worker.submit(
            fn, *args, description=description, interactive_key=interactive_key,
            on_result=deliver,
            on_error=lambda err: self.status.setText(str(err)) if generation == self._generation else None,
            **kwargs,
        )
        self.handle = handle
        self._open.append(handle)
        handle.finished.connect(lambda: self._job_finished(handle, generation, disable))
        if interactive_key is None or not self.job_panel.busy:
            self.job_panel.track(handle)
        return handle

    def cancel(self, *_: Any) -> None:
        """Cancel every queued or running job of the dock (nothing is written)."""
        for handle in list(self._open):
            if not handle.done:
                handle.cancel()

    def forget_jobs(self, quietly: bool = False) -> None:
        """Drop the results of every job submitted so far (those still queued or running are cancelled; ``quietly``:
        dropped as unneeded, with no "cancelled" notification)."""
        self._generation += 1
        if not quietly:
            self.cancel()
            return
        for handle in list(self._open):
            if not handle.done:
                handle.drop()

    def _job_finished(self, handle: Any, generation: int, disable: tuple[QWidget, ...]) -> None:
        if widget_deleted(self):
            return
        if handle in self._open:
            self._open.remove(handle)
        if handle is self.handle:
            self.handle = None
        # the user's Cancel, not a job the dock chose to forget or a newer request that replaced it
        if handle.cancelled and not handle.superseded and generation == self._generation:
            self.status.setText(self.cancelled_text)
        for widget in disable:
            widget.setEnabled(True)
        self.job_finished()

    def job_finished(self) -> None:
        """Called when one of the dock's jobs has ended (done, failed or cancelled); docks refresh buttons here."""


def prepare_viewer(viewer: Any) -> None:
    """Viewer-level behaviour, set up once per viewer by the first dock (or the demo).

    - ``.nii``/``.nii.gz`` files open with this plugin when the user has not chosen a reader for them, so
      File > Open does not ask every time (an info notification says how to change it).
    - Prompt and keypoint layers stay above result layers added later (the clicks stay visible).
    - When the slider moves to the head's up-down axis (coronal or sagittal view, e.g. after the "roll
      dimensions" button), superior is shown at the top and the view is re-centred.
    """
    real = getattr(viewer, "__wrapped__", viewer)
    if real in _PREPARED:
        return
    _PREPARED.add(real)
    prefer_plugin_reader()
    viewer.dims.events.order.connect(lambda *_: _orient_for_plane(viewer))
    # after napari has finished inserting a layer, put the prompt layers back on top
    viewer.layers.events.inserted.connect(lambda *_: QTimer.singleShot(0, lambda: keep_on_top(viewer)))


def prefer_plugin_reader() -> bool:
    """Make this plugin the reader of NIfTI files unless the user chose one; True when a choice was added."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    preferences = dict(plugins.extension2reader)
    missing = [pattern for pattern in NIFTI_PATTERNS if pattern not in preferences]
    if not missing:
        return False
    preferences.update(dict.fromkeys(missing, PLUGIN_NAME))
    plugins.extension2reader = preferences
    show_info(
        "NIfTI files (.nii, .nii.gz) now open with MedAdapt by default. To choose another reader: "
        "File > Preferences > Plugins > File extension readers."
    )
    return True


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _orient_for_plane(viewer: Any) -> None:
    """Superior up in coronal and sagittal views of the LPS (Z, Y, X) volumes, axial as napari shows it."""
    dims = viewer.dims
    if dims.ndim < 3 or dims.ndisplay != 2:
        return
    rows_axis = dims.order[-2] - (dims.ndim - 3)
    vertical = "up" if rows_axis == 0 else "down"  # axis 0 runs inferior -> superior
    camera = _camera(viewer)
    if tuple(str(v) for v in camera.orientation2d) != (vertical, "right"):
        camera.orientation2d = (vertical, "right")
    viewer.reset_view()
