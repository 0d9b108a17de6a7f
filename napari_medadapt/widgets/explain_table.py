"""The Prototype explanations dock's table of prototypes and the look of the layers it adds.

The table lists an explanation's prototypes (thumbnail of the source patch, id, class, similarity, share of the
class score, source); long texts are elided in the middle (the start and the end of a source both stay visible)
and shown whole in the tooltip, and the source column keeps a readable minimum width. Heatmaps are drawn with a
colormap that is transparent at 0, translucent over the gray image, so only where a prototype fires is coloured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_medadapt.core.explain.bank import source_text
from napari_medadapt.widgets._layers import mark_result

DOCK = "Prototype explanations"
HEADERS = ("", "id", "class", "sim.", "share", "source")
CLASS_COLUMN, SOURCE_COLUMN = 2, 5
#: Widths (px): the source column never narrower than this; the class column at most this (elided, tooltip).
SOURCE_MIN_WIDTH = 210
CLASS_MAX_WIDTH = 100
#: Heatmap layers: opacity and blending over the gray image (the colormap's alpha rises from 0).
HEAT_OPACITY = 0.9
HEAT_BLENDING = "translucent"
PHANTOM_TIP = "a synthetic phantom: a simulated brain with a tumour, not a patient"


def heatmap_layer_name(pid: int, view: str) -> str:
    """Name of prototype ``pid``'s heatmap layer showing ``view`` (e.g. ``plane 40``, ``inside the predicted
    region + 5 mm``, ``whole volume, unrestricted``)."""
    return f"prototype #{pid} heatmap ({view})"


def heat_colormap() -> Any:
    """Transparent at 0, then red, orange and light yellow with rising opacity (a napari ``Colormap``)."""
    from napari.utils.colormaps import Colormap

    colors = [[1.0, 0.1, 0.0, 0.0], [1.0, 0.15, 0.0, 0.45], [1.0, 0.55, 0.0, 0.85], [1.0, 1.0, 0.45, 1.0]]
    return Colormap(colors=colors, controls=[0.0, 0.2, 0.55, 1.0], name="medadapt heat")


def heat_kwargs(name: str, spacing: Sequence[float], model: str, part: str) -> dict[str, Any]:
    """``viewer.add_image`` keyword arguments of a heatmap or evidence layer (marked as a result of the dock)."""
    kwargs = {"name": name, "scale": tuple(spacing), "colormap": heat_colormap(), "contrast_limits": (0.0, 1.0),
              "opacity": HEAT_OPACITY, "blending": HEAT_BLENDING}  # fmt: skip
    return mark_result(kwargs, DOCK, model, part)


def dock_layers(viewer: Any, part: str) -> list[Any]:
    """The dock's result layers (:func:`~napari_medadapt.widgets._layers.mark_result`) of ``part`` (``"evidence"``,
    ``"heatmap #3"``, ...); a ``part`` ending in ``#`` stands for every id (``"heatmap #"``: every heatmap)."""
    found = []
    for layer in viewer.layers:
        entry = (layer.metadata or {}).get("medadapt") or {}
        name = str(entry.get("part", ""))
        if entry.get("dock") == DOCK and (name == part or (part.endswith("#") and name.startswith(part))):
            found.append(layer)
    return found


def short_source(source: dict[str, Any]) -> str:
    """The table's source text: ``synthetic phantom 73, plane 6`` (the patch centre is in the tooltip)."""
    case = f"synthetic {source['case']}" if "phantom_seed" in source else str(source["case"])
    return f"{case}, plane {source['plane']}"


