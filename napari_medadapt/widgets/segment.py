"""Segment dock: run a segmentation model on the open image layers.

Pick a model (bundled/registered, or a card/weight file), check which image layer feeds each of its inputs
(auto-matched by layer name, editable; "none" for optional inputs), choose the output (a new Labels layer,
or replace an existing one as one undoable step) and run. The job runs in the viewer's compute worker with
a progress bar; Cancel stops it. The result shows per-class volumes in mL and, optionally, the model's
confidence (maximum class probability) as an Image layer. All computing is in ``napari_medadapt.core``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.models import ModelCard, list_models

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.inference import Prediction
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.volume import Volume

NONE_CHOICE = "none"
NEW_LAYER_CHOICE = "new Labels layer"
CONFIDENCE_LAYER = "confidence"


def segment_job(card_path: str, volume: Volume, cache: dict[str, Any], *, ctx: JobContext) -> Prediction:
    """Load the model of ``card_path`` (cached per path) and segment ``volume`` (runs in the compute thread)."""
    from napari_medadapt.core.inference import predict_volume
    from napari_medadapt.core.models import load_model

    model = cache.get(card_path)
    if model is None:
        ctx.progress(0, 1, "loading the model")
        model = load_model(card_path)
        cache.clear()
        cache[card_path] = model
    return predict_volume(model, volume, ctx=ctx, return_probabilities=False)


class SegmentWidget(QWidget):
    """Dock widget: model choice, modality mapping, run/cancel, labels output, volume table."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._cards: list[ModelCard] = []
        self._modality_boxes: dict[str, QComboBox] = {}
        self._model_cache: dict[str, Any] = {}
        self._handle = None
        self.last_prediction: Prediction | None = None

        layout = QVBoxLayout(self)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Segmentation model (bundled or added from a file)")
        self.load_button = QPushButton("Load from file...")
        self.load_button.setToolTip("Add a model: its .json card, or a .safetensors/.pt file with the card beside it")
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        layout.addLayout(model_row)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        layout.addWidget(self.model_info)

        self.inputs_box = QGroupBox("Model inputs")
        self.inputs_form = QFormLayout(self.inputs_box)
        layout.addWidget(self.inputs_box)

        output_form = QFormLayout()
        self.output_combo = QComboBox()
        self.output_combo.setToolTip("Write into a new Labels layer or replace an existing one (undoable)")
        output_form.addRow("Output", self.output_combo)
        self.confidence_check = QCheckBox("Show model confidence")
        self.confidence_check.setToolTip("Add the highest class probability per voxel as an Image layer")
        output_form.addRow(self.confidence_check)
        layout.addLayout(output_form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.volume_table = QTableWidget(0, 3)
        self.volume_table.setHorizontalHeaderLabels(["Label", "Class", "Volume (mL)"])
        self.volume_table.verticalHeader().setVisible(False)
        layout.addWidget(self.volume_table)
        layout.addStretch(1)

        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.load_button.clicked.connect(self._choose_model_file)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.changed.connect(self._refresh_layers)

        self.refresh_models()

    # ------------------------------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Fill the model list from the registry (keeps models added from files)."""
        added = [c for c in self._cards if c.path and c.name not in {m.name for m in list_models()}]
        try:
            registered = list_models()
        except MedAdaptError as err:
            show_error(str(err))
            registered = []
        self._set_cards(registered + added)

    def _set_cards(self, cards: list[ModelCard], select: int | None = None) -> None:
        self._cards = cards
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for card in cards:
            self.model_combo.addItem(card.name, card.path)
        self.model_combo.blockSignals(False)
        if cards:
            self.model_combo.setCurrentIndex(select if select is not None else 0)
        self._on_model_changed()

    def add_model_file(self, path: str | Path) -> ModelCard:
        """Add a model from a card (.json) or weight file (.safetensors/.pt/.pth with its card) and select it."""
        path = Path(path)
        card_path = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
        card = ModelCard.load(card_path)
        cards = [c for c in self._cards if c.path != card.path]
        self._set_cards([*cards, card], select=len(cards))
        return card

    def _choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a segmentation model", "", "Model card or weights (*.json *.safetensors *.pt *.pth)"
        )
        if path:
            try:
                self.add_model_file(path)
            except MedAdaptError as err:
                show_error(str(err))

    @property
    def card(self) -> ModelCard | None:
        """Card of the selected model."""
        index = self.model_combo.currentIndex()
        return self._cards[index] if 0 <= index < len(self._cards) else None

    def _on_model_changed(self, *_: Any) -> None:
        card = self.card
        while self.inputs_form.rowCount():
            self.inputs_form.removeRow(0)
        self._modality_boxes = {}
        if card is None:
            self.model_info.setText("No model found. Load one from a file.")
            self.run_button.setEnabled(False)
            return
        self.run_button.setEnabled(True)
        classes = ", ".join(f"{i} {n}" for i, n in zip(card.labels, card.class_names, strict=True))
        self.model_info.setText(f"{card.description or card.name} Classes: {classes}.")
        optional = set(card.optional_modalities)
        for modality in card.modalities:
            box = QComboBox()
            box.setToolTip(f"Image layer for the model's {modality.upper()} input")
            label = f"{modality.upper()}{' (optional)' if modality in optional else ''}"
            self.inputs_form.addRow(label, box)
            self._modality_boxes[modality] = box
        self._refresh_layers()

    # ------------------------------------------------------------------------------------------ layers
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        from napari_medadapt.widgets._layers import image_layers_by_modality

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        matched = image_layers_by_modality(self.viewer)
        for modality, box in self._modality_boxes.items():
            previous = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems([NONE_CHOICE, *images])
            if previous in images:
                box.setCurrentText(previous)
            elif modality in matched:
                box.setCurrentText(matched[modality].name)
            box.blockSignals(False)
        previous = self.output_combo.currentText()
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.output_combo.clear()
        self.output_combo.addItems([NEW_LAYER_CHOICE, *labels])
        if previous in labels:
            self.output_combo.setCurrentText(previous)

    def set_input(self, modality: str, layer_name: str) -> None:
        """Assign an image layer (or ``"none"``) to one of the model's inputs."""
        box = self._modality_boxes[modality]
        if box.findText(layer_name) < 0:
            raise MedAdaptError(f"there is no image layer called {layer_name!r}.")
        box.setCurrentText(layer_name)

    def input_mapping(self) -> dict[str, str | None]:
        """Model modality -> chosen image layer name (``None`` for "none")."""
        return {m: (None if b.currentText() == NONE_CHOICE else b.currentText()) for m, b in self._modality_boxes.items()}

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> None:
        """Check the inputs and start the segmentation in the compute worker."""
        from napari_medadapt._worker import get_worker
        from napari_medadapt.widgets._layers import volume_from_layers

        card = self.card
        if card is None or self._handle is not None:
            return
        chosen = {m: self.viewer.layers[name] for m, name in self.input_mapping().items() if name is not None}
        try:
            card.check_modalities(chosen)
            volume = volume_from_layers(chosen, list(chosen))
        except MedAdaptError as err:
            show_error(str(err))
            self.status.setText(str(err))
            return
        target = self.output_combo.currentText()
        self.status.setText(f"Segmenting with {card.name}...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._handle = get_worker(self.viewer).submit(
            segment_job,
            card.path,
            volume,
            self._model_cache,
            description=f"Segment ({card.name})",
            on_result=lambda prediction: self._show_result(prediction, target, card),
            on_error=lambda err: self.status.setText(str(err)),
        )
        self._handle.finished.connect(self._job_finished)

    def cancel(self) -> None:
        """Cancel the running segmentation (nothing is written)."""
        if self._handle is not None:
            self._handle.cancel()

    def _job_finished(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and handle.cancelled:
            self.status.setText("Cancelled; no labels were changed.")
        self.run_button.setEnabled(self.card is not None)
        self.cancel_button.setEnabled(False)

    def _show_result(self, prediction: Prediction, target: str, card: ModelCard) -> None:
        from napari_medadapt.widgets._layers import labels_layer_kwargs, set_labels_undoable

        self.last_prediction = prediction
        if target != NEW_LAYER_CHOICE and target in self.viewer.layers:
            try:
                changed = set_labels_undoable(self.viewer.layers[target], prediction.labels)
            except MedAdaptError as err:
                show_error(f"{err} The labels were not written; choose '{NEW_LAYER_CHOICE}'.")
                return
            show_info(f"{target}: {changed} voxels changed (Ctrl+Z to undo).")
        else:
            kwargs = labels_layer_kwargs(prediction.geometry, name=f"{card.name} labels")
            self.viewer.add_labels(prediction.labels, opacity=0.6, **kwargs)
        if self.confidence_check.isChecked():
            if CONFIDENCE_LAYER in self.viewer.layers:
                self.viewer.layers.remove(CONFIDENCE_LAYER)
            self.viewer.add_image(
                prediction.confidence,
                name=CONFIDENCE_LAYER,
                scale=prediction.geometry.spacing,
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                opacity=0.5,
                blending="additive",
            )
        self.volume_table.setRowCount(0)
        for label_id, name, ml in prediction.volume_rows():
            row = self.volume_table.rowCount()
            self.volume_table.insertRow(row)
            for column, text in enumerate((str(label_id), name, f"{ml:.2f}")):
                self.volume_table.setItem(row, column, QTableWidgetItem(text))
        notes = " ".join(prediction.notes)
        self.status.setText(f"Done.{' ' + notes if notes else ''}")
