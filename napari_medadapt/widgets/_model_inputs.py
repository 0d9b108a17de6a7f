"""Model choice and modality mapping shared by the docks that run a segmentation model.

:class:`ModelInputsPanel` holds the model combobox (filled from the registry, optionally "Load from file..."
or a typed name/path), the model's description and one combobox per model input, auto-matched to the open
image layers by name and refreshed when layers come and go. :class:`VolumeTable` shows per-class volumes;
models are loaded and cached by the viewer's :class:`~napari_medadapt.core.session.ModelSession`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
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

    from napari_medadapt.core.volume import Volume

NONE_CHOICE = "none"
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".pt", ".pth")


class VolumeTable(QTableWidget):
    """Per-class volume table: a colour swatch as in the labels layer, label id, class name, one or more
    volume columns, then the card's named regions (e.g. whole tumour) as totals."""

    def __init__(self, volume_headers: Sequence[str]) -> None:
        super().__init__(0, 2 + len(volume_headers))
        self.setHorizontalHeaderLabels(["Label", "Class", *volume_headers])
        self.verticalHeader().setVisible(False)

    def show_volumes(
        self,
        rows: Sequence[tuple[int, str, Sequence[float]]],
        regions: Mapping[str, Sequence[float]] | None = None,
        color_of: Callable[[int], Any] | None = None,
    ) -> None:
        """Replace the content: ``(label id, class name, volumes in mL)`` rows, each with the colour
        ``color_of(label id)`` (RGBA in 0..1, e.g. a Labels layer's ``get_color``), then region totals."""
        self.setRowCount(0)
        for label_id, name, volumes in rows:
            first = QTableWidgetItem(str(label_id))
            if color_of is not None:
                rgba = np.asarray(color_of(label_id), dtype=float).ravel()
                if rgba.size >= 3:
                    swatch = QPixmap(12, 12)
                    swatch.fill(QColor.fromRgbF(*(float(v) for v in rgba[:3])))
                    first.setIcon(QIcon(swatch))
            self._add_row([first, QTableWidgetItem(name), *(QTableWidgetItem(f"{v:.2f}") for v in volumes)])
        for region, volumes in (regions or {}).items():
            title = QTableWidgetItem(region)
            font = title.font()
            font.setBold(True)
            title.setFont(font)
            self._add_row([QTableWidgetItem(""), title, *(QTableWidgetItem(f"{v:.2f}") for v in volumes)])
        self.resizeColumnsToContents()

    def _add_row(self, items: Sequence[QTableWidgetItem]) -> None:
        row = self.rowCount()
        self.insertRow(row)
        for column, item in enumerate(items):
            self.setItem(row, column, item)


