"""The SAM dock's current object: slice predictions (refinement state), candidates, propagation statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QTableWidget, QTableWidgetItem

from napari_medadapt.core.sam.prompts import Plane, Prompts

if TYPE_CHECKING:
    from napari_medadapt.core.sam import MaskPrediction, PropagationResult
    from napari_medadapt.core.sam.workspace import JobOutput, SliceOutcome

PLANE_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}
STOP_REASONS = {
    "empty": "the object ended",
    "iou": "overlap with the previous slice fell below the threshold",
    "area": "the area jumped",
    "intensity": "the brightness inside the mask changed by more than 2 standard deviations of the annotated object",
    "stop-slice": "a slice with only negative clicks",
    "range": "the maximum range",
    "edge": "the edge of the volume",
}


class SamResults:
    """The current object: per-slice predictions, the prompt signature each slice was segmented from
    (``applied``), its low-res logits for refinement (``feedback``), propagated slices; shows candidates
    and propagation statistics.

    Parameters
    ----------
    show_status
        Puts a line into the dock's status.
    take_output
        Takes a job's output: remembers its model and shows its notes (fallback to CPU, unverified checkpoint, ...).
    """

    def __init__(self, show_status: Callable[[str], Any], take_output: Callable[[JobOutput], Any]) -> None:
        self._show_status = show_status
        self._take_output = take_output
        self.predictions: dict[tuple[int, int], MaskPrediction] = {}
        self.applied: dict[tuple[int, int], tuple] = {}
        self.feedback: dict[tuple[int, int], np.ndarray] = {}
        self.propagated: set[tuple[int, int]] = set()
        self.last_propagation: PropagationResult | None = None
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["slice", "voxels", "IoU prev", "pred. IoU", "from"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(160)
        self.table.setVisible(False)
        self.candidate_combo = QComboBox()
        self.candidate_combo.setToolTip("Masks the model proposes for an ambiguous click, with their predicted IoU")
        self.candidate_combo.setEnabled(False)

    def reset(self) -> None:
        """Forget the object (new object / other image)."""
        self.predictions.clear()
        self.applied.clear()
        self.feedback.clear()
        self.propagated.clear()
        self.last_propagation = None
        self.table.setRowCount(0)
        self.table.setVisible(False)
        self.show_candidates(None)

    def show_candidates(self, plane: Plane | None) -> None:
        """Fill the candidate selector with the displayed slice's masks and their predicted IoU."""
        combo = self.candidate_combo
        combo.clear()
        prediction = None if plane is None else self.predictions.get((plane.axis, plane.index))
        if prediction is None:
            combo.setEnabled(False)
            return
        for k, score in enumerate(prediction.scores):
            combo.addItem(f"mask {k + 1}: IoU {score:.2f} ({int(prediction.masks[k].sum())} voxels)")
        combo.setCurrentIndex(prediction.best)
        combo.setEnabled(len(prediction.masks) > 1)

    def apply_slices(self, preview: Any, outcomes: list[SliceOutcome], axis: int) -> None:
        """Paste segmented slices into the preview (only those slices) and remember them for refinement."""
        empty = Prompts().signature
        for outcome in outcomes:
            key, prediction = (axis, outcome.index), outcome.prediction
            preview.data[Plane(*key).slicer()] = 0 if prediction is None else prediction.mask
            self.predictions.pop(key, None)
            self.feedback.pop(key, None)
            self.propagated.discard(key)
            if outcome.signature == empty:
                self.applied.pop(key, None)
            else:
                self.applied[key] = outcome.signature
            if prediction is not None:
                self.predictions[key] = prediction
                self.feedback[key] = prediction.feedback
        preview.refresh()

    def choose(self, preview: Any, plane: Plane, position: int) -> None:
        """Show candidate ``position`` of the slice's ambiguous prediction; refine from it from now on."""
        key = (plane.axis, plane.index)
        prediction = self.predictions.get(key)
        if prediction is None or not 0 <= position < len(prediction.masks):
            return
        chosen = replace(prediction, mask=prediction.masks[position], best=position)
        self.predictions[key], self.feedback[key] = chosen, chosen.feedback
        preview.data[plane.slicer()] = chosen.mask
        preview.refresh()
        self.show_candidates(plane)

    @staticmethod
    def describe_slices(outcomes: list[SliceOutcome], axis: int, box_model: str | None = None) -> str:
        """Status text for segmented slices; ``box_model``: the name of a box-trained model in use, which adds
        advice where a slice was prompted with clicks (without a box, or added to one)."""
        parts = []
        for outcome in outcomes:
            prediction = outcome.prediction
            if prediction is None:
                parts.append(f"slice {outcome.index}: no positive prompt, emptied")
                continue
            choice = f" (best of {len(prediction.masks)})" if len(prediction.masks) > 1 else ""
            parts.append(
                f"slice {outcome.index}: {int(prediction.mask.sum())} voxels, predicted IoU "
                f"{prediction.scores[prediction.best]:.2f}{choice}"
            )
        text = f"{PLANE_NAMES.get(axis, f'axis {axis}')} " + "; ".join(parts)
        prompted = [o for o in outcomes if o.prediction is not None]
        if box_model and any(o.signature[1] is None for o in prompted):
            text += (
                f"\n{box_model} learned from boxes only: clicks without a box give it little or no mask. "
                "Draw a box around the object (SAM boxes layer), or choose the model 'LiteMedSAM + click decoder' "
                "to work with clicks."
            )
        elif box_model and any(o.signature[0] for o in prompted):
            text += (
                f"\n{box_model} learned from boxes only: clicks added to a box may change its mask in ways it was not "
                "trained for. To refine with clicks, choose the model 'LiteMedSAM + click decoder'."
            )
        return text

    def seeds(self, preview: Any, axis: int, prompts: dict[int, Prompts]) -> dict[int, np.ndarray]:
        """The preview's non-empty masks on the slices of ``axis`` segmented from positive prompts (propagation
        seeds); slices with only negative clicks are stops, not seeds."""
        if preview is None:
            return {}
        seeds = {
            i: np.asarray(preview.data[Plane(axis, i).slicer()] > 0)
            for (a, i) in self.applied
            if a == axis and prompts.get(i) is not None and not prompts[i].negative_only
        }
        return {i: m for i, m in seeds.items() if m.any()}

    def show_precompute(self, output: JobOutput) -> None:
        """Report a finished precomputation."""
        self._take_output(output)
        stats = output.value
        self._show_status(
            f"Embeddings ready: {stats.computed} computed, {stats.cached} already cached. Clicks are now instant."
        )

    def show_propagation(self, preview: Any, result: PropagationResult, axis: int) -> None:
        """Paste a propagation into the preview (replacing the previous one) and list per-slice statistics."""
        annotated = {key for key in self.applied if key[0] == axis}
        filled = {(axis, s.index) for s in result.stats if s.source != "seed"}
        for key in self.propagated - filled - annotated:
            preview.data[Plane(*key).slicer()] = 0
        mask = np.moveaxis(result.mask, axis, 0)
        for key in filled - annotated:
            preview.data[Plane(*key).slicer()] = mask[key[1]]
        preview.refresh()
        self.propagated = filled - annotated
        self.last_propagation = result
        self.table.setRowCount(0)
        for stat in result.stats:
            row = self.table.rowCount()
            self.table.insertRow(row)
            cells = (str(stat.index), str(stat.area), f"{stat.neighbour_iou:.2f}", f"{stat.score:.2f}", stat.source)
            for column, text in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.setVisible(True)
        indices = result.slices
        stops = "; ".join(
            f"{'below' if d == 'down' else 'above'}: {STOP_REASONS.get(r or 'edge', r)}"
            for d, r in result.stopped.items()
        )
        self._show_status(
            f"Propagated to {len(filled)} slice(s), object spans slices {indices[0]}-{indices[-1]}. Stopped {stops}. "
            "Check the preview, then Commit."
        )