def _pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class PrototypeTable(QTableWidget):
    """The prototypes of an explanation, one row each; every cell holds the prototype id (``UserRole``)."""

    def __init__(self) -> None:
        super().__init__(0, len(HEADERS))
        self.setHorizontalHeaderLabels(HEADERS)
        self.horizontalHeaderItem(1).setToolTip("Prototype id (as in the heatmap layers' names)")
        self.horizontalHeaderItem(3).setToolTip("Similarity: cosine similarity of the target's features to the prototype (1: identical)")
        self.horizontalHeaderItem(4).setToolTip(
            "Share of the predicted class's score this prototype carries ('-': a prototype of another class)"
        )
        self.horizontalHeaderItem(SOURCE_COLUMN).setToolTip(
            f"The training patch the prototype stands for (case, plane, centre); 'synthetic phantom': {PHANTOM_TIP}"
        )
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setIconSize(QSize(64, 64))
        self.verticalHeader().setVisible(False)
        self.setMinimumHeight(240)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # "synthetic ph...(y 113, x 72)": both ends readable
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        header = self.horizontalHeader()
        header.setStretchLastSection(True)  # the source column takes the width left
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.resizeColumnsToContents()  # the headers' widths: the dock opens wide enough for a readable source
        self.setColumnWidth(0, self.iconSize().width() + 8)
        self.setColumnWidth(CLASS_COLUMN, CLASS_MAX_WIDTH)
        self._fit_minimum()

    def show_matches(self, matches: Iterable[Any], bank: Any, forgotten: Iterable[int]) -> None:
        """Fill the table with ``matches`` (:class:`~napari_medadapt.core.explain.PrototypeMatch`) of ``bank``."""
        from napari_medadapt.core.explain.report import thumbnail

        forgotten = set(forgotten)
        self.setRowCount(0)
        for match in matches:
            row = self.rowCount()
            self.insertRow(row)
            icon = QTableWidgetItem()
            icon.setIcon(QIcon(_pixmap(thumbnail(bank, match.id, zoom=2))))
            share = "-" if match.share is None else f"{match.share:.0%}"
            source = short_source(match.source)
            cells = [icon, f"#{match.id}" + (" (forgotten)" if match.id in forgotten else ""), match.class_name,
                     f"{match.similarity:.3f}", share, source]
            for column, cell in enumerate(cells):
                item = cell if isinstance(cell, QTableWidgetItem) else QTableWidgetItem(cell)
                item.setData(Qt.ItemDataRole.UserRole, match.id)
                self.setItem(row, column, item)
            self.item(row, CLASS_COLUMN).setToolTip(match.class_name)
            full = source_text(match.source)
            tip = f"{full}: {PHANTOM_TIP}" if "phantom_seed" in match.source else full
            self.item(row, SOURCE_COLUMN).setToolTip(tip)
            self.setRowHeight(row, 68)
        self.fit_columns()

    def fit_columns(self) -> None:
        """Columns to their contents (the class column at most :data:`CLASS_MAX_WIDTH`), the source column at
        least :data:`SOURCE_MIN_WIDTH`; the table is never narrower than that."""
        self.resizeColumnsToContents()
        self.setColumnWidth(CLASS_COLUMN, min(self.columnWidth(CLASS_COLUMN), CLASS_MAX_WIDTH))
        fixed = sum(self.columnWidth(c) for c in range(SOURCE_COLUMN))
        self.setColumnWidth(SOURCE_COLUMN, max(SOURCE_MIN_WIDTH, self.viewport().width() - fixed))
        self._fit_minimum()

    def _fit_minimum(self) -> None:
        """Never narrower than the other columns and :data:`SOURCE_MIN_WIDTH` (the dock widens to fit)."""
        fixed = sum(self.columnWidth(c) for c in range(SOURCE_COLUMN))
        scrollbar = self.verticalScrollBar().sizeHint().width()
        wanted = fixed + SOURCE_MIN_WIDTH + 2 * self.frameWidth() + scrollbar + 4
        if wanted > self.minimumWidth():
            self.setMinimumWidth(wanted)
            self.updateGeometry()

    def mark_forgotten(self, forgotten: Iterable[int]) -> None:
        """Mark the forgotten prototypes in the id column."""
        forgotten = set(forgotten)
        for row in range(self.rowCount()):
            item = self.item(row, 1)
            pid = int(item.data(Qt.ItemDataRole.UserRole))
            item.setText(f"#{pid}" + (" (forgotten)" if pid in forgotten else ""))

    def selected_ids(self) -> list[int]:
        """Prototype ids of the selected rows."""
        rows = sorted({index.row() for index in self.selectedIndexes()})
        return [int(self.item(row, 1).data(Qt.ItemDataRole.UserRole)) for row in rows]
