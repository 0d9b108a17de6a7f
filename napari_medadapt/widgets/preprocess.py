"""Prepare scans dock: raw brain MRI in, co-registered, brain-only and bias-corrected sequences out.

Tick the image layers of one patient (each may be on its own grid, as a scanner exports them), choose the
reference sequence whose grid the others are brought onto (FLAIR by default), and press Prepare. The chain of
:mod:`napari_medadapt.core.preprocess.chain` runs in the compute worker with progress and Cancel; the result
comes back as new layers, "MODALITY prepared" (on the reference grid, so the Segment, TTA and TTS docks pick
them as their inputs) and "brain mask"; the original layers are hidden, never changed. The table shows what
was done: registration quality per sequence, the brain volume, the bias field, the time per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from napari_medadapt._reader import medadapt_metadata
from napari_medadapt.core.errors import MedAdaptError, VolumeError
from napari_medadapt.widgets._dock import JobDock
from napari_medadapt.widgets._layers import (
    check_volume_layer,
    is_result_layer,
    labels_layer_kwargs,
    layer_geometry,
    layer_modality,
)

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.preprocess.chain import PreparedScans

PREPARED_SUFFIX = " prepared"
MASK_LAYER = "brain mask"
STRIP_LABELS = {"auto": "when not skull-stripped", "on": "always", "off": "off"}
N4_LABELS = {"auto": "when the field is strong", "on": "always", "off": "off"}


class PrepareScansWidget(JobDock):
    """Dock: choose the sequences and the reference, prepare them, show what was done."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.cancelled_text = "Cancelled; no layer was added or changed."
        self.last_result: PreparedScans | None = None
        self._sources: list[str] = []  # the files the last result came from (never written over)
        self.sequence_list = QListWidget()
        self.sequence_list.setToolTip("The image layers of one patient to prepare together")
        self.sequence_list.setMaximumHeight(130)
        self.reference_combo = QComboBox()
        self.reference_combo.setToolTip("The sequence whose grid the others are brought onto (labels go there too)")
        self.strip_combo = QComboBox()
        self.n4_combo = QComboBox()
        for combo, labels in ((self.strip_combo, STRIP_LABELS), (self.n4_combo, N4_LABELS)):
            for key, text in labels.items():
                combo.addItem(text, key)
        self.strip_combo.setToolTip("Brain extraction (deepbet, on the T1) for scans that still show the skull")
        self.n4_combo.setToolTip("Bias-field correction (N4) of uneven coil sensitivity")
        self.run_button = QPushButton("Prepare")
        self.save_button = QPushButton("Save prepared scans...")
        self.save_button.setToolTip("Write the prepared sequences, the brain mask and a JSON record into a folder")
        self.save_button.setEnabled(False)
        self.report_list = QListWidget()
        self.report_list.setWordWrap(True)
        self.report_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.status.setText("Open one patient's sequences (File > Open), tick them and press Prepare.")

        form = QFormLayout()
        form.addRow("sequences", self.sequence_list)
        form.addRow("reference", self.reference_combo)
        form.addRow("brain extraction", self.strip_combo)
        form.addRow("bias field", self.n4_combo)
        layout = self.layout_
        layout.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.save_button)
        layout.addLayout(buttons)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.status)
        layout.addWidget(self.report_list)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.run)
        self.save_button.clicked.connect(self._choose_folder)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    # ------------------------------------------------------------------------------------------ layers
    def refresh_layers(self, *_: Any) -> None:
        """List the image layers (not results of this dock); keep the user's ticks and reference."""
        from napari.layers import Image

        from napari_medadapt.core.preprocess.chain import BRAIN_SEQUENCES, REFERENCE_ORDER

        ticked = {self.sequence_list.item(i).text(): self.sequence_list.item(i).checkState()
                  for i in range(self.sequence_list.count())}  # fmt: skip
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and not layer.name.endswith(PREPARED_SUFFIX)
                 and not is_result_layer(layer)]  # fmt: skip
        by_modality = {layer_modality(self.viewer.layers[n]): n for n in names}
        self.sequence_list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            recognised = layer_modality(self.viewer.layers[name]) in BRAIN_SEQUENCES  # not a result map
            default = Qt.CheckState.Checked if recognised else Qt.CheckState.Unchecked
            item.setCheckState(ticked.get(name, default))
            self.sequence_list.addItem(item)
        previous = self.reference_combo.currentText()
        self.reference_combo.clear()
        self.reference_combo.addItems(names)
        default = next((by_modality[m] for m in REFERENCE_ORDER if m in by_modality), None)
        self.reference_combo.setCurrentText(previous if previous in names else default or (names[0] if names else ""))

    def chosen_layers(self) -> list[Any]:
        """The ticked image layers, checked to be 3D volumes."""
        names = [self.sequence_list.item(i).text() for i in range(self.sequence_list.count())
                 if self.sequence_list.item(i).checkState() == Qt.CheckState.Checked]  # fmt: skip
        missing = [name for name in names if name not in self.viewer.layers]
        if missing:
            self.refresh_layers()
            raise VolumeError(f"Layer {missing[0]!r} was renamed or removed; tick the sequences again.")
        layers = [self.viewer.layers[name] for name in names]
        if not layers:
            raise VolumeError("Tick the sequences to prepare (open one patient's scans first).")
        for layer in layers:
            check_volume_layer(layer.name, layer)
        return layers

    def _sequences(self, layers: list[Any]) -> dict[str, Any]:
        """``{modality: one-channel Volume}`` of the layers, each on its own grid."""
        from napari_medadapt.core.volume import Geometry, Volume

        sequences: dict[str, Any] = {}
        names: dict[str, str] = {}  # modality -> layer name
        for layer in layers:
            modality = layer_modality(layer) or layer.name
            if modality in sequences:
                raise VolumeError(
                    f"Two ticked layers are {modality}: {names[modality]!r} and {layer.name!r}. "
                    "Tick one sequence per modality (one patient at a time)."
                )
            geometry = layer_geometry(layer) or Geometry.from_display_grid(
                layer.data.shape, tuple(layer.scale)[-3:], tuple(layer.translate)[-3:]
            )
            data = np.asarray(layer.data, dtype=np.float32)[None]
            sequences[modality] = Volume(data, geometry, (modality,), (_source_path(layer) or layer.name,))
            names[modality] = layer.name
        return sequences

    # ------------------------------------------------------------------------------------------ run
    def run(self, *_: Any) -> Any:
        """Prepare the ticked sequences in the compute worker; returns the job handle."""
        from napari_medadapt.core.preprocess.chain import prepare_scans

        if self.busy:
            return None
        try:
            layers = self.chosen_layers()
            sequences = self._sequences(layers)
        except MedAdaptError as err:
            self.report(err)
            return None
        if self.reference_combo.currentText() not in self.viewer.layers:
            self.report(VolumeError("Choose the reference sequence (the one whose grid the others are brought onto)."))
            return None
        reference_layer = self.viewer.layers[self.reference_combo.currentText()]
        if reference_layer.name not in [layer.name for layer in layers]:
            self.report(VolumeError(f"Tick the reference sequence {reference_layer.name!r} too."))
            return None
        reference = layer_modality(reference_layer) or reference_layer.name
        self.status.setText(f"Preparing {', '.join(sequences)} on the grid of {reference}...")
        return self.run_job(
            prepare_scans, sequences, reference=reference, strip=self.strip_combo.currentData(),
            n4=self.n4_combo.currentData(), device=self.worker.session.device, description="Prepare scans",
            on_result=lambda prepared: self._show(prepared, layers, reference_layer), disable=(self.run_button,),
            input_layers=layers,
        )

    # ------------------------------------------------------------------------------------------ results
    def _show(self, prepared: PreparedScans, layers: list[Any], reference_layer: Any) -> None:
        from napari_medadapt.core.intensity import percentile_range

        self.last_result = prepared
        for layer in [layer for layer in self.viewer.layers if layer.name.endswith(PREPARED_SUFFIX)]:
            self.viewer.layers.remove(layer)  # an earlier run's result (another reference, other sequences)
        if MASK_LAYER in self.viewer.layers:
            self.viewer.layers.remove(MASK_LAYER)
        grid = {"scale": tuple(reference_layer.scale)[-3:], "translate": tuple(reference_layer.translate)[-3:],
                "affine": reference_layer.affine.affine_matrix}  # a raw sequence is placed in scanner space
        for index, name in enumerate(prepared.volume.channels):
            data = prepared.volume.data[index]
            metadata = medadapt_metadata(prepared.geometry, name, prepared.volume.source_paths[index])
            self.viewer.add_image(data, name=f"{name}{PREPARED_SUFFIX}", colormap="gray", metadata=metadata,
                                  contrast_limits=percentile_range(data, 0.5, 99.5), visible=name == prepared.reference,
                                  **grid)  # fmt: skip
        if prepared.brain_mask is not None:
            kwargs = labels_layer_kwargs(prepared.geometry, name=MASK_LAYER, class_names={0: "background", 1: "brain"})
            kwargs["translate"], kwargs["affine"] = grid["translate"], grid["affine"]
            mask_layer = self.viewer.add_labels(prepared.brain_mask.astype(np.uint8), opacity=0.7, **kwargs)
            mask_layer.contour = 1  # the outline: the scan stays visible
        for layer in layers:
            layer.visible = False
        self._sources = [p for p in (_source_path(layer) for layer in layers) if p]
        self.save_button.setEnabled(True)
        self._report(prepared)

    def _choose_folder(self, *_: Any) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the prepared scans")
        if folder:
            self.save_to(folder)

    def save_to(self, folder: str) -> list[Any]:
        """Write the last result into ``folder`` (never over the scans it came from); the files written."""
        from napari_medadapt.core.preprocess.chain import save_prepared

        if self.last_result is None:
            self.report(MedAdaptError("Prepare the scans first."))
            return []
        try:
            written = save_prepared(self.last_result, folder, inputs=self._sources)
        except MedAdaptError as err:
            self.report(err)
            return []
        self.status.setText(f"Saved {', '.join(p.name for p in written)} in {folder}.")
        return written

    def _report(self, prepared: PreparedScans) -> None:
        self.report_list.clear()
        for record in prepared.registrations:
            self.report_list.addItem(
                f"{record.modality} -> {prepared.reference}: head overlap {record.head_dice:.3f}, NMI {record.nmi:.3f}, "
                f"rotation {max(abs(a) for a in record.rotation_deg):.1f} deg ({record.seconds:.1f} s)"
            )
        for field in prepared.bias:
            self.report_list.addItem(
                f"{field.modality}: bias field spread {field.spread:.2f}{' (removed)' if field.corrected else ''}"
            )
        self.report_list.addItem("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in prepared.seconds.items()))
        sentences = [note[:1].upper() + note[1:] for note in prepared.notes]
        self.status.setText(" ".join(sentences) + " The prepared layers are the other docks' inputs now.")


def _source_path(layer: Any) -> str:
    return str(((layer.metadata or {}).get("medadapt") or {}).get("source_path") or "")
