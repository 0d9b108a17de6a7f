"""Panels of the 3D objects dock: the 3D box's slab and the object list (names, volumes in mL, undo), and its
result layer."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_medadapt.core.interactive import Box3D, ObjectsSnapshot
from napari_medadapt.widgets._layers import grid_of, labels_layer_kwargs, layer_geometry, mark_result


def objects_layer(viewer: Any, image: Any, name: str) -> Any:
    """The Labels layer ``name`` of the objects on ``image``'s grid: a result layer (never a model input), created
    (or made again for another grid) when needed, without taking the selection from the prompt layer in use."""
    import numpy as np

    from napari_medadapt.core.volume import Geometry

    layer = viewer.layers[name] if name in viewer.layers else None
    shape = image.data.shape
    if layer is not None and layer.data.shape == shape:
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    geometry = layer_geometry(image) or Geometry.from_display_grid(shape, tuple(image.scale), tuple(image.translate))
    kwargs = mark_result(labels_layer_kwargs(geometry, name=name), "objects3d", "", "objects")
    kwargs.update(grid_of(image))
    active = viewer.layers.selection.active  # keep clicking / drawing
    layer = viewer.add_labels(np.zeros(shape, np.uint16), opacity=0.5, **kwargs)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


class BoxSlabPanel(QGroupBox):
    """A 3D box: the rectangle the user drew on one slice, and the first and last slice of the object."""

    def __init__(self) -> None:
        super().__init__("3D box")
        self.rect_label = QLabel("Draw a rectangle around the object on its middle slice.")
        self.rect_label.setWordWrap(True)
        self.first_spin, self.last_spin = QSpinBox(), QSpinBox()
        self.first_here, self.last_here = QPushButton("here"), QPushButton("here")
        self.first_spin.setToolTip("The object's first slice (in the plane the box was drawn on)")
        self.last_spin.setToolTip("The object's last slice (in the plane the box was drawn on)")
        self.first_here.setToolTip("The slice shown now is the object's first")
        self.last_here.setToolTip("The slice shown now is the object's last")
        self.segment_button = QPushButton("Segment box")
        self.segment_button.setToolTip("Segment the object inside the box, from its first to its last slice")
        self.segment_button.setEnabled(False)
        form = QFormLayout(self)
        form.addRow(self.rect_label)
        for text, spin, here in (("first slice", self.first_spin, self.first_here),
                                 ("last slice", self.last_spin, self.last_here)):
            row = QHBoxLayout()
            row.addWidget(spin, 1)
            row.addWidget(here)
            form.addRow(text, row)
        form.addRow(self.segment_button)
        self._drawn: tuple[int, int, tuple[int, int, int, int]] | None = None

    def drawn(self, axis: int, index: int, rect: tuple[float, float, float, float], size: int, depth: int) -> None:
        """A rectangle was drawn on slice ``index`` of ``axis`` (``size`` slices); the slab starts ``depth``
        slices either side of it."""
        r0, c0, r1, c1 = (int(round(v)) for v in rect)
        self._drawn = (axis, index, (r0, c0, r1, c1))
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, size - 1)
        self.first_spin.setValue(max(0, index - depth))
        self.last_spin.setValue(min(size - 1, index + depth))
        plane = ("axial", "coronal", "sagittal")[axis]
        self.rect_label.setText(f"Box on {plane} slice {index}: set the object's first and last slice, then Segment box.")
        self.segment_button.setEnabled(True)

    def slab(self) -> tuple[int, int]:
        """``(first, last)`` slice of the slab, in order."""
        a, b = self.first_spin.value(), self.last_spin.value()
        return min(a, b), max(a, b)

    def box(self) -> Box3D | None:
        """The 3D box (``None`` before a rectangle was drawn)."""
        if self._drawn is None:
            return None
        axis, index, rect = self._drawn
        first, last = self.slab()
        return Box3D(min(first, index), max(last, index), index, rect, axis)

    def used(self) -> None:
        """The box was sent: the next one needs a new rectangle."""
        self._drawn = None
        self.segment_button.setEnabled(False)
        self.rect_label.setText("Draw a rectangle around the next object on its middle slice.")


class ObjectTable(QGroupBox):
    """The objects of the image: name (editable), volume in mL, interactions that can be undone; the selected row
    is the object the next click, scribble or lasso changes."""

    #: the user typed a new name: (object id, name)
    renamed = Signal(int, str)

    def __init__(self) -> None:
        super().__init__("Objects")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["name", "volume (mL)", "undo steps"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(110)
        self.new_button = QPushButton("New object")
        self.new_button.setToolTip("The next click, scribble or lasso starts a new object")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the selected object's last interaction")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected object")
        buttons = QHBoxLayout()
        for button in (self.new_button, self.undo_button, self.remove_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._ids: list[int] = []
        self._filling = False
        self.table.itemChanged.connect(self._item_changed)

    def show_snapshot(self, snapshot: ObjectsSnapshot, select: int | None) -> None:
        """List the snapshot's objects; select object ``select`` (if listed)."""
        self._filling = True
        try:
            self._ids = [o.id for o in snapshot.objects]
            self.table.setRowCount(len(snapshot.objects))
            for row, obj in enumerate(snapshot.objects):
                cells = (obj.name, f"{obj.millilitres:.2f}", str(obj.undo_steps))
                for col, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    if col:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self.table.setItem(row, col, item)
            if select in self._ids:
                self.table.selectRow(self._ids.index(select))
            else:
                self.table.clearSelection()
        finally:
            self._filling = False
        self.undo_button.setEnabled(bool(snapshot.objects))
        self.remove_button.setEnabled(bool(snapshot.objects))

    @property
    def selected(self) -> int | None:
        """The id of the selected object, or ``None``."""
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        return self._ids[min(rows)] if rows and min(rows) < len(self._ids) else None

    def rows(self) -> list[tuple[str, str, str]]:
        """The table's text, row by row."""
        return [tuple(self.table.item(r, c).text() for c in range(3)) for r in range(self.table.rowCount())]

    def _item_changed(self, item: Any) -> None:
        if not self._filling and item.column() == 0 and item.row() < len(self._ids):
            self.renamed.emit(self._ids[item.row()], item.text())
