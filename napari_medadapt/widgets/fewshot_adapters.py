"""The few-shot dock's saved adapters: save the last fit's adapter, segment the open volume with a saved one.

A mixin of :class:`~.fewshot.FewShotWidget` (it uses the dock's result, inputs, worker and result layers); the
files are written and read by :mod:`napari_medadapt.core.adapt.fewshot.io`.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFileDialog

from napari_medadapt.core.adapt.fewshot.workspace import FOUNDATION, apply_job
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.widgets._layers import provenance_draft


class AdapterActions:
    """Save / Apply adapter of the few-shot dock."""

    result: Any

    def save_adapter(self, folder: str) -> str | None:
        """Save the last fit's adapter into the new folder ``folder``."""
        from napari_medadapt.core.adapt.fewshot.io import save_adapter

        if self.result is None:
            return None
        try:
            path = save_adapter(self.result, folder)
        except MedAdaptError as err:
            self.report(err)
            return None
        self.status.setText(f"Adapter saved in {path.parent}.")
        return str(path.parent)

    def apply_adapter(self, folder: str) -> None:
        """Segment the open volume with a saved adapter."""
        from napari_medadapt.core.adapt.fewshot.io import read_adapter_card

        if self.busy:
            return
        try:
            card = read_adapter_card(folder)
            foundation = card["backbone"] == "promptable"
            self.backbone_combo.setCurrentIndex(self.backbone_combo.findData(FOUNDATION if foundation else "segmentation"))
            volume = self._volume()
            like = self._input_layer()
            model_ref = None
            if not foundation and self.inputs.card is not None and self.inputs.card.name == card["base_model"]:
                model_ref = self.inputs.model_ref
        except MedAdaptError as err:
            self.report(err)
            return
        names = dict(zip(card["labels"], card["class_names"] or map(str, card["labels"]), strict=True))

        def show(outcome: tuple) -> None:
            labels, probabilities, _card = outcome
            self.result = None  # Accept and Suggest act on a fit of this dock, not on an applied adapter
            self._show_result_buttons()
            draft = provenance_draft(
                "fewshot-apply", volume, {"name": card["base_model"], "sha256": card["base_sha256"]}, {},
                self.worker.session.device,
                adapter={"name": card["name"], "path": card["path"], "sha256": card["weights_sha256"],
                         "method": card["method"], "support": card["support"], "settings": card["settings"]},
            )
            self._add_result_layers(labels, probabilities, volume, card["name"], names, draft, card["name"], like)
            self.status.setText(f"Segmented with the adapter {card['name']!r} (base model {card['base_model']}).")

        self.status.setText(f"Applying the adapter {card['name']!r}...")
        self.run_job(apply_job, folder, volume, model_ref, self.worker.session, description="Apply adapter",
                     on_result=show, disable=(self.adapt_button, self.apply_button))

    def _choose_save_folder(self) -> None:
        folder, _ = QFileDialog.getSaveFileName(self, "New folder for the adapter", "fewshot_adapter")
        if folder:
            self.save_adapter(folder)

    def _choose_adapter(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of a saved adapter")
        if folder:
            self.apply_adapter(folder)
