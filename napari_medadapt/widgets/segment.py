"""Segment dock: run a segmentation model on the open image layers.

Pick a model (bundled/registered, or a card/weight file), check which image layer feeds each of its inputs
(auto-matched by layer name, editable; "none" for optional inputs), choose the output (a new Labels layer, a
result of ours, or - picked explicitly as "replace: NAME" - any other Labels layer, as one undoable step) and
run. A new run replaces the dock's previous result of the same model (undoable) unless "keep earlier results"
is on. The job runs in the viewer's compute worker with
a progress bar; Cancel stops it. The result shows per-class volumes in mL and, optionally, the model's
confidence (maximum class probability) as an Image layer. All computing is in ``napari_medadapt.core``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QPushButton

from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.widgets._dock import JobDock, keep_results_checkbox
from napari_medadapt.widgets._layers import provenance_draft, target_choices, target_layer_name
from napari_medadapt.widgets._model_inputs import ModelInputsPanel, VolumeTable

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.inference import Prediction
    from napari_medadapt.core.models import ModelCard

NEW_LAYER_CHOICE = "new Labels layer"
CONFIDENCE_LAYER = "confidence"


class SegmentWidget(JobDock):
    """Dock widget: model choice, modality mapping, run/cancel, labels output, volume table."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.cancelled_text = "Cancelled; no labels were changed."
        self.last_prediction: Prediction | None = None

        layout = self.layout_
        output_form = QFormLayout()
        self.output_combo = QComboBox()
        self.output_combo.setToolTip(
            "Write into a new Labels layer, a result of the docks, or (\"replace: ...\") any other Labels layer; "
            "writing into a layer is one undoable step"
        )
        output_form.addRow("Output", self.output_combo)
        self.keep_check = keep_results_checkbox()
        output_form.addRow(self.keep_check)
        self.confidence_check = QCheckBox("Show model confidence")
        self.confidence_check.setToolTip("Add the highest class probability per voxel as an Image layer")
        output_form.addRow(self.confidence_check)
        self.largest_check = QCheckBox("Keep the largest connected region only")
        self.largest_check.setToolTip(
            "Remove islands outside the largest connected foreground region (set by the model card; "
            "switch off for multifocal disease)"
        )
        output_form.addRow(self.largest_check)

        self.run_button = QPushButton("Segment")

        self.inputs = ModelInputsPanel(self.viewer)
        self.model_combo = self.inputs.model_combo
        layout.addWidget(self.inputs)
        layout.addLayout(output_form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.status)
        self.volume_table = VolumeTable(["Volume (mL)"])
        layout.addWidget(self.volume_table)
        layout.addStretch(1)

        self.inputs.model_changed.connect(self._on_model_changed)
        self.run_button.clicked.connect(self.run)
        for event in (
            self.viewer.layers.events.inserted,
            self.viewer.layers.events.removed,
            self.viewer.layers.events.changed,
        ):
            event.connect(self._refresh_outputs)
        self._on_model_changed()
        self._refresh_outputs()

    # ------------------------------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Fill the model list from the registry (keeps models added from files)."""
        self.inputs.refresh_models()

    def add_model_file(self, path: str | Path) -> ModelCard:
        """Add a model from a card (.json) or weight file (.safetensors/.pt/.pth with its card) and select it."""
        return self.inputs.add_model_file(path)

    @property
    def card(self) -> ModelCard | None:
        """Card of the selected model."""
        return self.inputs.card

    def _on_model_changed(self) -> None:
        card = self.card
        self.run_button.setEnabled(card is not None)
        self.largest_check.setChecked(bool(card is not None and card.postprocess.get("largest_component", False)))

    # ------------------------------------------------------------------------------------------ layers
    def _refresh_outputs(self, *_: Any) -> None:
        previous = self.output_combo.currentText()
        choices = target_choices(self.viewer, NEW_LAYER_CHOICE)
        self.output_combo.blockSignals(True)
        self.output_combo.clear()
        self.output_combo.addItems(choices)
        if previous in choices:
            self.output_combo.setCurrentText(previous)
        self.output_combo.blockSignals(False)

    def set_input(self, modality: str, layer_name: str) -> None:
        """Assign an image layer (or ``"none"``) to one of the model's inputs."""
        self.inputs.set_input(modality, layer_name)

    def input_mapping(self) -> dict[str, str | None]:
        """Model modality -> chosen image layer name (``None`` for "none")."""
        return self.inputs.input_mapping()

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> None:
        """Check the inputs and start the segmentation in the compute worker."""
        card = self.card
        if card is None or self.busy:
            return
        try:
            volume = self.inputs.volume()
        except MedAdaptError as err:
            self.report(err)
            return
        target = target_layer_name(self.output_combo.currentText())
        like = next(iter(self.inputs.chosen_layers().values()), None)  # the result lies on the inputs' voxels
        self.status.setText(f"Segmenting with {card.name}...")
        draft = provenance_draft(
            "segment", volume, {"name": card.name, "sha256": card.weights_sha256, "card": card.path},
            {"largest_component": self.largest_check.isChecked()}, self.worker.session.device,
        )
        self.run_job(
            self.worker.session.segment, self.inputs.model_ref, volume,
            largest_component=self.largest_check.isChecked(), description=f"Segment ({card.name})",
            on_result=lambda prediction: self._show_result(prediction, target, card, draft, like),
            disable=(self.run_button,), input_layers=list(self.inputs.chosen_layers().values()),
        )

    def job_finished(self) -> None:
        """The segmentation ended: Segment is available again when a model is chosen."""
        self.run_button.setEnabled(self.card is not None)

    def _show_result(
        self, prediction: Prediction, target: str, card: ModelCard, draft: dict[str, Any], like: Any = None
    ) -> None:
        from napari_medadapt.core.metrics import region_volumes_ml
        from napari_medadapt.widgets._layers import (
            class_features,
            class_names_of,
            labels_layer_kwargs,
            mark_result,
            place_result,
            set_labels_undoable,
        )

        self.last_prediction = prediction
        names = class_names_of(card)
        if target != NEW_LAYER_CHOICE and target in self.viewer.layers:
            layer = self.viewer.layers[target]
            try:
                changed = set_labels_undoable(layer, prediction.labels)
            except MedAdaptError as err:
                show_error(f"{err} The labels were not written; choose '{NEW_LAYER_CHOICE}'.")
                return
            if layer.features.shape[1] == 0:  # name the classes, unless the layer names its own
                layer.features = class_features(names)
            layer.metadata = {**layer.metadata, "medadapt": {**layer.metadata.get("medadapt", {}), "provenance": draft}}
            show_info(f"{target}: {changed} voxels changed (Ctrl+Z to undo).")
        else:
            kwargs = labels_layer_kwargs(
                prediction.geometry, name=f"{card.name} labels", class_names=names, provenance=draft
            )
            kwargs["opacity"] = 0.6
            mark_result(kwargs, "segment", card.name, "labels")
            layer = place_result(self.viewer, "labels", prediction.labels, kwargs, self.keep_check.isChecked(), like)
        if self.confidence_check.isChecked():
            options = mark_result(
                {"name": CONFIDENCE_LAYER, "scale": prediction.geometry.spacing, "colormap": "magma",
                 "contrast_limits": (0.0, 1.0), "opacity": 0.5, "blending": "additive"},
                "segment", card.name, "confidence",
            )  # fmt: skip
            place_result(self.viewer, "image", prediction.confidence, options, self.keep_check.isChecked(), like)
        self.volume_table.show_volumes(
            [(label_id, name, [ml]) for label_id, name, ml in prediction.volume_rows()],
            {name: [ml] for name, ml in region_volumes_ml(prediction.volumes_ml, card.regions).items()},
            layer.get_color,
        )
        notes = " ".join(prediction.notes)
        self.status.setText(f"Done.{' ' + notes if notes else ''}")
