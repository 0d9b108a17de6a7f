"""The Few-shot dock's "Suggest next slice" panel: the button, the reasons of the ranking, and the move of the
viewer to the suggested slice.

The ranking itself is :func:`napari_medadapt.core.adapt.fewshot.suggest.rank_slices` (computed in the compute
worker with the fit); this module only shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from napari_medadapt.core.adapt.fewshot.suggest import SliceSuggestion


class SuggestPanel(QWidget):
    """"Suggest next slice" and why: the best slice to paint next and the runners-up, each with its reason
    (uncertain object end, distance to the nearest painted slice, mean uncertainty)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.button = QPushButton("Suggest next slice")
        self.button.setToolTip(
            "Move to the unpainted slice where a label should help most: the adapter is unsure of the object "
            "there, it is far from the painted slices, and object ends count more"
        )
        self.reasons = QLabel()
        self.reasons.setWordWrap(True)
        layout.addWidget(self.reasons)
        self.suggestions: list[SliceSuggestion] = []
        self.set_suggestions([])

    def set_suggestions(self, suggestions: Sequence[SliceSuggestion]) -> None:
        """Keep the ranking of the latest fit (best first); the reasons appear once the user asks."""
        self.suggestions = list(suggestions)
        self.reasons.setText("")
        self.reasons.setVisible(False)

    def go(self, viewer: Any, layer: Any) -> SliceSuggestion | None:
        """Move ``viewer`` to the best suggested slice (in ``layer``'s world coordinates) and show why; the
        suggestion, or ``None`` when there is none."""
        if not self.suggestions:
            return None
        best = self.suggestions[0]
        point = [0.0, 0.0, 0.0]
        point[best.axis] = float(best.index)
        offset = viewer.dims.ndim - 3
        viewer.dims.set_point(best.axis + offset, float(layer.data_to_world(point)[best.axis]))
        lines = [f"Suggested: {best.describe()}."]
        if len(self.suggestions) > 1:
            others = "; ".join(s.describe() for s in self.suggestions[1:])
            lines.append(f"Next best: {others}.")
        self.reasons.setText("\n".join(lines))
        self.reasons.setVisible(True)
        return best
