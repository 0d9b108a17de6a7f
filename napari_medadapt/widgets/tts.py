"""TTS dock: steer a segmentation model with a few positive and negative keypoints (feature muting).

The keypoints are the clicks of one Points layer, "TTS keypoints" (:mod:`napari_medadapt.widgets._keypoints`):
green discs on the target, magenta crosses on an artifact or the background ('T' or the dock's radio buttons
set the polarity of the next click), placed in any displayed plane (axial, coronal or sagittal). "TTS before"
is the model's ordinary segmentation of the volume (the Segment dock's result, computed once per viewer and
reused); "TTS after" is that segmentation with every axial slice holding keypoints muted, post-processed alike.
For a 2D model every keypoint change re-predicts the slices whose keypoints changed, from cached features
(latest request wins); "Apply to volume" does the same on demand or, with "one mask per slice" off (or a 3D
model), mutes the whole volume with one mask. The computing is in :mod:`napari_medadapt.core.adapt.tts.live`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
)
from superqt import QLabeledDoubleSlider

from napari_medadapt.core.adapt.tts.run import ARTIFACT_ALPHA
from napari_medadapt.core.adapt.tts.select import DEFAULT_ALPHA, DEFAULT_KEEP_FRACTION
from napari_medadapt.core.errors import MedAdaptError, VolumeError
from napari_medadapt.widgets._dock import JobDock
from napari_medadapt.widgets._keypoints import KeypointLayer, PolarityPanel
from napari_medadapt.widgets._layers import (
    check_volume_layer,
    class_names_of,
    grid_of,
    labels_layer_kwargs,
    layer_geometry,
    mark_result,
    provenance_draft,
    set_labels_undoable,
    volume_from_layers,
)
from napari_medadapt.widgets._model_inputs import ModelInputsPanel

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.adapt.tts.live import LiveTTSResult

KEYPOINTS_LAYER = "TTS keypoints"
BEFORE_LAYER = "TTS before"
AFTER_LAYER = "TTS after"
ATTENTION_BEFORE_LAYER = "TTS attention before"
ATTENTION_AFTER_LAYER = "TTS attention after"
POINT_SIZE = 6
DEFAULT_MODEL_NAME = "glioma2d"


class TTSWidget(JobDock):
    """Dock for keypoint-driven feature muting (TTS).

    Parameters
    ----------
    napari_viewer
        The viewer this dock works on.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        from napari_medadapt.core.adapt.tts.live import TTSWorkspace

        self._workspace = TTSWorkspace(self.worker.session)
        self._volume_cache: tuple[tuple, Any] | None = None
        self.last_result: LiveTTSResult | None = None

        self.inputs = ModelInputsPanel(
            self.viewer,
            tooltip="Segmentation model: a registered name, or type a model card/weight file path",
            editable=True,
            default_model=DEFAULT_MODEL_NAME,
            skip_prefix="TTS ",
            include_tags=("demonstration",),
        )
        self.model_box = self.inputs.model_combo
        self.polarity = PolarityPanel("the next keypoint marks the target", "the next keypoint marks an artifact")
        self.points = KeypointLayer(self.viewer, KEYPOINTS_LAYER, self.polarity, self._schedule_live, POINT_SIZE)
        self.alpha_box = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.alpha_box.setRange(0.0, 1.0)
        self.alpha_box.setDecimals(2)
        self.alpha_box.setSingleStep(0.05)
        self.alpha_box.setValue(DEFAULT_ALPHA)
        self.alpha_box.setToolTip("weight of the positive keypoints; negatives weigh 1 - alpha")
        self.artifact_check = QCheckBox(f"negatives are artifacts (alpha {ARTIFACT_ALPHA})")
        self.keep_box = QSpinBox()
        self.keep_box.setRange(1, 100)
        self.keep_box.setValue(round(DEFAULT_KEEP_FRACTION * 100))
        self.keep_box.setSuffix(" %")
        self.keep_box.setToolTip("share of feature channels kept (at least one)")
        self.layer_box = QComboBox()
        self.layer_box.addItems(["decoder", "bottleneck", "up1", "up2"])
        self.layer_box.setToolTip(
            "feature map to mute: decoder (input of the last layer, fastest), bottleneck (deepest), "
            "up1/up2 (decoder blocks after the bottleneck; the rest of the network runs again)"
        )
        self.background_check = QCheckBox("never mute background channels (decoder map)")
        self.background_check.setChecked(True)
        self.background_check.setToolTip(
            "segmentation extension: decoder channels whose head weight favours the background keep the "
            "'not target' evidence; unchecked = the published rule (zero every channel outside the top keep %)"
        )
        self.per_slice_check = QCheckBox("one mask per slice (slices without keypoints stay unmuted)")
        self.per_slice_check.setChecked(True)
        self.live_check = QCheckBox("re-predict as keypoints change")
        self.live_check.setChecked(True)
        self.points_button = QPushButton("Add keypoint layer")
        self.points_button.setToolTip("Create the keypoint layer on the image's grid and start adding keypoints")
        self.apply_button = QPushButton("Apply to volume")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Remove the keypoints and the muting (result layers stay; Ctrl+Z undoes)")
        self.kept_list = QListWidget()
        self.kept_list.setMaximumHeight(120)
        self.status.setText("Add keypoints: positives on the target, negatives on the artifact.")

        form = QFormLayout()
        form.addRow("next keypoint", self.polarity)
        form.addRow("alpha", self.alpha_box)
        form.addRow("", self.artifact_check)
        form.addRow("keep", self.keep_box)
        form.addRow("feature map", self.layer_box)
        form.addRow("", self.background_check)
        layout = self.layout_
        layout.addWidget(self.inputs)
        layout.addLayout(form)
        layout.addWidget(self.points_button)
        layout.addWidget(self.per_slice_check)
        layout.addWidget(self.live_check)
        buttons = QHBoxLayout()
        for button in (self.apply_button, self.reset_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.job_panel)
        layout.addWidget(QLabel("kept channels (score)"))
        layout.addWidget(self.kept_list)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(30)
        self._live_timer.timeout.connect(self.update_muting)

        self.inputs.model_changed.connect(self._workspace_reset)
        self.inputs.inputs_changed.connect(self._workspace_reset)
        self.artifact_check.toggled.connect(
            lambda checked: self.alpha_box.setValue(ARTIFACT_ALPHA if checked else DEFAULT_ALPHA)
        )
        self.points_button.clicked.connect(self.ensure_keypoint_layer)
        self.apply_button.clicked.connect(self.apply_to_volume)
        self.reset_button.clicked.connect(self.reset)
        for widget in (self.alpha_box, self.keep_box):
            widget.valueChanged.connect(self._schedule_live)
        self.layer_box.currentTextChanged.connect(self._schedule_live)
        self.background_check.toggled.connect(self._schedule_live)
        self.viewer.layers.events.inserted.connect(self.points.connect)
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)
        self.viewer.dims.events.order.connect(self._on_dims_changed)
        self._workspace_reset()

    # ------------------------------------------------------------------------------ settings
    @property
    def model_name(self) -> str:
        """The card path (or name) of the chosen model; empty when none is chosen."""
        return "" if self.inputs.card is None else self.inputs.model_ref

    @property
    def alpha(self) -> float:
        """Weight of the positive keypoints."""
        return float(self.alpha_box.value())

    @property
    def keep_fraction(self) -> float:
        """Share of the feature channels kept."""
        return self.keep_box.value() / 100.0

    @property
    def tap(self) -> str:
        """The feature map muted."""
        return self.layer_box.currentText()

    @property
    def slice_by_slice(self) -> bool:
        """Whether keypoint changes re-predict single slices (per-slice masks of a 2D model)."""
        card = self.inputs.card
        return self.per_slice_check.isChecked() and (card is None or card.architecture.get("spatial_dims", 2) == 2)

    def _mapping(self) -> dict[str, Any]:
        """The image layers assigned to the model's inputs, checked to be 3D volumes."""
        if self.inputs.card is None:
            raise MedAdaptError("Choose a segmentation model first (or type a model card path).")
        layers = self.inputs.chosen_layers()
        if not layers:
            raise VolumeError("Assign image layers to the model's inputs (open a case first).")
        self.inputs.card.check_modalities(layers)
        for modality, layer in layers.items():
            check_volume_layer(modality, layer)
        return layers

    # ------------------------------------------------------------------------------ keypoints
    def ensure_keypoint_layer(self, *_: Any) -> Any:
        """The keypoint layer, created on the reference image's grid when absent (``None`` on a problem)."""
        try:
            reference = next(iter(self._mapping().values()))
        except MedAdaptError as err:
            self.report(err)
            return None
        return self.points.ensure(reference)

    def keypoints(self, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative keypoints as voxel indices ``(N, 3)`` of ``reference``'s volume."""
        voxels, positive, _plane = self.points.read(reference, "Keypoint")
        return voxels[positive], voxels[~positive]

    def current_slice(self, reference: Any) -> int:
        """Index of the displayed axial position in ``reference``'s voxels (any displayed plane)."""
        z = int(np.rint(reference.world_to_data(np.asarray(self.viewer.dims.point)[-3:])[-3]))
        return int(np.clip(z, 0, reference.data.shape[-3] - 1))

    def _on_dims_changed(self, *_: Any) -> None:
        layers = self.inputs.chosen_layers() if self.inputs.card is not None else {}
        reference = next(iter(layers.values()), None)
        if reference is None or np.asarray(reference.data).ndim != 3:
            return
        self.points.follow_plane(reference)
        if self.last_result is not None:
            self._show_selection(self.last_result.selections.get(self.current_slice(reference)))

    # ------------------------------------------------------------------------------ compute
    def _schedule_live(self, event: Any = None) -> None:
        if not self.live_check.isChecked():
            return
        layer = self.points.layer
        muted = self.last_result is not None and bool(self.last_result.selections)
        if (layer is not None and len(layer.data)) or muted:
            self._live_timer.start()

    def _inputs(self) -> tuple[dict[str, Any], Any, Any, np.ndarray, np.ndarray]:
        """Assigned layers, reference layer, input volume and keypoints (checked)."""
        layers = self._mapping()
        volume = self._volume(layers)
        reference = next(iter(layers.values()))
        positives, negatives = self.keypoints(reference)
        return layers, reference, volume, positives, negatives

    def _layers_key(self, layers: dict[str, Any]) -> tuple:
        # unique_id, not id(layer): docks get a proxy viewer that wraps every layer anew at each access
        return tuple((m, layer.unique_id, id(layer.data)) for m, layer in layers.items())

    def _volume(self, layers: dict[str, Any]) -> Any:
        """The input volume of the assigned layers (kept while the same layers and arrays are assigned)."""
        key = self._layers_key(layers)
        if self._volume_cache is None or self._volume_cache[0] != key:
            self._volume_cache = (key, volume_from_layers(layers, list(layers)))
        return self._volume_cache[1]

    def update_muting(self, *_: Any) -> Any:
        """Live path: re-predict the slices whose keypoints (or settings) changed; returns the job handle."""
        if not self.slice_by_slice:
            self.status.setText("Keypoints changed: press 'Apply to volume' to mute the whole volume.")
            return None
        try:
            layers, reference, volume, positives, negatives = self._inputs()
        except MedAdaptError as err:
            self.status.setText(str(err))
            return None
        self.status.setText(f"re-predicting with {len(positives)} + {len(negatives)} keypoint(s)...")
        return self._run(layers, reference, volume, positives, negatives, interactive=True)

    def apply_to_volume(self, *_: Any) -> Any:
        """Mute every slice with keypoints (or the whole volume with one mask); returns the job handle."""
        try:
            layers, reference, volume, positives, negatives = self._inputs()
        except MedAdaptError as err:
            self.report(err)
            return None
        if len(positives) + len(negatives) == 0:
            self.report(MedAdaptError("Place keypoints first: positives on the target, negatives on the artifact."))
            return None
        self.status.setText("TTS on the volume...")
        return self._run(layers, reference, volume, positives, negatives, interactive=False)

    def _run(self, layers: dict[str, Any], reference: Any, volume: Any, positives: np.ndarray,
             negatives: np.ndarray, *, interactive: bool) -> Any:
        """Live jobs follow "latest wins"; Apply is never replaced by a later live update."""
        card = self.inputs.card
        draft = provenance_draft(
            "tts", volume, {"name": card.name, "sha256": card.weights_sha256, "card": card.path},
            {"alpha": self.alpha, "keep": self.keep_fraction, "layer": self.tap,
             "mute_background": self.background_check.isChecked(), "slice_by_slice": self.slice_by_slice,
             "positives_zyx": np.asarray(positives).tolist(), "negatives_zyx": np.asarray(negatives).tolist()},
            self.worker.session.device,
        )
        return self.run_job(
            self._workspace.apply, self.model_name, self._layers_key(layers), volume, self.tap, positives,
            negatives, self.alpha, self.keep_fraction, self.background_check.isChecked(), self.slice_by_slice,
            description="TTS slices" if interactive else "TTS volume",
            interactive_key="tts-slice" if interactive else None,
            on_result=lambda result: self._show(result, reference, draft), input_layers=list(layers.values()),
        )

    def _workspace_reset(self, *_: Any) -> None:
        """Forget the muting: a running job's result is dropped, the cached features are freed."""
        self.forget_jobs()
        self._volume_cache = None
        self.last_result = None
        self.worker.submit(self._workspace.reset, description="TTS reset")

    def reset(self, *_: Any) -> None:
        """Clear keypoints, kept channels and the muting (result layers stay; undo still works); the keypoint
        layer moves to the grid of the image now assigned."""
        layers = self.inputs.chosen_layers() if self.inputs.card is not None else {}
        self.points.clear(next(iter(layers.values()), None))
        self._live_timer.stop()
        self.kept_list.clear()
        self._workspace_reset()
        self.status.setText("Reset: keypoints and muting removed. Add keypoints again.")

    # ------------------------------------------------------------------------------ results
    def _labels_layer(self, name: str, reference: Any) -> Any:
        from napari_medadapt.core.volume import Geometry

        if name in self.viewer.layers:
            return self.viewer.layers[name]
        geometry = layer_geometry(reference) or Geometry.from_display_grid(
            reference.data.shape[-3:], tuple(reference.scale)[-3:], tuple(reference.translate)[-3:]
        )
        card = self.inputs.card
        kwargs = labels_layer_kwargs(geometry, name=name, class_names=class_names_of(card))
        kwargs.update(grid_of(reference))
        mark_result(kwargs, "tts", card.name if card is not None else "", name)
        return self.viewer.add_labels(np.zeros(reference.data.shape[-3:], dtype=np.uint8), **kwargs)

    def _attention_layer(self, name: str, reference: Any) -> Any:
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        return self.viewer.add_image(
            np.zeros(reference.data.shape[-3:], dtype=np.float32),
            name=name,
            **grid_of(reference),
            colormap="inferno",
            blending="additive",
            opacity=0.5,
            visible=name == ATTENTION_AFTER_LAYER,
            **mark_result({}, "tts", "", name),
        )

    def _show_selection(self, selection: Any) -> None:
        self.kept_list.clear()
        if selection is None:
            self.kept_list.addItem("(slice without keypoints: unmuted)")
            return
        for channel in selection.kept:
            self.kept_list.addItem(f"channel {int(channel)}  ({selection.scores[int(channel)]:.3g})")
        if len(selection.background):
            self.kept_list.addItem(f"+ {len(selection.background)} background channel(s), never muted")

    def _show(self, result: LiveTTSResult, reference: Any, draft: dict[str, Any]) -> None:
        """Paste a result: both label layers (only changed voxels, undoable, with their provenance), attention
        of the computed slices, the kept channels of the displayed (else the last re-predicted) slice, and what
        changed."""
        self.last_result = result
        active = self.viewer.layers.selection.active  # adding result layers must not end keypoint placing
        before = {**draft, "method": "segment", "settings": {}}
        for name, labels, record in ((BEFORE_LAYER, result.before, before), (AFTER_LAYER, result.after, draft)):
            layer = self._labels_layer(name, reference)
            set_labels_undoable(layer, labels.astype(np.uint8))
            layer.metadata = {**layer.metadata, "medadapt": {**layer.metadata.get("medadapt", {}), "provenance": record}}
        for name, attention in (
            (ATTENTION_BEFORE_LAYER, result.attention_before),
            (ATTENTION_AFTER_LAYER, result.attention_after),
        ):
            layer = self._attention_layer(name, reference)
            for index, values in attention.items():
                layer.data[index] = values
            layer.refresh()
        if active is not None and active.name in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[active.name]
        shown = self.current_slice(reference)
        if shown not in result.selections:
            shown = next((z for z in reversed(result.slices) if z in result.selections), shown)
        self._show_selection(result.selections.get(shown))
        on_slice = int(np.count_nonzero(result.after[shown] != result.before[shown]))
        muted = ", ".join(str(s) for s in sorted(result.selections)[:12]) or "none"
        self.status.setText(
            f"slice {shown}: {on_slice} voxel(s) changed by muting; volume: {result.changed} voxel(s) changed, "
            f"muted slices: {muted}." + "".join(" " + w for w in dict.fromkeys(result.warnings))
        )
