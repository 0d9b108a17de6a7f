"""Option panels of the SAM dock: commit (target layer, label id, background only) and 3D propagation."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QPushButton, QSpinBox

from napari_medadapt.core.errors import MedAdaptError

NEW_LABELS = "new Labels layer"
NEW_LABELS_NAME = "SAM labels"


def model_items() -> list[tuple[str, str]]:
    """``(menu text, registry name)`` of every registry model, saying which ones need a download first."""
    from napari_medadapt.core.sam import list_checkpoints

    items = []
    for row in list_checkpoints():
        if row["architecture"] == "small" or row["cached"]:
            note = ""
        elif row["url"]:
            note = f" - downloads {row['size_mb']:.0f} MB on first use"
        else:
            note = " - put the file in place first"
        items.append((row["title"] + note, row["name"]))
    return items


class CommitPanel(QGroupBox):
    """Target Labels layer, label id, 'only fill background voxels', and the Commit button."""

    def __init__(self) -> None:
        super().__init__("Commit")
        form = QFormLayout(self)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("Labels layer to write the object into (a new one on the image's grid)")
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
        """Offer these Labels layers (plus a new layer), keeping the current choice when possible."""
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
        from napari_medadapt.widgets._layers import labels_layer_kwargs, layer_geometry

        name = self.target_combo.currentText()
        if self.target_combo.currentIndex() > 0 and name in viewer.layers:
            return viewer.layers[name]
        geometry = layer_geometry(image) or Geometry.from_display_grid(
            image.data.shape, tuple(image.scale), tuple(image.translate)
        )
        kwargs = labels_layer_kwargs(geometry, name=NEW_LABELS_NAME)
        kwargs["translate"] = tuple(image.translate)
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
        self.mode_combo.setToolTip("Prompt each next slice from the previous mask's box, interior points, or box + mask")
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
