"""Segment Anything dock: point and box prompts on any slice, instant masks, refinement, 3D propagation.

Prompts live in two layers on the chosen image's grid: "SAM prompts" (points; positive = green disc,
negative = magenta cross; 'T' on that layer or the dock's radio buttons set the polarity of the next
point) and "SAM boxes" (rectangles). A prompt belongs to the slice it was placed on, in the plane napari
displays (axial, coronal or sagittal, after Ctrl+T / a changed axis order). With a box-trained model
(LiteMedSAM, the default) the dock starts with the box tool; once prompting has started, every slice the user
moves to is embedded in the background (latest wins), and its neighbours after a pause (``sam_prefetch``). Every
prompt change
re-segments the changed slice in the compute worker (latest request wins; an added click refines the
previous mask) and shows the object in the "SAM preview" Labels layer; an ambiguous single click offers
the model's three candidates with their predicted IoU. "Propagate" extends the object through the volume
(interpolating between annotated slices; slices with only negative clicks stop it); "Commit" writes it
into a Labels layer with a chosen id as one undoable step; "Clear" starts a new object. All computing
is in ``napari_medadapt.core.sam`` (the session's promptable model: ``core/sam/workspace.py``); ``sam_prompts``
maps layers to prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
)

from napari_medadapt._worker import get_worker
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.sam.prompts import Prompts
from napari_medadapt.core.sam.workspace import ModelChoice, neighbour_slices, slice_requests
from napari_medadapt.widgets import sam_prompts as sp
from napari_medadapt.widgets._dock import DockBody, JobPanel
from napari_medadapt.widgets._keypoints import KeypointLayer, PolarityPanel, current_plane, put_on_grid
from napari_medadapt.widgets._layers import grid_of, mark_result, same_layer, target_choices
from napari_medadapt.widgets.sam_jobs import SamLongJobs
from napari_medadapt.widgets.sam_panels import (
    NEW_LABELS,
    CommitPanel,
    ModelChoicePanel,
    PropagationPanel,
    WindowChoice,
)
from napari_medadapt.widgets.sam_prefetch import PREFETCH_SLICES, NeighbourPrefetch
from napari_medadapt.widgets.sam_results import SamResults, record_commit

if TYPE_CHECKING:
    import napari

class SamWidget(SamLongJobs, DockBody):
    """Dock for interactive Segment Anything segmentation of a 3D image layer.

    Parameters
    ----------
    napari_viewer
        The viewer this dock works on.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.workspace = get_worker(self.viewer, self).session.sam  # the viewer's promptable model + embeddings
        self._predict_handle: Any = None
        self._predict_request: tuple | None = None
        self._long_handle: Any = None
        self._precompute_pending = False
        self._generation = 0
        self._connected: set[Any] = set()  # unique_id of the box layers whose events are connected
        self._boxes_busy = False  # a box is being drawn or dragged (napari sends "adding"/"changing" first)
        self._loaded: Any = None  # the last job's model output (JobOutput): what is loaded, without asking the session
        self.results = SamResults(self.status.setText, self._took)
        self.candidate_combo = self.results.candidate_combo

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The 3D grayscale image to segment (one channel)")
        self.model_panel = ModelChoicePanel()
        self.model_combo = self.model_panel.model_combo
        self.window_combo = WindowChoice()
        self.polarity = PolarityPanel("the next point marks the object", "the next point marks what is not the object")
        self.points = KeypointLayer(self.viewer, sp.POINTS_LAYER, self.polarity, self._schedule_update, sp.POINT_SIZE)
        self.layers_button = QPushButton("Add prompt layers")
        self.layers_button.setToolTip("Create the points and box layers on the image's grid and start adding points")
        self.precompute_button = QPushButton("Precompute volume")
        self.precompute_button.setToolTip("Embed every slice of the displayed plane now (resumes after Cancel)")
        self.job_panel = JobPanel()
        self.cancel_button = self.job_panel.cancel_button
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Start a new object: remove prompts and the preview")
        self.status.setText("Choose an image, add prompt layers, click on the object.")

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_panel)
        form.addRow("window", self.window_combo)
        form.addRow("next point", self.polarity)
        form.addRow("candidates", self.candidate_combo)
        layout = self.layout_
        layout.addLayout(form)
        layout.addWidget(self.layers_button)
        buttons = QHBoxLayout()
        for button in (self.precompute_button, self.clear_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.job_panel)
        self.commit_panel = CommitPanel()
        self.propagation_panel = PropagationPanel()
        layout.addWidget(self.commit_panel)
        layout.addWidget(self.propagation_panel)
        layout.addWidget(self.results.table)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(20)
        self._timer.timeout.connect(self.update_preview)
        self.prefetch = NeighbourPrefetch(self._prefetch_neighbours, self)

        self._refresh_layers()
        self.model_panel.changed.connect(self._on_model_changed)
        self._on_model_changed()
        self.window_combo.currentIndexChanged.connect(self._restart_object_prompts)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.layers_button.clicked.connect(self.ensure_prompt_layers)
        self.candidate_combo.activated.connect(self.choose_candidate)
        self.precompute_button.clicked.connect(self.precompute)
        self.cancel_button.clicked.connect(self.cancel)  # also stops a precomputation waiting to resume
        self.clear_button.clicked.connect(self.clear)
        self.commit_panel.commit_button.clicked.connect(self.commit)
        self.propagation_panel.propagate_button.clicked.connect(self.propagate)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        for event in (self.viewer.dims.events.current_step, self.viewer.dims.events.order,
                      self.viewer.dims.events.ndisplay):
            event.connect(self._on_dims_changed)

    @property
    def model_choice(self) -> ModelChoice | None:
        """The chosen model (``None`` while "Local checkpoint..." has no file)."""
        return self.model_panel.choice

    def add_checkpoint(self, path: str) -> None:
        """Add a local checkpoint file to the model list and select it."""
        self.model_panel.add_checkpoint(path)

    def _window_spec(self, image: Any) -> str | tuple[float, float]:
        return self.window_combo.spec(image)

    # ---------------------------------------------------------------------------------------- layers
    def _refresh_layers(self, *_: Any) -> None:
        sp.fill_image_combo(self.image_combo, self.viewer)
        self.commit_panel.set_targets(
            [name for name in target_choices(self.viewer, NEW_LABELS)[1:] if name != sp.PREVIEW_LAYER]
        )
        if self.image_combo.currentText() != getattr(self, "_image_name", None):
            self._on_image_changed()
        self._connect_prompt_layers()

    @property
    def image_layer(self) -> Any:
        """The chosen image layer, or ``None``."""
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_changed(self, *_: Any) -> None:
        self._image_name = self.image_combo.currentText()
        self._reset_object()
        image = self.image_layer
        if image is not None and not image.visible and self._layer(sp.BOXES_LAYER) is not None:
            image.visible = True  # prompting has started: show the image the model now segments

    def ensure_prompt_layers(self, *_: Any) -> tuple[Any, Any] | None:
        """The points and box layers, created on the image's grid when absent; selects the box layer in
        rectangle mode for a model trained on boxes (LiteMedSAM), else the points layer in add mode."""
        try:
            image, _ = self._checked_image()
        except MedAdaptError as err:
            self.report(err)
            return None
        if not image.visible:  # prompts go on the image the model segments: show it
            image.visible = True
            self.status.setText(f"Showing {image.name!r}, the image being segmented.")
        boxes = self._layer(sp.BOXES_LAYER) or sp.add_boxes_layer(self.viewer, image)
        self._connect_prompt_layers()
        points = self.points.ensure(image)
        if self.box_first:  # a model trained on boxes: the user starts by drawing one
            self.viewer.layers.selection.active = boxes
            boxes.mode = "add_rectangle"
        self._embed_displayed_slice()  # load the model and embed this slice while the user aims
        return points, boxes

    def _connect_prompt_layers(self) -> None:
        self.points.connect()
        boxes = self._layer(sp.BOXES_LAYER)
        if boxes is not None and boxes.unique_id not in self._connected:
            boxes.events.data.connect(self._schedule_update)
            boxes.events.data.connect(self._track_boxes)
            self._connected.add(boxes.unique_id)

    def _on_dims_changed(self, *_: Any) -> None:
        image = self.image_layer
        self.points.follow_plane(image)
        self.results.show_candidates(self._plane_or_none(image) if image is not None else None)
        if self._model_loaded:  # never interrupt a model load or download by scrolling
            self._embed_displayed_slice()
            plane = self._plane_or_none(image) if image is not None else None
            if plane is not None:
                self.prefetch.moved(plane)

    def _chosen_model(self) -> ModelChoice | None:
        """The chosen model, or ``None`` after telling the user to choose one."""
        choice = self.model_choice
        if choice is None:
            self.report(MedAdaptError("Choose a model (or a local checkpoint file) first."))
        return choice

    @property
    def box_first(self) -> bool:
        """Whether the chosen model was trained to start from a box (its card's ``first_prompt``)."""
        return self.model_panel.box_first

    def _prefetch_neighbours(self, plane: sp.Plane, direction: int) -> Any:
        """Embed the displayed slice's neighbours (scroll direction first) unless a long job holds the worker."""
        image = self.image_layer
        if (self._long_handle is not None and not self._long_handle.done) or image is None or self._boxes_busy:
            return None
        if not self._model_loaded or self._plane_or_none(image) != plane:
            return None
        size = image.data.shape[plane.axis]
        return self._embed_displayed_slice(neighbour_slices(plane.index, size, direction, PREFETCH_SLICES))

    def _embed_displayed_slice(self, neighbours: list[int] | tuple[()] = ()) -> Any:
        """Once prompting has started, load the model and embed each newly displayed slice in the background
        (latest wins), so the first mask after a box or click there costs only the decoder; then ``neighbours``
        of its plane."""
        image, choice = self.image_layer, self.model_choice
        if image is None or choice is None or self._layer(sp.BOXES_LAYER) is None:
            return None
        plane = self._plane_or_none(image)
        if plane is None:
            return None
        try:
            data = sp.check_image_layer(image)
        except MedAdaptError:
            return None
        return get_worker(self.viewer, self).submit(
            self.workspace.prepare, choice, data, self._window_spec(image), plane, neighbours=neighbours,
            description="Segment Anything: embedding neighbouring slices" if neighbours
            else "Segment Anything: loading the model, embedding the slice", interactive_key="sam-embed",
            on_result=self._took, on_error=self._job_failed,
        )

    def _checked_image(self) -> tuple[Any, np.ndarray]:
        image = self.image_layer
        return image, sp.check_image_layer(image)

    def _prompts(self) -> tuple[Any, sp.Plane, dict[int, Prompts], np.ndarray]:
        """Image, displayed plane, prompts per slice of that plane, image array (checked)."""
        image, data = self._checked_image()
        layers = [self._layer(name) for name in (sp.POINTS_LAYER, sp.BOXES_LAYER)]
        for layer in layers:
            if layer is not None:
                sp.check_prompt_layer(layer, image)
        plane = current_plane(self.viewer, image)
        return image, plane, sp.collect_prompts(*layers, image, plane.axis), data

    def _plane_or_none(self, image: Any) -> sp.Plane | None:
        try:
            return current_plane(self.viewer, image)
        except MedAdaptError:
            return None

    def preview_layer(self, image: Any) -> Any:
        """The "SAM preview" Labels layer on ``image``'s grid (created or re-gridded when needed)."""
        layer = self._layer(sp.PREVIEW_LAYER)
        shape = image.data.shape
        if layer is None:
            active = self.viewer.layers.selection.active  # keep adding points / drawing boxes
            layer = self.viewer.add_labels(
                np.zeros(shape, np.uint8), name=sp.PREVIEW_LAYER, opacity=0.5, **grid_of(image),
                **mark_result({}, "sam", "", "preview"),
            )
            self.viewer.layers.selection.active = active or layer
        elif layer.data.shape != shape:
            layer.data = np.zeros(shape, np.uint8)
            for key, value in grid_of(image).items():
                setattr(layer, key, value)
        return layer

    # --------------------------------------------------------------------------------------- prompts
    def _schedule_update(self, event: Any = None) -> None:
        if not str(getattr(event, "action", "")).endswith("ing"):
            self._timer.start()

    def _track_boxes(self, event: Any = None) -> None:
        """Remember whether a box is being drawn or dragged: its final shape arrives with the release."""
        action = str(getattr(event, "action", ""))
        self._boxes_busy = action.endswith("ing") and not action.startswith("remov")

    def update_preview(self, *_: Any) -> Any:
        """Segment every slice of the displayed plane whose prompts changed; returns the job handle."""
        self._timer.stop()
        if self._boxes_busy:
            return None
        try:
            image, plane, prompts, data = self._prompts()
        except MedAdaptError as err:
            self.report(err)
            return None
        choice = self._chosen_model()
        if choice is None:
            return None
        axis = plane.axis
        changed = {i: p for i, p in prompts.items() if self.results.applied.get((axis, i)) != p.signature}
        for a, i in self.results.applied:
            if a == axis and i not in prompts:
                changed[i] = Prompts()
        request = (self._generation, axis, tuple(sorted((i, p.signature) for i, p in changed.items())))
        if self._predict_handle is not None and not self._predict_handle.done and request == self._predict_request:
            return self._predict_handle
        if not changed:
            return None
        feedback = {
            i: self.results.feedback[(axis, i)]
            for i, p in changed.items()
            if (axis, i) in self.results.feedback and p.extends(self.results.applied.get((axis, i)))
        }
        generation = self._generation
        self._predict_request = request
        self.clear_report()
        self.status.setText(f"Segmenting slice {', '.join(str(i) for i in sorted(changed))}...")
        self.prefetch.pause()  # the prompt first: a running neighbour embedding stops after its slice
        handle = get_worker(self.viewer, self).submit(
            self.workspace.predict_slices,
            choice,
            data,
            self._window_spec(image),
            slice_requests(data, axis, changed, feedback),
            description="Segment Anything",
            interactive_key="sam",
            on_result=lambda output: self._show_slices(output, image, axis, generation),
            on_error=self._job_failed,
        )
        handle.finished.connect(self._predict_finished)
        self._predict_handle = handle
        return handle

    def _predict_finished(self) -> None:
        if self._precompute_pending and (self._predict_handle is None or self._predict_handle.done):
            self.precompute()
            return
        image = self.image_layer
        plane = self._plane_or_none(image) if image is not None else None
        if plane is not None:  # a mask is shown: its neighbours after the next pause
            self.prefetch.moved(plane)

    def _is_current(self, image: Any, generation: int) -> bool:
        """Whether a job's result still belongs to the shown object (same object, same image layer)."""
        return generation == self._generation and same_layer(image, self.image_layer)

    def _show_slices(self, output: Any, image: Any, axis: int, generation: int) -> None:
        if not self._is_current(image, generation):
            return
        self._took(output)
        self.results.apply_slices(self.preview_layer(image), output.value, axis)
        self.results.show_candidates(self._plane_or_none(image))
        entry = self.model_panel.entry
        box_model = entry.title.split(" (")[0] if self.model_panel.needs_box and entry is not None else None
        self.status.setText(self.results.describe_slices(output.value, axis, box_model))

    def choose_candidate(self, position: int) -> None:
        """Use candidate mask ``position`` (of the ambiguous click) on the displayed slice."""
        image = self.image_layer
        plane = self._plane_or_none(image) if image is not None else None
        if plane is not None:
            self.results.choose(self.preview_layer(image), plane, position)

    def _on_model_changed(self, *_: Any) -> None:
        """A box-first model (LiteMedSAM: its published decoder answers boxes) propagates with LiteMedSAM's published
        recipe (box + margin), the others with mask feedback."""
        self.propagation_panel.mode_combo.setCurrentText("box-margin" if self.model_panel.box_first else "mask")
        self._restart_object_prompts()

    def _restart_object_prompts(self, *_: Any) -> None:
        """Model or window changed: forget refinement state and re-segment the prompted slices."""
        self.results.applied.clear()
        self.results.feedback.clear()
        if self._layer(sp.POINTS_LAYER) is not None or self._layer(sp.BOXES_LAYER) is not None:
            self._timer.start()

    # ---------------------------------------------------------------------------------- commit/clear
    def commit(self, *_: Any) -> int:
        """Write the preview object with the chosen label id into the target Labels layer (undoable)."""
        image = self.image_layer
        preview = self._layer(sp.PREVIEW_LAYER)
        if image is None or preview is None or not np.any(preview.data):
            self.report(MedAdaptError("Nothing to commit: segment an object first."))
            return 0
        active = self.viewer.layers.selection.active  # a new target layer would take the selection
        try:
            target, changed = self.commit_panel.commit(self.viewer, image, np.asarray(preview.data) > 0)
        except MedAdaptError as err:
            self.report(err)
            return 0
        if active is not None and active in self.viewer.layers:  # keep drawing boxes / adding points
            self.viewer.layers.selection.active = active
        label = self.commit_panel.label_spin.value()
        choice = self.model_choice
        output = self._loaded
        record_commit(target, image, np.asarray(preview.data) > 0, label, choice.name if choice else None,
                      output.weights_hash if self._model_loaded else None, output.device if output else None)
        self.status.setText(f"Committed {changed} voxels as label {label} into {target.name!r} (Ctrl+Z undoes).")
        show_info(self.status.text())
        return changed

    def clear(self, *_: Any) -> None:
        """Start a new object: remove all prompts and empty the preview (committed labels stay)."""
        self._reset_object()
        image = self.image_layer
        self.points.clear(image)
        boxes = self._layer(sp.BOXES_LAYER)
        if boxes is not None:
            boxes.events.data.disconnect(self._schedule_update)
            boxes.data = []
            put_on_grid(boxes, image)
            boxes.events.data.connect(self._schedule_update)
        self._timer.stop()
        self.status.setText("New object: add prompts.")

    def _reset_object(self) -> None:
        self._generation += 1
        self._predict_request = None
        self.results.reset()
        preview = self._layer(sp.PREVIEW_LAYER)
        if preview is not None:
            preview.data = np.zeros_like(preview.data)

    # -------------------------------------------------------------------------------------- messages
    def _job_failed(self, err: BaseException) -> None:
        """A job failed: the worker already notified the user; keep the message in the dock."""
        self.status.setText(str(err))

    def _notes(self, notes: list[str]) -> None:
        for note in notes:
            show_warning(note)

    def _took(self, output: Any) -> None:
        """A job's output: remember which model it ran on (so the dock never asks the compute session), show its
        notes."""
        self._loaded = output
        self._notes(output.notes)

    @property
    def _model_loaded(self) -> bool:
        """Whether the last job ran on the chosen model (it is loaded: scrolling may embed slices)."""
        return self._loaded is not None and self._loaded.model == self.model_choice
