"""Test-time adaptation dock: measure a volume's domain shift, adapt the model to it, compare the results.

Pick a model and the image layer feeding each of its inputs (auto-matched by layer name), the method
(BN-affine, normalizer or Tent) and its settings. "Measure shift" computes the shift score and rates it
against the model's training data (typical / unusual / far). "Adapt and segment" segments with the source
model, adapts a copy of it to the volume (live loss curve) and segments again: two Labels layers, their
per-class volumes (mL) and the shift score before and after. "Reset" clears the scores (the source
model is never changed); "Cancel" stops a running job. Every computation runs in the viewer's compute worker
through ``napari_medadapt.core``; this module only wires widgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.widgets._dock import JobDock, keep_results_checkbox
from napari_medadapt.widgets._layers import provenance_draft
from napari_medadapt.widgets._loss_plot import LossPlot, LossRelay
from napari_medadapt.widgets._model_inputs import ModelInputsPanel, VolumeTable

if TYPE_CHECKING:
    import napari

    from napari_medadapt.core.adapt.tta.workflow import AdaptOutcome
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.models import ModelCard
    from napari_medadapt.core.session import ModelSession
    from napari_medadapt.core.volume import Volume

METHOD_LABELS = {"bn_affine": "BN affine (KL)", "normalizer": "Normalizer (KL)", "tent": "Tent (entropy)"}


def measure_job(model: str, volume: Volume, session: ModelSession, *, ctx: JobContext) -> tuple[float, str]:
    """Shift score of ``volume`` for ``model`` and its rating line (compute thread)."""
    from napari_medadapt.core.adapt.tta.score import describe_shift, shift_score

    segmenter = session.model(model, ctx)
    score = shift_score(segmenter, volume, ctx=ctx)
    return score, describe_shift(score, segmenter.card)


def adapt_job(
    model: str, volume: Volume, session: ModelSession, settings: dict[str, Any], on_loss: Any, *, ctx: JobContext
) -> AdaptOutcome:
    """:func:`~napari_medadapt.core.adapt.tta.workflow.adapt_and_segment` in the compute thread."""
    from napari_medadapt.core.adapt.tta.workflow import adapt_and_segment

    return adapt_and_segment(session, model, volume, settings, on_loss=on_loss, ctx=ctx)


class TTAWidget(JobDock):
    """Dock widget: model and inputs, method and settings, measure / adapt / reset / cancel, results."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        from napari_medadapt.core.adapt.tta.methods import METHODS, OPTIMIZERS

        self.cancelled_text = "Cancelled; the source model and the layers are unchanged."
        self.last_outcome: AdaptOutcome | None = None
        self.last_score: float | None = None
        self._relay = LossRelay()
        self._relay.loss.connect(self._on_loss)

        layout = self.layout_
        self.inputs = ModelInputsPanel(
            self.viewer, tooltip="Segmentation model to adapt (bundled or registered)", allow_files=False
        )
        self.model_combo = self.inputs.model_combo
        layout.addWidget(self.inputs)

        settings = QFormLayout()
        self.method_combo = QComboBox()
        for method in METHODS:
            self.method_combo.addItem(METHOD_LABELS[method], method)
        self.method_combo.setToolTip(
            "BN affine: align the feature statistics by training BatchNorm scales/shifts (default). "
            "Normalizer: train the normaliser network in front. Tent: entropy minimisation (baseline)."
        )
        settings.addRow("Method", self.method_combo)
        self.optimizer_combo = QComboBox()
        self.optimizer_combo.addItems(list(OPTIMIZERS))
        settings.addRow("Optimizer", self.optimizer_combo)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(4)
        self.lr_spin.setRange(1e-4, 1e-1)
        self.lr_spin.setSingleStep(1e-3)
        settings.addRow("Learning rate", self.lr_spin)
        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(1, 500)
        settings.addRow("Iterations", self.iterations_spin)
        self.blocks_edit = QLineEdit()
        self.blocks_edit.setToolTip(
            "BatchNorm blocks to train, comma-separated: input, down, bottleneck, up, all, or a numbered "
            "block such as down2. Empty: the method's default."
        )
        settings.addRow("Blocks", self.blocks_edit)
        self.keep_check = keep_results_checkbox()
        settings.addRow(self.keep_check)
        layout.addLayout(settings)

        buttons = QHBoxLayout()
        self.measure_button = QPushButton("Measure shift")
        self.adapt_button = QPushButton("Adapt and segment")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(
            "Clear the scores and the loss curve; the next adaptation starts from the source model (result layers "
            "and adapted models in the model lists stay)"
        )
        for button in (self.measure_button, self.adapt_button, self.reset_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.job_panel)

        self.shift_label = QLabel("Shift score: not measured.")
        self.shift_label.setWordWrap(True)
        layout.addWidget(self.shift_label)
        self.loss_plot = LossPlot()
        layout.addWidget(self.loss_plot)
        self.volume_table = VolumeTable(["Before (mL)", "After (mL)"])
        layout.addWidget(self.volume_table)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.inputs.model_changed.connect(self._on_model_changed)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.measure_button.clicked.connect(self.measure)
        self.adapt_button.clicked.connect(self.adapt)
        self.reset_button.clicked.connect(self.reset)
        self._on_method_changed()
        self._on_model_changed()
        if self.card is not None:
            self.status.setText("Measure the shift, or adapt and segment.")

    # ------------------------------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Fill the model list from the registry."""
        self.inputs.refresh_models()

    @property
    def card(self) -> ModelCard | None:
        """Card of the selected model."""
        return self.inputs.card

    def _on_model_changed(self) -> None:
        card = self.card
        for button in (self.measure_button, self.adapt_button):
            button.setEnabled(card is not None)
        if card is None:
            self.status.setText("No model found. Add one in the Segment dock or to MEDADAPT_MODEL_PATH.")
            return
        self._forget()

    def _on_method_changed(self, *_: Any) -> None:
        from napari_medadapt.core.adapt.tta.methods import DEFAULT_ITERATIONS, DEFAULT_LR

        self.lr_spin.setValue(DEFAULT_LR)
        self.iterations_spin.setValue(DEFAULT_ITERATIONS)
        self.blocks_edit.setEnabled(self.method_combo.currentData() != "normalizer")

    # ------------------------------------------------------------------------------------------ inputs
    def input_mapping(self) -> dict[str, str | None]:
        """Model modality -> chosen image layer name (``None`` for "none")."""
        return self.inputs.input_mapping()

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`napari_medadapt.core.adapt.tta.methods.adapt` from the form."""
        method = self.method_combo.currentData()
        blocks = [b.strip() for b in self.blocks_edit.text().split(",") if b.strip()]
        return {
            "method": method,
            "optimizer": self.optimizer_combo.currentText(),
            "lr": float(self.lr_spin.value()),
            "iterations": int(self.iterations_spin.value()),
            "blocks": tuple(blocks) if blocks and method != "normalizer" else None,
        }

    def _volume(self) -> Volume | None:
        if self.card is None:
            return None
        try:
            return self.inputs.volume()
        except MedAdaptError as err:
            self.report(err)
            return None

    # ------------------------------------------------------------------------------------------ jobs
    def _submit(self, fn: Any, *args: Any, extra: tuple = (), description: str, on_result: Any) -> None:
        """Run ``fn(*args, session, *extra)`` in the compute worker with the dock's progress panel."""
        self.run_job(
            fn, *args, self.worker.session, *extra, description=description, on_result=on_result,
            disable=(self.measure_button, self.adapt_button, self.reset_button),
            input_layers=list(self.inputs.chosen_layers().values()),
        )

    def measure(self) -> None:
        """Start measuring the shift score of the current inputs."""
        volume = self._volume()
        if volume is None or self.busy:
            return
        self.status.setText("Measuring the domain shift...")
        self._submit(measure_job, self.inputs.model_ref, volume, description="Measure shift", on_result=self._show_score)

    def adapt(self) -> None:
        """Start segment -> adapt -> segment with the current settings."""
        volume = self._volume()
        if volume is None or self.busy:
            return
        settings = self.settings()
        self.loss_plot.clear("entropy" if settings["method"] == "tent" else "BN-KL loss")
        self.status.setText(f"Adapting {self.card.name} ({METHOD_LABELS[settings['method']]})...")
        card = self.card
        generation = self._generation

        def on_loss(iteration: int, loss: float) -> None:
            self._relay.loss.emit(iteration, loss, generation)

        model = {"name": card.name, "sha256": card.weights_sha256, "card": card.path}
        device = self.worker.session.device
        like = next(iter(self.inputs.chosen_layers().values()), None)  # the results lie on the inputs' voxels
        drafts = (provenance_draft("segment", volume, model, {}, device),
                  provenance_draft("segment+tta", volume, model, {"tta": dict(settings)}, device))
        self._submit(adapt_job, self.inputs.model_ref, volume, extra=(settings, on_loss),
                     description=f"Adapt ({card.name})",
                     on_result=lambda outcome: self._show_outcome(outcome, card, drafts, like))

    def _forget(self) -> None:
        """Drop the running job, the scores, loss curve and table (another model was chosen, or Reset)."""
        self.forget_jobs()
        self.last_outcome = None
        self.last_score = None
        self.loss_plot.clear()
        self.volume_table.setRowCount(0)
        self.shift_label.setText("Shift score: not measured.")

    def reset(self) -> None:
        """Clear the scores and the loss curve (the source model is never changed; layers stay)."""
        self._forget()
        self.status.setText("Reset: scores cleared; the next adaptation starts from the source model (adapted "
                            "models stay selectable in the model lists until the viewer closes).")

    def job_finished(self) -> None:
        """The job ended: measuring and adapting need a model."""
        for button in (self.measure_button, self.adapt_button):
            button.setEnabled(self.card is not None)

    # ------------------------------------------------------------------------------------------ results
    def _on_loss(self, iteration: int, loss: float, generation: int) -> None:
        if generation != self._generation:  # a job the dock has forgotten (Reset, another model)
            return
        self.loss_plot.add_point(iteration, loss)

    def _show_score(self, outcome: tuple[float, str]) -> None:
        self.last_score, line = outcome
        self.shift_label.setText(line[0].upper() + line[1:] + ".")
        self.status.setText("Shift measured.")

    def _show_outcome(self, outcome: AdaptOutcome, card: ModelCard, drafts: tuple[dict, dict], like: Any = None) -> None:
        from napari_medadapt.core.metrics import region_volumes_ml
        from napari_medadapt.widgets._layers import (
            class_names_of,
            labels_layer_kwargs,
            mark_result,
            place_result,
        )

        self.last_outcome = outcome
        result = outcome.result
        self.worker.publish_variant(result.model.card)  # selectable in the other docks
        names = class_names_of(card)
        added = []
        runs = ((outcome.before, "before TTA", drafts[0]), (outcome.after, f"after TTA ({result.method})", drafts[1]))
        for (prediction, suffix, draft), part in zip(runs, ("before", "after"), strict=True):
            name = f"{card.name} {suffix}"
            kwargs = labels_layer_kwargs(prediction.geometry, name=name, class_names=names, provenance=draft)
            kwargs["opacity"] = 0.6
            mark_result(kwargs, "tta", card.name, part)  # replaces the previous run's layers unless kept
            added.append(place_result(self.viewer, "labels", prediction.labels, kwargs, self.keep_check.isChecked(), like))
        self.shift_label.setText(f"Before: {outcome.rating_before}.\nAfter: {outcome.rating_after}.")
        before, after = outcome.before.volumes_ml, outcome.after.volumes_ml
        regions = {
            name: [ml, region_volumes_ml(after, card.regions)[name]]
            for name, ml in region_volumes_ml(before, card.regions).items()
        }
        self.volume_table.show_volumes(
            [(label_id, name, [ml, after.get(label_id, 0.0)]) for label_id, name, ml in outcome.before.volume_rows()],
            regions,
            added[0].get_color,
        )
        for warning in result.warnings:
            show_warning(warning)
        message = (
            f"Adapted in {result.seconds:.1f} s; kept iteration {result.best_iteration} of "
            f"{len(result.loss_history) - 1}. The adapted model is '{outcome.variant}' in every dock's model list."
        )
        self.status.setText(message)
        show_info(message)
