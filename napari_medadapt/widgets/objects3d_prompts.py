"""The prompt layers of the 3D objects dock: clicks, boxes and lassos, scribbles; each edit read back as the
interactions it adds (what the dock already used is remembered, and the dock empties a layer without that
counting as an edit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_medadapt.core.interactive import Click, Lasso, Scribble
from napari_medadapt.widgets import sam_prompts as sp
from napari_medadapt.widgets._keypoints import KeypointLayer, PolarityPanel
from napari_medadapt.widgets._layers import grid_of

CLICKS_LAYER = "object clicks"
SHAPES_LAYER = "object boxes and lassos"
SCRIBBLES_LAYER = "object scribbles"


class ObjectPromptLayers:
    """The three prompt layers of one dock, looked up by name (the user may delete and the dock re-create them).

    Parameters
    ----------
    viewer
        The dock's viewer.
    polarity
        The dock's polarity panel (clicks and lassos).
    on_clicks, on_shapes, on_scribbles
        Called (no arguments) when the user edited that layer.
    """

    def __init__(self, viewer: Any, polarity: PolarityPanel, on_clicks: Callable[[], None],
                 on_shapes: Callable[[], None], on_scribbles: Callable[[], None]) -> None:
        self.viewer, self.polarity = viewer, polarity
        self.points = KeypointLayer(viewer, CLICKS_LAYER, polarity, lambda event: self._edited(on_clicks),
                                    sp.POINT_SIZE)
        self._on_shapes, self._on_scribbles = on_shapes, on_scribbles
        self._clicks_seen = 0
        self._shapes_seen = 0
        self._quiet = False  # the dock itself is emptying a layer
        self._connected: set[Any] = set()  # unique_id of the layers whose events are connected

    def layer(self, name: str) -> Any:
        """The layer ``name``, or ``None``."""
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _edited(self, callback: Callable[[], None], event: Any = None) -> None:
        if not self._quiet and not str(getattr(event, "action", "")).endswith("ing"):
            callback()

    def ensure(self, image: Any) -> Any:
        """The three layers on ``image``'s grid (created when absent); returns the box/lasso layer, selected in
        rectangle mode."""
        shapes = self.layer(SHAPES_LAYER)
        if shapes is None:
            shapes = sp.add_boxes_layer(self.viewer, image)
            shapes.name = SHAPES_LAYER
        if self.layer(SCRIBBLES_LAYER) is None:
            scribbles = self.viewer.add_labels(np.zeros(image.data.shape, np.uint8), name=SCRIBBLES_LAYER,
                                               opacity=0.7, **grid_of(image))
            scribbles.brush_size = 3
        self.points.ensure(image)
        self.connect()
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        return shapes

    def connect(self) -> None:
        """Connect the edit events of the layers present (once per layer)."""
        self.points.connect()
        for name, event, callback in ((SHAPES_LAYER, "data", self._on_shapes),
                                      (SCRIBBLES_LAYER, "paint", self._on_scribbles)):
            layer = self.layer(name)
            if layer is not None and layer.unique_id not in self._connected:
                getattr(layer.events, event).connect(lambda e, callback=callback: self._edited(callback, e))
                self._connected.add(layer.unique_id)

    def new_clicks(self, image: Any) -> list[Click]:
        """The clicks added since the last call (a removed point is only a marker gone: Undo undoes)."""
        voxels, positive, plane = self.points.read(image, "Click")
        new = range(self._clicks_seen, len(voxels))
        self._clicks_seen = len(voxels)
        return [Click(tuple(int(v) for v in np.rint(voxels[i])), bool(positive[i]), int(plane[i])) for i in new]

    def new_shapes(self, image: Any) -> list[tuple[str, Any, np.ndarray]]:
        """The shapes drawn since the last call with area: ``(shape type, plane, (N, 2) row/col vertices)``;
        raises :class:`PromptError` for one across slices or off the image."""
        layer = self.layer(SHAPES_LAYER)
        if layer is None:
            return []
        count = len(layer.data)
        new = range(self._shapes_seen, count)
        self._shapes_seen = count
        out = []
        for number in new:
            placed = sp.shape_on_slice(layer, image, number)
            if placed is not None:
                out.append((layer.shape_type[number], *placed))
        return out

    @staticmethod
    def lasso(plane: Any, rc: np.ndarray, positive: bool) -> Lasso:
        """A drawn polygon as the interaction."""
        return Lasso(plane.index, tuple((float(r), float(c)) for r, c in rc), positive, plane.axis)

    def take_scribbles(self, axis: int) -> list[Scribble]:
        """The painted voxels as scribbles (label 1 the object, 2 not the object), then the layer emptied."""
        layer = self.layer(SCRIBBLES_LAYER)
        if layer is None:
            return []
        data = np.asarray(layer.data)
        painted = [(data == value, positive) for value, positive in ((1, True), (2, False))]
        out = [Scribble(mask, positive, axis) for mask, positive in painted if mask.any()]
        self.empty(SCRIBBLES_LAYER)
        return out

    def regrid(self, image: Any) -> None:
        """Put every prompt layer on ``image``'s grid, emptied (the scribble layer takes its shape)."""
        from napari_medadapt.widgets._keypoints import put_on_grid

        for name in (CLICKS_LAYER, SHAPES_LAYER):
            self.empty(name)
        scribbles = self.layer(SCRIBBLES_LAYER)
        if scribbles is not None and getattr(image, "ndim", 0) != 3:
            self.empty(SCRIBBLES_LAYER)
        elif scribbles is not None:  # a new empty volume on the image's grid
            self._quiet = True
            try:
                scribbles.data = np.zeros(image.data.shape, np.uint8)
                for key, value in grid_of(image).items():
                    setattr(scribbles, key, value)
            finally:
                self._quiet = False
        for name in (CLICKS_LAYER, SHAPES_LAYER):
            layer = self.layer(name)
            if layer is not None:
                put_on_grid(layer, image)

    def empty(self, name: str) -> None:
        """Empty layer ``name`` (no edit is reported)."""
        layer = self.layer(name)
        if layer is None:
            return
        self._quiet = True
        try:
            if name == SHAPES_LAYER:
                layer.data = []
                self._shapes_seen = 0
            elif name == CLICKS_LAYER:
                self.points.clear()
                self._clicks_seen = 0
            else:
                layer.data = np.zeros_like(layer.data)
        finally:
            self._quiet = False

    def drop_lassos(self) -> None:
        """Remove the polygons already applied (a rectangle waiting for Segment box stays)."""
        layer = self.layer(SHAPES_LAYER)
        polygons = set() if layer is None else {i for i, kind in enumerate(layer.shape_type) if kind != "rectangle"}
        if not polygons:
            return
        self._quiet = True
        try:
            layer.selected_data = polygons
            layer.remove_selected()
            self._shapes_seen = len(layer.data)
        finally:
            self._quiet = False
