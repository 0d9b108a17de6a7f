"""Few-shot dock: paint a few slices of a structure, press Adapt, get the rest of the volume.

Pick the frozen model (a segmentation model with its image inputs, or LiteMedSAM with one image of any
modality), the Labels layer holding the painted slices (the dock lists the support slices it finds in it, on
whichever axis they were painted) and the method. "Adapt" fits in the compute worker with a live loss curve,
progress and Cancel (after one more painted slice, from the previous adapter); the result is a labels and a
probability layer ("few-shot MODEL labels" / "... probability", replaced undoably by the next result unless
"keep earlier results" is checked), with the leave-one-slice-out Dice of the painted slices. "Accept" copies the
result into the painted layer on the slices nobody painted (one undoable step); "Suggest next slice"
(:mod:`.fewshot_suggest`) moves the viewer to the slice where a label should help most and says why; adapters
can be saved and applied to another volume of the study (:mod:`.fewshot_adapters`). The computation is
:func:`napari_medadapt.core.adapt.fewshot.fit.fit`; this module only wires widgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from napari_medadapt.core.adapt.fewshot.workspace import FOUNDATION, fit_job, leave_one_out_job
from napari_medadapt.core.errors import MedAdaptError, VolumeError
from napari_medadapt.widgets._dock import JobDock, keep_results_checkbox
from napari_medadapt.widgets._keypoints import current_plane
from napari_medadapt.widgets._layers import (
    is_result_layer,
    labels_layer_kwargs,
    mark_result,
    place_result,
    provenance_draft,
    set_labels_undoable,
    volume_from_layers,
)
from napari_medadapt.widgets._loss_plot import LossPlot, LossRelay
from napari_medadapt.widgets._model_inputs import ModelInputsPanel
from napari_medadapt.widgets.fewshot_adapters import AdapterActions
from napari_medadapt.widgets.fewshot_suggest import SuggestPanel

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.adapt.fewshot.fit import FewShotResult
    from napari_medadapt.core.adapt.fewshot.suggest import SliceSuggestion
    from napari_medadapt.core.volume import Volume

BACKBONES = {"segmentation": "Segmentation model (below)", FOUNDATION: "LiteMedSAM (any anatomy, one image)"}
METHOD_LABELS = {
    "adapter": "Adapter (residual block + head)",
    "linear_probe": "Linear probe (head only)",
    "ft_last": "Last decoder block + head",
    "full": "Full fine-tuning (baseline)",
}
AXES = ("axial", "coronal", "sagittal")
#: ``metadata["medadapt"]["dock"]`` of this dock's result layers (:func:`~._layers.mark_result`).
DOCK_KEY = "fewshot"


class FewShotWidget(AdapterActions, JobDock):
    """Dock widget: frozen model and inputs, painted slices, method, Adapt / Accept / Suggest, adapters."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        from napari_medadapt.core.adapt.fewshot.fit import DEFAULT_STEPS, METHODS

        self.cancelled_text = "Cancelled; the model and the layers are unchanged."
        self.result: FewShotResult | None = None
        self.result_layer_name: str | None = None
        self.painted_layer_name: str | None = None
        self._fit_key: tuple | None = None  # what a refit must share with the last fit to start from it
        self._check_handle: Any = None  # the running leave-one-slice-out check (Adapt cancels it)
        self.empty_planes: list[tuple[int, int]] = []
        self._relay = LossRelay()
        self._relay.loss.connect(self._on_loss)
        layout = self.layout_

        form = QFormLayout()
        self.backbone_combo = QComboBox()
        for key, text in BACKBONES.items():
            self.backbone_combo.addItem(text, key)
        self.backbone_combo.setToolTip(
            "The frozen model whose features the adapter learns from: a segmentation model (its inputs below) or "
            "the LiteMedSAM foundation model (CT, MR and more: any structure, from one image)"
        )
        form.addRow("Frozen model", self.backbone_combo)
        layout.addLayout(form)
        self.inputs = ModelInputsPanel(self.viewer, tooltip="Segmentation model whose decoder features are used")
        self.model_combo = self.inputs.model_combo
        layout.addWidget(self.inputs)
        layers_form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image LiteMedSAM embeds (any modality)")
        self.image_label = QLabel("Image")
        layers_form.addRow(self.image_label, self.image_combo)
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("The Labels layer in which you painted a few slices of the structure")
        layers_form.addRow("Painted slices", self.labels_combo)
        layout.addLayout(layers_form)
        self.support_label = QLabel()
        self.support_label.setWordWrap(True)
        layout.addWidget(self.support_label)
        marks = QHBoxLayout()
        self.mark_empty_button = QPushButton("Mark displayed slice empty")
        self.mark_empty_button.setToolTip("This slice was checked: the structure is not on it (a support slice too)")
        self.clear_marks_button = QPushButton("Clear marks")
        marks.addWidget(self.mark_empty_button)
        marks.addWidget(self.clear_marks_button)
        layout.addLayout(marks)

        settings = QFormLayout()
        self.method_combo = QComboBox()
        for method in METHODS:
            self.method_combo.addItem(METHOD_LABELS[method], method)
        settings.addRow("Method", self.method_combo)
        self.prior_check = QCheckBox("Size prior on the unlabelled slices")
        self.prior_check.setChecked(True)
        self.prior_check.setToolTip(
            "Second half of the fit: the object's area on the slices between painted ones stays within 30 % of "
            "the area interpolated from the painted slices"
        )
        settings.addRow(self.prior_check)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 2000)
        self.steps_spin.setValue(DEFAULT_STEPS)
        settings.addRow("Steps", self.steps_spin)
        layout.addLayout(settings)

        buttons = QHBoxLayout()
        self.adapt_button = QPushButton("Adapt")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Copy the result into the painted layer on the slices nobody painted (Ctrl+Z undoes)")
        self.suggest_panel = SuggestPanel()
        self.suggest_button = self.suggest_panel.button
        for button in (self.adapt_button, self.accept_button, self.suggest_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.keep_check = keep_results_checkbox()
        layout.addWidget(self.keep_check)
        layout.addWidget(self.suggest_panel)
        files = QHBoxLayout()
        self.save_button = QPushButton("Save adapter...")
        self.apply_button = QPushButton("Apply adapter...")
        self.apply_button.setToolTip("Segment the open volume with a saved adapter (no painting, no retraining)")
        files.addWidget(self.save_button)
        files.addWidget(self.apply_button)
        layout.addLayout(files)
        layout.addWidget(self.job_panel)
        self.loss_plot = LossPlot()
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.backbone_combo.currentIndexChanged.connect(self._on_backbone_changed)
        self.labels_combo.currentIndexChanged.connect(self.update_support)
        self.adapt_button.clicked.connect(self.adapt)
        self.accept_button.clicked.connect(self.accept)
        self.suggest_button.clicked.connect(self.suggest)
        self.mark_empty_button.clicked.connect(self.mark_empty)
        self.clear_marks_button.clicked.connect(self.clear_marks)
        self.save_button.clicked.connect(self._choose_save_folder)
        self.apply_button.clicked.connect(self._choose_adapter)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.changed):
            event.connect(self.refresh_layers)
        self.refresh_layers()
        self._on_backbone_changed()
        self._show_result_buttons()
        self.status.setText("Paint the structure on a few slices (three spread over it), then press Adapt.")

    # ------------------------------------------------------------------------------------------ layers
    @property
    def backbone(self) -> str:
        """``"segmentation"`` or ``"litemedsam"``."""
        return self.backbone_combo.currentData()

    def _on_backbone_changed(self, *_: Any) -> None:
        foundation = self.backbone == FOUNDATION
        self.inputs.setVisible(not foundation)
        self.image_combo.setVisible(foundation)
        self.image_label.setVisible(foundation)
        for method in ("ft_last", "full"):  # the foundation model itself is not trained
            item = self.method_combo.model().item(self.method_combo.findData(method))
            item.setEnabled(not foundation)
        if foundation and self.method_combo.currentData() in ("ft_last", "full"):
            self.method_combo.setCurrentIndex(self.method_combo.findData("adapter"))

    def refresh_layers(self, *_: Any) -> None:
        """Fill the image and Labels layer lists (keeping the choices that still exist)."""
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            chosen = combo.currentText()
            layers = [layer for layer in self.viewer.layers if isinstance(layer, kind)]
            names = [layer.name for layer in layers if not is_result_layer(layer)]  # results: not inputs
            if kind is Labels and not names:
                names = [layer.name for layer in layers]  # only results: the user may paint into one
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if chosen in names:
                combo.setCurrentText(chosen)
            combo.blockSignals(False)
        self.update_support()

    def _labels_layer(self) -> Any:
        name = self.labels_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise VolumeError("Choose the Labels layer with your painted slices (add one with the Labels button).")
        return self.viewer.layers[name]

    def update_support(self, *_: Any) -> None:
        """Show the support slices found in the chosen Labels layer."""
        from napari_medadapt.core.adapt.fewshot.support import find_support

        try:
            support = find_support(np.asarray(self._labels_layer().data), self.empty_planes)
        except MedAdaptError as err:
            self.support_label.setText(f"Support: {err}")
            return
        planes = "; ".join(p.describe() for p in support.planes)
        self.support_label.setText(f"Support: {len(support.planes)} slice(s): {planes}.")

    def mark_empty(self) -> None:
        """Mark the displayed slice as checked and empty (it joins the support with no structure on it)."""
        try:
            plane = current_plane(self.viewer, self._labels_layer())
        except MedAdaptError as err:
            self.report(err)
            return
        if (plane.axis, plane.index) not in self.empty_planes:
            self.empty_planes.append((plane.axis, plane.index))
        self.update_support()

    def clear_marks(self) -> None:
        """Forget the slices marked empty."""
        self.empty_planes = []
        self.update_support()

    def _input_layer(self) -> Any:
        """The image layer the results lie on (its affine is copied onto them: a raw sequence placed by one)."""
        if self.backbone == FOUNDATION:
            return self.viewer.layers[self.image_combo.currentText()]
        return next(iter(self.inputs.chosen_layers().values()), None)

    def _volume(self) -> Volume:
        if self.backbone == FOUNDATION:
            name = self.image_combo.currentText()
            if not name or name not in self.viewer.layers:
                raise VolumeError("Open an image (any modality) for LiteMedSAM to embed.")
            layer = self.viewer.layers[name]
            return volume_from_layers({name.lower(): layer})
        return self.inputs.volume()

    # ------------------------------------------------------------------------------------------ jobs
    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~napari_medadapt.core.adapt.fewshot.fit.fit` from the form."""
        return {
            "method": self.method_combo.currentData(),
            "prior": self.prior_check.isChecked(),
            "steps": int(self.steps_spin.value()),
            "empty_planes": list(self.empty_planes),
        }

    def _refit_key(self, model_ref: str, volume: Volume, labels: np.ndarray, settings: dict[str, Any]) -> tuple:
        """What a refit shares with the last fit to start from it (checked fully in core); last: slice count."""
        from napari_medadapt.core.adapt.fewshot.warm import support_key

        image = self.image_combo.currentText() if self.backbone == FOUNDATION else ""
        painted = support_key(labels, settings["empty_planes"])
        return painted and (self.backbone, model_ref, image, volume.channels, volume.data.shape,
                            sorted((k, str(v)) for k, v in settings.items() if k != "empty_planes"), *painted)

    def adapt(self) -> None:
        """Fit on the painted slices and segment the rest of the volume (from the previous adapter when only
        the painted slices changed)."""
        from napari_medadapt.core.adapt.fewshot.warm import warm_steps

        if not self._free_but_check():
            return
        try:
            volume = self._volume()
            like = self._input_layer()
            layer = self._labels_layer()
            model_ref = self.inputs.model_ref if self.backbone != FOUNDATION else FOUNDATION
        except MedAdaptError as err:
            self.report(err)
            return
        if self.busy:
            self.forget_jobs()  # the leave-one-slice-out check of the previous fit: obsolete now
        labels = np.array(layer.data, copy=True)  # the user may keep painting while it runs
        settings = self.settings()
        key = self._refit_key(model_ref, volume, labels, settings)
        previous = self.result if key and self._fit_key and key[:-1] == self._fit_key[:-1] else None
        self.loss_plot.clear("Dice loss (+ prior)")
        generation = self._generation

        def on_step(step: int, _steps: int, entry: dict[str, float]) -> None:
            self._relay.loss.emit(step, entry["loss"], generation)

        if previous is not None:
            seconds = previous.refit_seconds(key[-1])
            self.status.setText(
                f"Refitting from the previous adapter: about {max(1, round(seconds))} s "
                f"({warm_steps(settings['steps'])} steps)..."
            )
        else:
            self.status.setText(f"Adapting ({METHOD_LABELS[settings['method']]})...")
        inputs = (self.backbone, model_ref, volume, labels, settings)
        self.run_job(
            fit_job, *inputs, self.worker.session, on_step, previous,
            description="Few-shot adapt", disable=(self.adapt_button, self.apply_button),
            on_result=lambda out: self._show_result(out, layer.name, volume, inputs, key, like),
        )

    def _free_but_check(self) -> bool:
        """Whether no job of the dock is open but the leave-one-slice-out check (which Adapt cancels)."""
        return all(handle is self._check_handle for handle in self._open if not handle.done)

    def job_finished(self) -> None:
        """Adapt is possible again once no job but the check after a fit is open, Apply once none is."""
        self.adapt_button.setEnabled(self._free_but_check())
        self.apply_button.setEnabled(not self.busy)

    def _on_loss(self, step: int, loss: float, generation: int) -> None:
        if generation == self._generation:
            self.loss_plot.add_point(step, loss)

    def _add_result_layers(self, labels: np.ndarray, probabilities: np.ndarray, volume: Volume, model: str,
                           class_names: dict[int, str], provenance: dict[str, Any], title: str = "",
                           like: Any = None) -> None:
        """Show the labels and the foreground probability as this dock's results of ``model`` (layers "TITLE
        labels" / "TITLE probability", by default "few-shot MODEL ..."), placed like the input layer ``like``:
        they replace the previous ones (the labels undoably) unless "keep earlier results" is checked."""
        keep, title = self.keep_check.isChecked(), title or f"few-shot {model}"
        kwargs = labels_layer_kwargs(volume.geometry, name=f"{title} labels", class_names=class_names,
                                     provenance=provenance)
        kwargs["opacity"] = 0.6
        data = np.array(labels, copy=True)  # the layer's own array: edits and later results never reach the fit's
        layer = place_result(self.viewer, "labels", data, mark_result(kwargs, DOCK_KEY, model, "labels"), keep, like)
        self.result_layer_name = layer.name
        foreground = (1.0 - probabilities[0].astype(np.float32)).clip(0, 1)
        image_kwargs = {
            "name": f"{title} probability", "scale": volume.geometry.spacing, "colormap": "magma",
            "blending": "additive", "opacity": 0.5, "contrast_limits": (0.0, 1.0), "visible": False,
        }
        place_result(self.viewer, "image", foreground, mark_result(image_kwargs, DOCK_KEY, model, "probability"), keep,
                     like)
        self.viewer.layers.selection.active = self.viewer.layers[self.result_layer_name]
        self.refresh_layers()

    def _show_result(
        self, outcome: tuple[FewShotResult, str | None, list[SliceSuggestion]], painted: str, volume: Volume,
        inputs: tuple, key: tuple, like: Any = None,
    ) -> None:
        result, variant, suggestions = outcome
        self.suggest_panel.set_suggestions(suggestions)
        self.result = result
        self._fit_key = key
        self.painted_layer_name = painted  # Accept writes into the layer the fit learnt from
        if variant is not None:
            self.worker.publish_variant(result.model.card)
        settings = {k: v for k, v in result.settings.items() if k not in ("base_model", "base_sha256")}
        settings["support"] = result.support.as_records()
        draft = provenance_draft(
            "fewshot", volume, {"name": result.settings["base_model"], "sha256": result.settings["base_sha256"]},
            settings, self.worker.session.device, extra_inputs={"support": None},
        )
        self._add_result_layers(result.predicted, result.probabilities, volume, result.settings["base_model"],
                                result.class_names, draft, like=like)
        if painted in self.viewer.layers:
            self.labels_combo.setCurrentText(painted)
        seconds = sum(result.seconds.values())
        how = f"refitted from the previous adapter ({len(result.history)} steps)" if result.warm_started else "adapted"
        parts = [f"{how.capitalize()} on {len(result.support.planes)} slice(s) in {seconds:.1f} s.", *result.notes]
        if variant is not None:
            parts.append(f"The adapted model is '{variant}' in the other docks' model lists.")
        self.status.setText(" ".join(parts))
        self._show_result_buttons()
        show_info(parts[0])
        if sum(bool(p.classes) for p in result.support.planes) >= 2:
            self.status.setText(self.status.text() + " Checking each painted slice against a fit without it...")
            self._check_handle = self.run_job(  # Adapt stays available: it cancels this check
                leave_one_out_job, *inputs, self.worker.session, description="Leave-one-slice-out check",
                on_result=lambda scores: self._show_leave_one_out(scores, " ".join(parts)),
                disable=(self.apply_button,),
            )

    def _show_leave_one_out(self, scores: dict[int, float], text: str) -> None:
        if self.result is None:
            return
        self.result.leave_one_out = scores
        listed = ", ".join(f"{AXES[self.result.support.axis]} {k}: {v:.2f}" for k, v in scores.items())
        self.status.setText(f"{text} Leave-one-slice-out Dice {listed}.")

    def _show_result_buttons(self) -> None:
        for button in (self.accept_button, self.suggest_button, self.save_button):
            button.setEnabled(self.result is not None)

    # ------------------------------------------------------------------------------------------ result actions
    def accept(self) -> int:
        """Copy the result into the painted layer on every slice with no paint on it (one undoable step);
        returns the voxels changed."""
        if self.result is None:
            return 0
        if self.painted_layer_name not in self.viewer.layers:
            self.report(f"The painted layer {self.painted_layer_name!r} of the fit was removed; nothing was written.")
            return 0
        layer = self.viewer.layers[self.painted_layer_name]
        current = np.asarray(layer.data)
        if current.shape != self.result.labels.shape:
            self.report(f"Layer {layer.name!r} is not on the grid of the result; choose the layer you painted.")
            return 0
        axis = self.result.support.axis
        painted = current.any(axis=tuple(a for a in range(3) if a != axis))
        painted[self.result.support.indices] = True  # slices marked empty too
        merged = current.copy()
        free = [slice(None)] * 3
        free[axis] = ~painted
        merged[tuple(free)] = self.result.predicted[tuple(free)]
        changed = set_labels_undoable(layer, merged)
        self.status.setText(
            f"Accepted: {changed} voxels written into {layer.name!r} on {int((~painted).sum())} unpainted "
            f"{AXES[axis]} slices; painted slices untouched (Ctrl+Z undoes)."
        )
        return changed

    def suggest(self) -> int | None:
        """Move the viewer to the unpainted slice where a label should help most and say why; returns its
        index."""
        if self.result is None:
            return None
        if not self.suggest_panel.suggestions:
            self.status.setText("No slice to suggest: the adapted model found no structure off the painted slices.")
            return None
        if self.result_layer_name not in self.viewer.layers:
            self.report("The result layer was removed: adapt again to get a suggestion.")
            return None
        best = self.suggest_panel.go(self.viewer, self.viewer.layers[self.result_layer_name])
        self.status.setText(f"Suggested {best.describe()}. Paint it and press Adapt again.")
        return best.index
