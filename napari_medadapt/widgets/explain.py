"""Prototype explanations dock: which training patches a voxel or region resembles, and where each fires.

Choose the model and its inputs, place a point (or pick a label region), Explain: the table lists the top
prototypes (thumbnail of each source patch, class, cosine similarity, share of the class score, source case and
plane); the selected prototypes' heatmaps appear as layers (the current plane at once, the whole volume on
demand: inside the explained region and a margin, which the layer names say, or unrestricted), with a combined
evidence map for a region. "Open source slice" shows the training slice beside the
volume with the patch outlined; "Forget" predicts again with the selected prototypes weighted 0 (nothing
retrained) and shows what changes; "Export report" writes PNG + HTML + NIfTI heatmaps. A model without a bank
gets "Build bank...": k-means of its decoder features over a folder of labelled cases. Computing is in
:mod:`napari_medadapt.core.explain`, in the compute worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from napari_medadapt.core.errors import MedAdaptError, PromptError
from napari_medadapt.core.explain.bank import source_text
from napari_medadapt.core.explain.localisation import FOCUS_MARGIN_MM
from napari_medadapt.core.explain.workspace import TARGETS, ExplainWorkspace, source_image
from napari_medadapt.widgets._dock import JobDock
from napari_medadapt.widgets._keypoints import grid_kwargs, read_points
from napari_medadapt.widgets._layers import mark_result
from napari_medadapt.widgets._model_inputs import ModelInputsPanel
from napari_medadapt.widgets.explain_table import DOCK, PrototypeTable, dock_layers, heat_kwargs
from napari_medadapt.widgets.explain_table import heatmap_layer_name as heatmap_layer_name

if TYPE_CHECKING:
    from napari_medadapt.core.explain.workspace import ExplainResult, ForgetResult, VolumeHeatmaps

POINT_LAYER = "explain point"
EVIDENCE_LAYER = "evidence"
FORGOTTEN_LAYER = "prediction without forgotten prototypes"
CHANGED_LAYER = "changed by forgetting"
UNRESTRICTED = "whole volume, unrestricted"


class ExplainWidget(JobDock):
    """Dock widget: model + inputs, target, Explain, prototype table, heatmaps, source slices, forget, report."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.cancelled_text = "Cancelled; nothing was changed."
        self.result: ExplainResult | None = None
        self.bank = None
        self.bank_path: Path | None = None  # a bank chosen by the user (None: the model's own)
        self._workspace: ExplainWorkspace | None = None

        layout = self.layout_
        self.inputs = ModelInputsPanel(self.viewer)
        self.model_combo = self.inputs.model_combo
        layout.addWidget(self.inputs)
        self.bank_label = QLabel("Prototype bank: choose a model")
        self.bank_label.setWordWrap(True)
        layout.addWidget(self.bank_label)
        bank_row = QHBoxLayout()
        self.build_button = QPushButton("Build bank...")
        self.build_button.setToolTip("Post-hoc prototypes for any model: k-means of its decoder features over a folder of labelled cases")
        self.load_bank_button = QPushButton("Load bank...")
        bank_row.addWidget(self.build_button)
        bank_row.addWidget(self.load_bank_button)
        layout.addLayout(bank_row)

        form = QFormLayout()
        self.target_combo = QComboBox()
        self.target_combo.addItems(TARGETS)
        self.target_combo.setToolTip("Explain the clicked voxel, the predicted region containing it, or a label region")
        form.addRow("Explain", self.target_combo)
        self.point_button = QPushButton("Place point")
        self.point_button.setToolTip(f"Click a voxel in the viewer (layer '{POINT_LAYER}'); the last point is explained")
        form.addRow(self.point_button)
        self.labels_combo = QComboBox()
        form.addRow("Label region", self.labels_combo)
        self.values_edit = QLineEdit()
        self.values_edit.setPlaceholderText("all non-zero, or e.g. 1,2,4")
        form.addRow("Label values", self.values_edit)
        self.topk_spin = QSpinBox()
        self.topk_spin.setRange(1, 20)
        self.topk_spin.setValue(5)
        form.addRow("Top prototypes", self.topk_spin)
        layout.addLayout(form)
        self.explain_button = QPushButton("Explain")
        layout.addWidget(self.explain_button)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.status)

        self.table = PrototypeTable()
        layout.addWidget(self.table)
        self.focus_check = QCheckBox(f"Whole volume: only inside the explained region (+ {FOCUS_MARGIN_MM:g} mm)")
        self.focus_check.setChecked(True)
        self.focus_check.setToolTip(
            "Over the whole volume a prototype also fires on tissue far from the explained object that merely looks "
            "alike; checked, the whole-volume heatmaps are shown inside the region explained (or the predicted "
            "region at the point) and a margin only. Uncheck to see them everywhere."
        )
        layout.addWidget(self.focus_check)
        actions = QGridLayout()
        self.volume_button = QPushButton("Heatmaps: whole volume")
        self.source_button = QPushButton("Open source slice")
        self.forget_button = QPushButton("Forget selected")
        self.restore_button = QPushButton("Restore all")
        self.export_button = QPushButton("Export report...")
        for index, button in enumerate(
            (self.volume_button, self.source_button, self.forget_button, self.restore_button, self.export_button)
        ):
            actions.addWidget(button, index // 2, index % 2)
            button.setEnabled(False)
        layout.addLayout(actions)
        self.similar_label = QLabel("")
        self.similar_label.setWordWrap(True)
        self.similar_label.setToolTip("Training slices whose pooled features are nearest the target's (content-based retrieval)")
        layout.addWidget(self.similar_label)
        layout.addStretch(1)

        self.inputs.model_changed.connect(self._on_model_changed)
        self.point_button.clicked.connect(self.place_point)
        self.explain_button.clicked.connect(self.explain)
        self.table.itemSelectionChanged.connect(self._show_selected)
        self.focus_check.toggled.connect(self._show_focus)
        self.volume_button.clicked.connect(self.volume_heatmaps)
        self.source_button.clicked.connect(self.open_source)
        self.forget_button.clicked.connect(lambda: self.forget(self.selected_ids()))
        self.restore_button.clicked.connect(lambda: self.forget([]))
        self.export_button.clicked.connect(self._choose_report_folder)
        self.build_button.clicked.connect(self._choose_bank_cases)
        self.load_bank_button.clicked.connect(self._choose_bank_file)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_labels)
        self._refresh_labels()
        self._on_model_changed()

    # ------------------------------------------------------------------ model and bank
    @property
    def workspace(self) -> ExplainWorkspace:
        """The dock's explanation workspace on the viewer's model session."""
        if self._workspace is None:
            self._workspace = ExplainWorkspace(self.worker.session)
        return self._workspace

    def _on_model_changed(self) -> None:
        self.forget_jobs()  # an explanation or bank of the previous model must not arrive now
        self.bank, self.bank_path, self.result = None, None, None
        self.table.setRowCount(0)
        self.explain_button.setEnabled(False)
        self._refresh_actions()
        if self.inputs.card is None:
            self.bank_label.setText("Prototype bank: choose a model")
            return
        self.load_bank(None)

    def load_bank(self, path: str | Path | None) -> None:
        """Use the bank at ``path`` (``None``: the model's own, beside its card or in the user cache), checked
        against the chosen model's weights. Read here at once (a card and a small array file; no model is
        loaded); a bank that does not fit leaves the current one in use and the label says why."""
        from napari_medadapt.core.explain.targets import resolve_bank

        card = self.inputs.card
        if card is None:
            return
        try:
            bank = resolve_bank(card, path)
        except MedAdaptError as err:  # no bank for this model, or the chosen one does not fit: say why and how
            self.bank_label.setText(f"Prototype bank: {err}")
            self.explain_button.setEnabled(self.bank is not None)
            return
        self.bank, self.bank_path = bank, None if path is None else Path(path)
        projected = bank.space == "head" and bank.card.get("projection", {}).get("kept", False)
        kind = "projected prototypes of the model's head" if projected else (
            "the model's head prototypes with their nearest training patches" if bank.space == "head" else "post-hoc (k-means of decoder features)"
        )
        self.bank_label.setText(f"Prototype bank: {bank.card['name']} - {len(bank)} prototypes, {kind}.")
        self.explain_button.setEnabled(True)
        self.status.setText("")

    def job_finished(self) -> None:
        """A job ended: the result's buttons follow."""
        self._refresh_actions()

    def _choose_bank_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Prototype bank", "", "Prototype banks (*.prototypes.json)")
        if path:
            self.load_bank(path)

    def build_bank(self, cases: str | Path, out: str | Path | None = None) -> None:
        """Build a post-hoc bank for the chosen model from a folder of labelled case folders (saved at ``out``, or
        in the user cache where the model's bank is looked for) and use it."""
        self.status.setText(f"Building a prototype bank from {cases}...")
        self.run_job(
            self.workspace.build_bank, self.inputs.model_ref, Path(cases), None if out is None else Path(out),
            description="Build a prototype bank", on_result=self.load_bank, disable=(self.build_button, self.explain_button),
        )

    def _choose_bank_cases(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of labelled cases (one folder per case)")
        if folder:
            self.build_bank(folder)

    # ------------------------------------------------------------------ target
    def _refresh_labels(self, *_: Any) -> None:
        from napari.layers import Labels

        previous = self.labels_combo.currentText()
        self.labels_combo.clear()
        self.labels_combo.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, Labels)])
        if previous:
            self.labels_combo.setCurrentText(previous)

    def _image(self) -> Any:
        chosen = self.inputs.chosen_layers()
        if not chosen:
            raise MedAdaptError("Choose the image layers of the model's inputs first.")
        return next(iter(chosen.values()))

    def place_point(self) -> None:
        """Select (or create on the image's grid) the point layer in add mode: the next click is the target."""
        try:
            image = self._image()
        except MedAdaptError as err:
            self.report(err)
            return
        if POINT_LAYER not in self.viewer.layers:
            self.viewer.add_points(np.zeros((0, 3)), ndim=3, name=POINT_LAYER, size=5, face_color="cyan", **grid_kwargs(image))
        layer = self.viewer.layers[POINT_LAYER]
        if len(layer.data):
            layer.data = np.zeros((0, 3))  # one target at a time: the next click replaces the previous point
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        self.status.setText("Click the voxel to explain, then press Explain.")

    def target_voxel(self) -> tuple[int, int, int]:
        """The last point of the point layer as a voxel of the input image (z, y, x)."""
        image = self._image()
        if POINT_LAYER not in self.viewer.layers or len(self.viewer.layers[POINT_LAYER].data) == 0:
            raise PromptError("Place a point first: press 'Place point' and click the voxel to explain.")
        voxels, _positive, _plane = read_points(self.viewer.layers[POINT_LAYER], image, "Point")
        return tuple(int(v) for v in np.rint(voxels[-1]))  # type: ignore[return-value]

    def _region(self, shape: tuple[int, ...]) -> np.ndarray:
        from napari_medadapt.core.explain.targets import region_mask

        name = self.labels_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise PromptError("Choose a Labels layer holding the region to explain.")
        data = np.asarray(self.viewer.layers[name].data)
        if data.shape != shape:
            raise PromptError(f"Labels layer {name!r} has shape {data.shape}; the image has {shape}. Choose labels drawn on this image.")
        text = self.values_edit.text().strip()
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v] if text else None
        except ValueError:
            raise PromptError(f"Label values {text!r}: give whole numbers separated by commas, e.g. 1,2,4.") from None
        return region_mask(data, values, what=f"Labels layer {name!r}")

    # ------------------------------------------------------------------ explain
    def explain(self) -> None:
        """Explain the target in the compute worker; the table and the current plane's heatmaps follow."""
        if self.busy or self.bank is None:
            return
        target = self.target_combo.currentText()
        try:
            volume = self.inputs.volume()
            zyx = self.target_voxel() if target != "label region" else None
            region = self._region(volume.geometry.display_shape) if target == "label region" else None
        except MedAdaptError as err:
            self.report(err)
            return
        self.clear_report()
        self.status.setText(f"Explaining the {target}...")
        self._volume = volume
        self.run_job(
            self.workspace.explain, self.inputs.model_ref, volume, target, zyx=zyx, region=region,
            top_k=self.topk_spin.value(), bank=self.bank_path, description="Explain with prototypes",
            on_result=self._show_result, disable=(self.explain_button,),
        )

    def _show_result(self, result: ExplainResult) -> None:
        self.result = result
        explanation = result.explanation
        self.table.show_matches(explanation.matches, result.bank, self.workspace.forgotten)
        self.updateGeometry()  # the dock follows the table's minimum width (a readable source column)
        self.similar_label.setText("Similar training slices: " + "; ".join(
            f"{source_text(p)} ({p['similarity']:.3f}; labels "
            f"{', '.join(p.get('label_voxels', {})) or 'none'})" for p in explanation.similar_planes
        ))
        listed = {f"heatmap #{m.id}" for m in explanation.matches}
        for layer in dock_layers(self.viewer, "heatmap #"):
            if layer.metadata["medadapt"]["part"] not in listed:  # heatmaps of an earlier explanation
                self.viewer.layers.remove(layer.name)
        if result.evidence is not None:
            self._set_image(f"{EVIDENCE_LAYER} ({self._view()})", "evidence", result.evidence)
        else:
            self._remove_results("evidence")
        self.table.selectRow(0)
        image = self._image()
        self.viewer.dims.set_point(0, float(image.data_to_world([result.plane, 0, 0])[0]))  # where the heatmaps are
        notes = " ".join(n[0].upper() + n[1:] for n in explanation.notes)
        what = "The region's class by mean probability" if result.region is not None else "Predicted"
        self.status.setText(
            f"{what}: {explanation.predicted_class} (probability {explanation.probability:.2f}), in "
            f"{explanation.seconds:.2f} s. Heatmaps on plane {result.plane}; 'Heatmaps: whole volume' for all. {notes}".strip()
        )
        self._refresh_actions()

    def selected_ids(self) -> list[int]:
        """Prototype ids of the selected table rows."""
        return self.table.selected_ids()

    @property
    def _model_name(self) -> str:
        return self.result.explanation.model if self.result is not None else self.inputs.model_ref

    def _remove_results(self, part: str) -> None:
        for layer in dock_layers(self.viewer, part):
            self.viewer.layers.remove(layer.name)

    def _set_image(self, name: str, part: str, data: np.ndarray) -> None:
        """Show ``data`` as this dock's heatmap-style layer ``part`` (renamed to ``name`` when it exists)."""
        found = dock_layers(self.viewer, part)
        if found:
            found[0].data, found[0].name = data, name
            return
        self.viewer.add_image(data, **heat_kwargs(name, self._volume.geometry.spacing, self._model_name, part))

    def _view(self) -> str:
        """What the heatmap layers show now (their names say it)."""
        result = self.result
        if not result.whole_volume:
            return f"plane {result.plane}"
        return result.focus_text if self.focus_check.isChecked() and result.focus is not None else UNRESTRICTED

    def _shown(self, heat: np.ndarray) -> np.ndarray:
        """A heatmap as shown: inside the focus region when the whole-volume view is restricted."""
        result = self.result
        if result.whole_volume and self.focus_check.isChecked() and result.focus is not None:
            return heat * result.focus.astype(heat.dtype)
        return heat

    def _show_selected(self) -> None:
        if self.result is None:
            return
        ids = [m.id for m in self.result.explanation.matches]
        selected, view = set(self.selected_ids()), self._view()
        for pid, heat in zip(ids, self.result.heatmaps, strict=True):
            if pid in selected:
                self._set_image(heatmap_layer_name(pid, view), f"heatmap #{pid}", self._shown(heat))
            else:
                self._remove_results(f"heatmap #{pid}")
        self._refresh_actions()

    def _refresh_actions(self) -> None:
        ready = self.result is not None and not self.busy
        chosen = ready and bool(self.table.selectedIndexes())
        self.volume_button.setEnabled(ready)
        self.focus_check.setEnabled(ready and self.result.whole_volume and self.result.focus is not None)
        self.export_button.setEnabled(ready)
        self.source_button.setEnabled(chosen)
        head = self.bank is not None and self.bank.space == "head"
        self.forget_button.setEnabled(chosen and head)
        self.restore_button.setEnabled(ready and head)

    # ------------------------------------------------------------------ on demand
    def volume_heatmaps(self) -> None:
        """Compute the heatmaps of the listed prototypes over the whole volume (progress, Cancel)."""
        if self.result is None or self.busy:
            return
        self.run_job(
            self.workspace.volume_heatmaps, self.result, description="Prototype heatmaps (volume)",
            on_result=self._show_volume_heatmaps, disable=(self.volume_button, self.explain_button),
        )

    def _show_volume_heatmaps(self, out: VolumeHeatmaps) -> None:
        result = self.result
        result.heatmaps, result.whole_volume, result.focus, result.focus_text = out.heatmaps, True, out.focus, out.focus_text
        self._show_focus()

    def _show_focus(self, *_: Any) -> None:
        """Show the whole-volume heatmaps (and the evidence) as the focus checkbox says, and say what is shown."""
        result = self.result
        if result is None or not result.whole_volume:
            return
        view = self._view()
        if result.evidence is not None:
            result.evidence = self.workspace.evidence(result.explanation, result.heatmaps)
            self._set_image(f"{EVIDENCE_LAYER} ({view})", "evidence", self._shown(result.evidence))
        self._show_selected()
        if result.focus is None:
            why = " (the point is predicted background: there is no predicted region to keep them to)"
            self.status.setText(f"Heatmaps over the whole volume, unrestricted{why if result.region is None else ''}.")
        elif view == UNRESTRICTED:
            self.status.setText("Heatmaps over the whole volume, unrestricted: they also mark look-alike tissue far "
                                "from the explained region.")
        else:
            self.status.setText(f"Heatmaps over the whole volume, shown {view} only; uncheck "
                                f"'{self.focus_check.text()}' to see them everywhere.")

    def open_source(self) -> None:
        """Show the selected prototype's training slice beside the volume, its patch outlined."""
        ids = self.selected_ids()
        if not ids:
            return
        pid = ids[0]
        self.run_job(
            source_image, self.result.bank, pid, description="Open the source slice", on_result=lambda out: self._show_source(pid, out)
        )

    def _show_source(self, pid: int, out: tuple[np.ndarray, str | None]) -> None:
        plane, message = out
        spacing = self._volume.geometry.spacing
        width = self._volume.geometry.display_shape[2]
        offset = (width + 20) * spacing[2]
        name = f"prototype #{pid} source" if message is None else f"prototype #{pid} stored patch"
        self._remove_results(f"source #{pid}")
        kwargs = {"name": name, "scale": spacing[1:], "translate": (0.0, offset), "colormap": "gray"}
        self.viewer.add_image(plane, **mark_result(kwargs, DOCK, self._model_name, f"source #{pid}"))
        bank = self.result.bank
        entry = bank.entry(pid)["source"]
        half = bank.card["patch_size"] / 2
        y, x = (entry["y"], entry["x"]) if message is None else (half, half)
        corners = np.array([[y - half, x - half], [y + half, x + half]]) * np.asarray(spacing[1:]) + [0.0, offset]
        self._remove_results(f"patch #{pid}")
        kwargs = {"name": f"prototype #{pid} patch", "shape_type": "rectangle", "edge_color": "orange",
                  "face_color": "transparent", "edge_width": 1.5}  # fmt: skip
        self.viewer.add_shapes([corners], **mark_result(kwargs, DOCK, self._model_name, f"patch #{pid}"))
        self.viewer.reset_view()  # the volume and the source slice beside it, both in view
        self.status.setText(message or f"Source of prototype {bank.describe(pid)}: shown right of the volume.")

    def forget(self, ids: list[int]) -> None:
        """Predict again with prototypes ``ids`` forgotten (``[]`` restores all); the changed labels are shown."""
        if self.result is None or self.busy:
            return
        current = set(self.workspace.forgotten)
        wanted = sorted(current | set(ids)) if ids else []
        self.status.setText("Predicting again without the forgotten prototypes..." if wanted else "Restoring every prototype...")
        self.run_job(self.workspace.forget, wanted, description="Forget prototypes", on_result=self._show_forget, disable=(self.explain_button,))

    def _show_forget(self, result: ForgetResult) -> None:
        from napari_medadapt.core.metrics import label_volumes_ml
        from napari_medadapt.widgets._layers import class_names_of, labels_layer_kwargs, place_result

        changed_mask = result.after != result.before
        changed = int(changed_mask.sum())
        self.table.mark_forgotten(result.forgotten)
        if not result.forgotten:  # restored: the model's own prediction again, nothing to compare
            self._remove_results("forgotten")
            self._remove_results("changed")
            self.status.setText("Every prototype restored: the prediction is the model's own again.")
            show_info(self.status.text())
            return
        spacing = self._volume.geometry.spacing
        kwargs = labels_layer_kwargs(self._volume.geometry, name=FORGOTTEN_LAYER, class_names=class_names_of(self.inputs.card))
        model = self._model_name
        place_result(self.viewer, "labels", result.after, mark_result({**kwargs, "opacity": 0.4}, DOCK, model, "forgotten"))
        changed_kwargs = {"name": CHANGED_LAYER, "scale": spacing, "opacity": 0.7}
        place_result(self.viewer, "labels", changed_mask.astype(np.uint8), mark_result(changed_kwargs, DOCK, model, "changed"))
        before = sum(label_volumes_ml(result.before, spacing).values())
        after = sum(label_volumes_ml(result.after, spacing).values())
        if result.variant is not None:
            self.worker.publish_variant(result.variant)
        which = ", ".join(f"#{i}" for i in result.forgotten)
        self.status.setText(
            f"Forgotten: {which}. {changed} voxels changed (layer '{CHANGED_LAYER}'); foreground {before:.1f} -> {after:.1f} mL."
        )
        show_info(f"Prototypes forgotten: {which}; {changed} voxels changed.")

    def export_report(self, folder: str | Path) -> None:
        """Write the explanation (JSON, NIfTI heatmaps over the volume, thumbnails, heatmaps.png, report.html)
        into a new sub-folder ``explanation_<date-time>`` of ``folder`` (never among a case's files)."""
        import datetime as dt

        if self.result is None:
            return
        image = self._image()
        target = Path(folder) / f"explanation_{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.run_job(
            self.workspace.export, self.result, self._volume, np.asarray(image.data), target,
            description="Export the explanation report", on_result=lambda path: self.status.setText(f"Report written: {path}"),
        )

    def _choose_report_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the explanation report")
        if folder:
            self.export_report(folder)
