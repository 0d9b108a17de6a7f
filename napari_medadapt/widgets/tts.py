"""TTS dock: steer a segmentation model with a few positive and negative keypoints (feature muting).

Two Points layers hold the keypoints: "TTS positive" (green discs, on the target) and "TTS negative"
(magenta crosses, on an artifact or the background); they stay above the result layers. "TTS before" is the
model's ordinary segmentation of the volume (the same result as the Segment dock's, computed once per viewer
and reused); "TTS after" is that segmentation with every slice holding keypoints muted, post-processed alike.
For a 2D model the current slice re-predicts as soon as a keypoint changes (latest request wins);
"Apply to volume" mutes every slice with keypoints (only those slices are computed) or, with "one mask per
slice" off, every slice with one mask. The computing is in :mod:`napari_medadapt.core.adapt.tts_live`.
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

from napari_medadapt._worker import get_worker
from napari_medadapt.core.errors import MedAdaptError, VolumeError
from napari_medadapt.widgets._dock import DockBody, JobPanel
from napari_medadapt.widgets._layers import (
    check_volume_layer,
    class_names_of,
    labels_layer_kwargs,
    layer_geometry,
    prompt_metadata,
    set_labels_undoable,
    volume_from_layers,
)
from napari_medadapt.widgets._model_inputs import ModelInputsPanel

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.adapt.tts_live import LiveTTSResult

POSITIVE_LAYER = "TTS positive"
NEGATIVE_LAYER = "TTS negative"
KEYPOINT_LAYERS = (POSITIVE_LAYER, NEGATIVE_LAYER)
BEFORE_LAYER = "TTS before"
AFTER_LAYER = "TTS after"
ATTENTION_BEFORE_LAYER = "TTS attention before"
ATTENTION_AFTER_LAYER = "TTS attention after"
POSITIVE_STYLE = {"symbol": "disc", "face_color": "lime", "border_color": "white", "size": 6}
NEGATIVE_STYLE = {"symbol": "x", "face_color": "magenta", "border_color": "magenta", "size": 6}
DEFAULT_MODEL_NAME = "glioma2d"


class TTSWidget(DockBody):
    """Dock for keypoint-driven feature muting (TTS).

    Parameters
    ----------
    napari_viewer
        The viewer this dock works on.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        from napari_medadapt.core.adapt.tts_live import TTSWorkspace

        self._workspace = TTSWorkspace(get_worker(self.viewer, self).session)
        self._connected_points: set[Any] = set()  # unique_id of the keypoint layers whose events are connected
        self._volume_cache: tuple[tuple, Any] | None = None
        self._quiet = False  # Reset empties the keypoint layers without re-predicting
        self._generation = 0  # results of jobs submitted before a reset are dropped
        self._handle: Any = None
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
        self.alpha_box = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.alpha_box.setRange(0.0, 1.0)
        self.alpha_box.setDecimals(2)
        self.alpha_box.setSingleStep(0.05)
        self.alpha_box.setValue(0.4)
        self.alpha_box.setToolTip("weight of the positive keypoints; negatives weigh 1 - alpha")
        self.artifact_check = QCheckBox("negatives are artifacts (alpha 0.2)")
        self.keep_box = QSpinBox()
        self.keep_box.setRange(1, 100)
        self.keep_box.setValue(10)
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
        self.live_check = QCheckBox("re-predict the current slice live")
        self.live_check.setChecked(True)
        self.points_button = QPushButton("Add keypoint layers")
        self.slice_button = QPushButton("Predict slice")
        self.apply_button = QPushButton("Apply to volume")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Remove the keypoints and the muting (result layers stay; Ctrl+Z undoes)")
        self.job_panel = JobPanel()
        self.kept_list = QListWidget()
        self.kept_list.setMaximumHeight(120)
        self.status.setText("Add keypoints: positives on the target, negatives on the artifact.")

        form = QFormLayout()
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
        for button in (self.slice_button, self.apply_button, self.reset_button):
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
        self._live_timer.timeout.connect(self.predict_current_slice)

        self.inputs.model_changed.connect(self._workspace_reset)
        self.inputs.inputs_changed.connect(self._workspace_reset)
        self.artifact_check.toggled.connect(self._on_artifact_toggled)
        self.points_button.clicked.connect(self.ensure_points_layers)
        self.slice_button.clicked.connect(self.predict_current_slice)
        self.apply_button.clicked.connect(self.apply_to_volume)
        self.reset_button.clicked.connect(self.reset)
        for widget in (self.alpha_box, self.keep_box):
            widget.valueChanged.connect(self._schedule_live)
        self.layer_box.currentTextChanged.connect(self._schedule_live)
        self.background_check.toggled.connect(self._schedule_live)
        self.viewer.layers.events.inserted.connect(self._connect_points)
        self.viewer.dims.events.current_step.connect(self._schedule_live)
        self._workspace_reset()

    # ------------------------------------------------------------------------------ settings
    def _on_artifact_toggled(self, checked: bool) -> None:
        self.alpha_box.setValue(0.2 if checked else 0.4)

    @property
    def model_name(self) -> str:
        """The card path (or name) of the chosen model; empty when none is chosen."""
        return "" if self.inputs.card is None else self.inputs.model_ref

    @property
    def _modality_boxes(self) -> dict[str, QComboBox]:
        return self.inputs.modality_boxes

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

    def _mapping(self) -> dict[str, Any]:
        """The image layers assigned to the model's inputs, checked to be 3D volumes."""
        if self.inputs.card is None:
            raise MedAdaptError("Choose a segmentation model first (or type a model card path).")
        layers = self.inputs.chosen_layers()
        if not layers:
            raise VolumeError("Assign image layers to the model's inputs (open a case first).")
        for modality, layer in layers.items():
            check_volume_layer(modality, layer)
        return layers

    # ------------------------------------------------------------------------------ keypoints
    def ensure_points_layers(self) -> tuple[Any, Any] | None:
        """The positive and negative Points layers, created on the reference image's grid when absent."""
        try:
            reference = next(iter(self._mapping().values()))
        except MedAdaptError as err:
            self.report(err)
            return None
        layers = []
        for name, style in ((POSITIVE_LAYER, POSITIVE_STYLE), (NEGATIVE_LAYER, NEGATIVE_STYLE)):
            if name not in self.viewer.layers:
                self.viewer.add_points(
                    np.zeros((0, 3)),
                    name=name,
                    ndim=3,
                    scale=tuple(reference.scale)[-3:],
                    translate=tuple(reference.translate)[-3:],
                    metadata=prompt_metadata(geometry=layer_geometry(reference)),
                    **style,
                )
            layers.append(self.viewer.layers[name])
        self.viewer.layers.selection.active = layers[0]
        layers[0].mode = "add"
        self._connect_points()
        return layers[0], layers[1]

    def _connect_points(self, *_: Any) -> None:
        for name in KEYPOINT_LAYERS:
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                if layer.unique_id not in self._connected_points:
                    layer.events.data.connect(self._schedule_live)
                    self._connected_points.add(layer.unique_id)

    def keypoints(self, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative keypoints as voxel indices ``(N, 3)`` of ``reference``'s volume."""
        return tuple(self._points_in(name, reference) for name in KEYPOINT_LAYERS)  # type: ignore[return-value]

    def _points_in(self, name: str, reference: Any) -> np.ndarray:
        if name not in self.viewer.layers:
            return np.zeros((0, 3))
        layer = self.viewer.layers[name]
        data = np.asarray(layer.data, dtype=np.float64)
        if len(data) == 0:
            return np.zeros((0, 3))
        if data.shape[1] != 3:
            raise VolumeError(
                f"Points layer {name!r} is {data.shape[1]}D; keypoints must be 3D (z, y, x) points on the "
                f"volume. Delete it and use 'Add keypoint layers'."
            )
        geometry = (layer.metadata.get("medadapt") or {}).get("geometry")
        image_geometry = layer_geometry(reference)
        if geometry is not None and image_geometry is not None and not geometry.matches(image_geometry):
            raise VolumeError(
                f"Points layer {name!r} was made for another volume ({geometry.describe()}) than "
                f"{reference.name!r} ({image_geometry.describe()}); press Reset and add keypoints again."
            )
        voxels = np.array([reference.world_to_data(layer.data_to_world(point)) for point in data]).reshape(-1, 3)
        shape = np.asarray(reference.data.shape[-3:])
        outside = np.any((np.rint(voxels) < 0) | (np.rint(voxels) >= shape), axis=1)
        if outside.any():
            number = int(np.argmax(outside))
            raise VolumeError(
                f"Keypoint #{number + 1} of {name!r} (z, y, x = {', '.join(f'{v:.0f}' for v in voxels[number])}) "
                f"lies outside image {reference.name!r} of shape {tuple(int(s) for s in shape)}. Select it on the "
                "layer and press Delete (or press Reset to start over)."
            )
        return voxels

    def current_slice(self, reference: Any) -> int:
        """Index of the displayed axial slice in ``reference``'s voxels."""
        z = int(np.rint(reference.world_to_data(np.asarray(self.viewer.dims.point)[-3:])[-3]))
        return int(np.clip(z, 0, reference.data.shape[-3] - 1))

    # ------------------------------------------------------------------------------ compute
    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _schedule_live(self, *args: Any) -> None:
        if self._quiet or not self.live_check.isChecked():
            return
        if any(n in self.viewer.layers and len(self.viewer.layers[n].data) for n in KEYPOINT_LAYERS):
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

    def _submit(self, fn: Any, *args: Any, description: str, on_result: Any, interactive: bool) -> Any:
        """Run a job; its result is shown only if nothing reset the dock meanwhile. Live slice jobs follow
        "latest wins"; Apply is never replaced by a later slice update."""
        generation = self._generation
        self._handle = get_worker(self.viewer, self).submit(
            fn, *args, description=description, interactive_key="tts-slice" if interactive else None,
            on_result=lambda result: on_result(result) if generation == self._generation else None,
            on_error=lambda err: self._set_status(str(err)) if generation == self._generation else None,
        )
        return self.job_panel.track(self._handle)

    def predict_current_slice(self, *args: Any) -> Any:
        """Re-predict the displayed slice with the current keypoints (live path); returns the job handle."""
        try:
            layers, reference, volume, positives, negatives = self._inputs()
        except MedAdaptError as err:
            self._set_status(str(err))
            return None
        z = self.current_slice(reference)
        on_slice = int((np.rint(positives[:, 0]) == z).sum() + (np.rint(negatives[:, 0]) == z).sum())
        if on_slice == 0 and (self.last_result is None or z not in self.last_result.selections):
            self._show_selection(None)  # nothing to mute or to un-mute here: no job
            self._set_status(f"slice {z}: no keypoints, not muted.")
            return None
        self._set_status(f"slice {z}: re-predicting with {on_slice} keypoint(s)...")
        return self._submit(
            self._workspace.predict_slice, self.model_name, self._layers_key(layers), volume, self.tap, z,
            positives, negatives, self.alpha, self.keep_fraction, self.background_check.isChecked(),
            description="TTS slice", interactive=True, on_result=lambda result: self._show(result, reference, z),
        )

    def apply_to_volume(self, *args: Any) -> Any:
        """Mute every slice with keypoints (or the whole volume with one mask); returns the job handle."""
        try:
            layers, reference, volume, positives, negatives = self._inputs()
        except MedAdaptError as err:
            self.report(err)
            return None
        if len(positives) + len(negatives) == 0:
            self.report(MedAdaptError("Place keypoints first: positives on the target, negatives on the artifact."))
            return None
        self._set_status("TTS on the volume...")
        return self._submit(
            self._workspace.apply, self.model_name, self._layers_key(layers), volume, self.tap, positives,
            negatives, self.alpha, self.keep_fraction, self.background_check.isChecked(),
            self.per_slice_check.isChecked(), description="TTS volume", interactive=False,
            on_result=lambda result: self._show(result, reference, None),
        )

    def _workspace_reset(self, *args: Any) -> None:
        """Forget the muting: a running job's result is dropped, the cached features are freed."""
        self._generation += 1
        self._volume_cache = None
        self.last_result = None
        if self._handle is not None and not self._handle.done:
            self._handle.cancel()
        get_worker(self.viewer, self).submit(self._workspace.reset, description="TTS reset")

    def reset(self, *args: Any) -> None:
        """Clear keypoints, kept channels and the muting (result layers stay; undo still works)."""
        self._quiet = True
        try:
            for name in KEYPOINT_LAYERS:
                if name in self.viewer.layers:
                    self.viewer.layers[name].data = np.zeros((0, 3))
        finally:
            self._quiet = False
        self._live_timer.stop()
        self.kept_list.clear()
        self._workspace_reset()
        self._set_status("Reset: keypoints and muting removed. Add keypoints again.")

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
        kwargs["translate"] = tuple(reference.translate)[-3:]
        return self.viewer.add_labels(np.zeros(reference.data.shape[-3:], dtype=np.uint8), **kwargs)

    def _attention_layer(self, name: str, reference: Any) -> Any:
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        return self.viewer.add_image(
            np.zeros(reference.data.shape[-3:], dtype=np.float32),
            name=name,
            scale=tuple(reference.scale)[-3:],
            translate=tuple(reference.translate)[-3:],
            colormap="inferno",
            blending="additive",
            opacity=0.5,
            visible=name == ATTENTION_AFTER_LAYER,
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

    def _show(self, result: LiveTTSResult, reference: Any, z: int | None) -> None:
        """Paste a result: both label layers (only changed voxels, undoable), attention of the computed
        slices, the kept channels of the displayed slice, and what changed."""
        self.last_result = result
        active = self.viewer.layers.selection.active  # adding result layers must not end keypoint placing
        for name, labels in ((BEFORE_LAYER, result.before), (AFTER_LAYER, result.after)):
            set_labels_undoable(self._labels_layer(name, reference), labels.astype(np.uint8))
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
        shown = self.current_slice(reference) if z is None else z
        self._show_selection(result.selections.get(shown))
        on_slice = int(np.count_nonzero(result.after[shown] != result.before[shown]))
        muted = ", ".join(str(s) for s in sorted(result.selections)[:12]) or "none"
        self._set_status(
            f"slice {shown}: {on_slice} voxel(s) changed by muting; volume: {result.changed} voxel(s) changed, "
            f"muted slices: {muted}." + "".join(" " + w for w in dict.fromkeys(result.warnings))
        )