class ModelInputsPanel(QWidget):
    """Model combobox, model description and the image layer chosen for each model input.

    Parameters
    ----------
    viewer
        The viewer whose image layers feed the model.
    tooltip
        Tooltip of the model combobox.
    allow_files
        Show a "Load from file..." button (model card or weight file).
    editable
        Let the user type a registered model name or a model file path into the combobox.
    default_model
        Name of the model selected first when it is registered.
    skip_prefix
        Image layers whose name starts with this prefix are not offered as inputs (result layers).
    include_tags
        Also list models with these card tags (``"demonstration"``: the TTS dock's trap model).
    """

    model_changed = Signal()
    inputs_changed = Signal()

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        tooltip: str = "Segmentation model (bundled or added from a file)",
        allow_files: bool = True,
        editable: bool = False,
        default_model: str | None = None,
        skip_prefix: str = "",
        include_tags: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self._include_tags = tuple(include_tags)
        self._allow_files = allow_files
        self._skip_prefix = skip_prefix
        self._cards: list[ModelCard] = []
        self.modality_boxes: dict[str, QComboBox] = {}
        self._user_choices: set[str] = set()  # inputs the user chose; the others follow the layers' names

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(editable)
        self.model_combo.setToolTip(tooltip)
        model_row.addWidget(self.model_combo, 1)
        self.load_button = QPushButton("Load from file...")
        self.load_button.setToolTip("Add a model: its .json card, or a .safetensors/.pt file with the card beside it")
        self.load_button.setVisible(allow_files)
        model_row.addWidget(self.load_button)
        layout.addLayout(model_row)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        layout.addWidget(self.model_info)
        self.inputs_box = QGroupBox("Model inputs")
        self.inputs_form = QFormLayout(self.inputs_box)
        layout.addWidget(self.inputs_box)
        self.input_note = QLabel()  # e.g. which of two FLAIR layers (a file opened twice) is used
        self.input_note.setWordWrap(True)
        self.input_note.setVisible(False)
        layout.addWidget(self.input_note)
        self.input_warning = QLabel()  # e.g. a raw scan given to a model trained on skull-stripped ones
        self.input_warning.setWordWrap(True)
        self.input_warning.setStyleSheet("color: #f0a030;")
        self.input_warning.setVisible(False)
        layout.addWidget(self.input_warning)
        self._strip_checks: dict[tuple, str | None] = {}  # (layer id, data id, model) -> warning or None
        self.inputs_changed.connect(self._check_inputs)

        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        if editable:
            self.model_combo.currentTextChanged.connect(self._on_text_typed)
        self.load_button.clicked.connect(self._choose_model_file)
        from napari_medadapt._worker import get_worker

        get_worker(viewer, self).models_changed.connect(self._on_models_changed)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.changed):
            event.connect(self.refresh_layers)
        self.refresh_models(default_model)

    # ------------------------------------------------------------------------------------------ models
    def refresh_models(self, select: str | None = None) -> None:
        """Fill the model list from the registry (keeps models added from files); select ``select`` if listed."""
        from napari_medadapt._worker import get_worker

        try:
            registered = list_models(include_tags=self._include_tags)
        except MedAdaptError as err:
            show_error(str(err))
            registered = []
        names = {card.name for card in registered}
        added = [card for card in self._cards if card.path and card.name not in names]
        variants = list(get_worker(self.viewer, self).variant_cards.values())  # adapted in this viewer
        cards = registered + added + variants
        index = next((i for i, card in enumerate(cards) if card.name == select), None)
        self._set_cards(cards, select=index)

    def _set_cards(self, cards: list[ModelCard], select: int | None = None) -> None:
        previous = self.card
        self._cards = cards
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for card in cards:
            self.model_combo.addItem(card.name, card.path)
        if cards:
            self.model_combo.setCurrentIndex(select if select is not None else 0)
        self.model_combo.blockSignals(False)
        chosen = self.card
        if previous is None or chosen is None or (previous.name, previous.path) != (chosen.name, chosen.path):
            self._on_model_changed()  # the same model still chosen: its input choices and the dock's results stay

    def add_model_file(self, path: str | Path) -> ModelCard:
        """Add a model from a card (.json) or weight file (.safetensors/.pt/.pth with its card) and select it."""
        path = Path(path)
        card_path = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
        return self._add_card(ModelCard.load(card_path))

    def _add_card(self, card: ModelCard) -> ModelCard:
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

    def _on_text_typed(self, text: str) -> None:
        """Editable combobox: resolve a typed model file path or registered name."""
        from napari_medadapt.core.models import find_card

        text = text.strip()
        if self.model_combo.findText(text) >= 0:
            return
        try:
            if Path(text).suffix.lower() in MODEL_FILE_SUFFIXES:
                self.add_model_file(text)
            else:
                self._add_card(ModelCard.load(find_card(text)))
        except MedAdaptError as err:
            self._on_model_changed()
            self.model_info.setText(f"model: {err}")

    def _on_models_changed(self) -> None:
        card = self.card
        self.refresh_models(card.name if card is not None else None)

    @property
    def model_ref(self) -> str:
        """What the session knows the chosen model by: its card path, or a session variant's name."""
        card = self.card
        if card is None:
            raise MedAdaptError("Choose a segmentation model first.")
        return card.path or card.name

    @property
    def card(self) -> ModelCard | None:
        """Card of the selected model (``None`` when none is selected or the typed text names no model)."""
        index = self.model_combo.currentIndex()
        if not 0 <= index < len(self._cards):
            return None
        if self.model_combo.isEditable() and self.model_combo.currentText().strip() != self.model_combo.itemText(index):
            return None
        return self._cards[index]

    def _on_model_changed(self, *_: Any) -> None:
        card = self.card
        while self.inputs_form.rowCount():
            self.inputs_form.removeRow(0)
        self.modality_boxes = {}
        self._user_choices = set()
        if card is None:
            self.model_info.setText(
                "No model found. Load one from a file."
                if self._allow_files
                else "No model found. Add one in the Segment dock or to MEDADAPT_MODEL_PATH."
            )
        else:
            classes = ", ".join(f"{i} {n}" for i, n in zip(card.labels, card.class_names, strict=True))
            self.model_info.setText(f"{card.description or card.name} Classes: {classes}.")
            optional = set(card.optional_modalities)
            for modality in card.modalities:
                box = QComboBox()
                box.setToolTip(f"Image layer for the model's {modality.upper()} input")
                box.currentTextChanged.connect(self.inputs_changed)
                box.activated.connect(lambda _index, m=modality: self._user_choices.add(m))
                self.inputs_form.addRow(f"{modality.upper()}{' (optional)' if modality in optional else ''}", box)
                self.modality_boxes[modality] = box
            self.refresh_layers()
        self._check_inputs()
        self.model_changed.emit()

    # ------------------------------------------------------------------------------------------ layers
    def refresh_layers(self, *_: Any) -> None:
        """Offer the current image layers that are scans (never a result a dock computed, see
        :func:`~napari_medadapt.widgets._layers.is_result_layer`); keep the user's choices, else match layers by
        modality (the newest layer of a modality wins, e.g. "flair prepared" over "flair"); say which layer is
        used when several have the same modality."""
        from napari.layers import Image

        from napari_medadapt.widgets._layers import image_layers_by_modality, is_result_layer, layer_modality

        offered = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and not is_result_layer(layer)
            and not (self._skip_prefix and layer.name.startswith(self._skip_prefix))
        ]
        images = [layer.name for layer in offered]
        matched = image_layers_by_modality(self.viewer)
        notes = []
        for modality, box in self.modality_boxes.items():
            previous = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems([NONE_CHOICE, *images])
            auto = matched[modality].name if modality in matched and matched[modality].name in images else None
            if previous in images and (modality in self._user_choices or auto is None):
                box.setCurrentText(previous)
            elif auto is not None:
                box.setCurrentText(auto)
            box.blockSignals(False)
            if previous != box.currentText():
                self.inputs_changed.emit()
            same = [layer.name for layer in offered if layer_modality(layer) == modality]
            if len(same) > 1 and box.currentText() in same:
                notes.append(
                    f"{len(same)} layers are {modality.upper()} ({', '.join(same)}): '{box.currentText()}' is "
                    "used; choose another in the list."
                )
        self.input_note.setText(" ".join(notes))
        self.input_note.setVisible(bool(notes))
        self._check_inputs()

    def _check_inputs(self, *_: Any) -> None:
        """Warn, before anything runs, when the model was trained on skull-stripped scans and an input is not."""
        from napari_medadapt.core.preprocess.brain import unstripped_note

        card, text = self.card, None
        if card is not None and card.skull_stripped:
            for modality, layer in self.chosen_layers().items():
                data = np.asarray(layer.data)
                if data.ndim != 3:
                    continue
                key = (layer.unique_id, id(layer.data), card.name)
                if key not in self._strip_checks:
                    self._strip_checks[key] = unstripped_note(card.name, f"{modality.upper()} ({layer.name})", data,
                                                              tuple(layer.scale)[-3:])  # fmt: skip
                text = self._strip_checks[key]
                break  # one sequence tells: they come from one scanner export
        self.input_warning.setText(text or "")
        self.input_warning.setVisible(bool(text))

    def set_input(self, modality: str, layer_name: str) -> None:
        """Assign an image layer (or ``"none"``) to one of the model's inputs."""
        box = self.modality_boxes[modality]
        if box.findText(layer_name) < 0:
            raise MedAdaptError(f"there is no image layer called {layer_name!r}.")
        self._user_choices.add(modality)
        box.setCurrentText(layer_name)

    def input_mapping(self) -> dict[str, str | None]:
        """Model modality -> chosen image layer name (``None`` for "none")."""
        return {m: (None if b.currentText() == NONE_CHOICE else b.currentText()) for m, b in self.modality_boxes.items()}

    def chosen_layers(self) -> dict[str, Any]:
        """Model modality -> chosen image layer, for the inputs that have one."""
        return {
            modality: self.viewer.layers[name]
            for modality, name in self.input_mapping().items()
            if name is not None and name in self.viewer.layers
        }

    def volume(self) -> Volume:
        """The selected model's input volume from the chosen layers.

        Raises
        ------
        MedAdaptError
            When no model is selected, a required input has no layer, or the layers do not form one volume.
        """
        from napari_medadapt.widgets._layers import volume_from_layers

        card = self.card
        if card is None:
            raise MedAdaptError("Choose a segmentation model first.")
        chosen = self.chosen_layers()
        card.check_modalities(chosen)
        return volume_from_layers(chosen, list(chosen))