class _SingleImage:
    """The channel name and source file of one image layer, as :func:`provenance_draft` reads a volume."""

    def __init__(self, name: str, source: str | None) -> None:
        self.channels, self.source_paths = (name,), (source,)


def record_commit(target: Any, image: Any, mask: np.ndarray, label: int, model_name: str | None,
                  weights_hash: str | None, device: str | None) -> None:
    """Add a committed object to the provenance draft in ``target``'s metadata (the writer completes it when the
    layer is saved): the image's file, the promptable model (its weights' hash once loaded, its decoder's for a card
    with a fine-tuned decoder) and, per object, its
    label id, image layer, axial extent and size."""
    from napari_medadapt.widgets._layers import provenance_draft

    meta = dict(target.metadata.get("medadapt") or {})
    draft = meta.get("provenance")
    if draft is None or draft.get("method") != "segment-anything":
        source = (image.metadata.get("medadapt") or {}).get("source_path") or None
        from napari_medadapt.core.provenance import promptable_entry

        model = promptable_entry(model_name, weights_hash)
        draft = provenance_draft("segment-anything", _SingleImage(image.name, source), model, {"objects": []}, device)
    planes = np.flatnonzero(mask.any(axis=(1, 2)))
    draft["settings"]["objects"].append({
        "label": int(label), "image_layer": image.name, "voxels": int(mask.sum()),
        "axial_planes": [int(planes.min()), int(planes.max())] if len(planes) else [],
    })
    target.metadata = {**target.metadata, "medadapt": {**meta, "provenance": draft}}
