"""One Points layer of positive and negative clicks, shared by the docks that take keypoints or prompts.

A dock's :class:`KeypointLayer` owns one napari Points layer on the chosen image's grid. Every point carries
two features: ``positive`` (bool; green disc or magenta cross) and ``plane`` (the image axis across the slices
it was placed in: 0 axial, 1 coronal, 2 sagittal in the display array), so clicks work in any displayed plane.
The polarity of the next click comes from a :class:`PolarityPanel` (``T`` on the layer toggles it). Points
become voxel indices of the image through napari's own ``data_to_world`` / ``world_to_data`` transforms, and
are checked to belong to the image (made on its grid, inside it) with a message that names the point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QRadioButton, QWidget

from napari_medadapt.core.errors import PromptError, VolumeError
from napari_medadapt.core.sam.prompts import Plane
from napari_medadapt.widgets._layers import grid_of, layer_geometry, prompt_metadata

POSITIVE_STYLE = {"symbol": "disc", "face_color": "lime", "border_color": "white"}
NEGATIVE_STYLE = {"symbol": "x", "face_color": "magenta", "border_color": "magenta"}


def current_plane(viewer: Any, image: Any) -> Plane:
    """The plane and slice napari displays, as an axis and slice index of ``image``'s array."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise PromptError("Clicks are placed in the 2D view: switch the viewer to 2D (Ctrl+Y).")
    offset = dims.ndim - 3
    hidden = [d - offset for d in dims.not_displayed if d - offset >= 0]
    if len(hidden) != 1:
        raise PromptError(f"Show one plane of image {image.name!r} (2 of its 3 axes) to place clicks.")
    axis = hidden[0]
    index = int(np.rint(image.world_to_data(np.asarray(dims.point)[-3:])[axis]))
    size = image.data.shape[axis]
    if not 0 <= index < size:
        raise PromptError(
            f"The displayed slice ({index} along axis {axis}) is outside image {image.name!r} (0-{size - 1}); "
            "move the slider onto the image."
        )
    return Plane(axis, index)


def grid_kwargs(image: Any) -> dict[str, Any]:
    """``scale``, ``translate``, ``affine`` and metadata that put a click layer on ``image``'s grid."""
    geometry, shape = layer_geometry(image), tuple(int(s) for s in image.data.shape)
    return {**grid_of(image), "metadata": prompt_metadata(geometry=geometry, shape=shape)}


def put_on_grid(layer: Any, image: Any) -> None:
    """Put an (emptied) click or box layer on ``image``'s grid (nothing for a non-3D image)."""
    if image is not None and getattr(image, "ndim", 0) == 3:
        for key, value in grid_kwargs(image).items():
            setattr(layer, key, value)


def check_prompt_layer(layer: Any, image: Any) -> None:
    """Raise :class:`VolumeError` when a click layer is not 3D or was made for another image grid."""
    if layer.ndim != 3:
        raise VolumeError(
            f"Layer {layer.name!r} is {layer.ndim}D; clicks must be 3D (they belong to a slice of the volume). "
            "Delete the layer (or press Clear/Reset) to recreate it on the image's grid."
        )
    meta = (layer.metadata or {}).get("medadapt") or {}
    shape, geometry = meta.get("shape"), meta.get("geometry")
    image_geometry = layer_geometry(image)
    other_shape = shape is not None and tuple(shape) != tuple(image.data.shape)
    other_grid = geometry is not None and image_geometry is not None and not geometry.matches(image_geometry)
    if other_shape or other_grid:
        made_for = geometry.describe() if geometry is not None else f"shape {tuple(shape)}"
        raise VolumeError(
            f"Layer {layer.name!r} holds clicks placed on another volume ({made_for}) than image {image.name!r} "
            f"(shape {image.data.shape}). Press Clear/Reset to start over on this image, or choose the other image."
        )


def to_image_voxels(layer: Any, image: Any, coords: np.ndarray) -> np.ndarray:
    """Coordinates of ``layer``'s data ``(N, 3)`` as (fractional) voxel indices of ``image``."""
    return np.array(
        [image.world_to_data(layer.data_to_world(c)) for c in np.asarray(coords, float)], float
    ).reshape(-1, 3)


def check_inside(voxels: np.ndarray, image: Any, what: str) -> None:
    """Raise :class:`PromptError` naming the first of ``voxels`` outside ``image``."""
    shape = np.asarray(image.data.shape[-3:])
    outside = np.any((np.rint(voxels) < 0) | (np.rint(voxels) >= shape), axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        where = ", ".join(f"{v:.0f}" for v in voxels[k])
        raise PromptError(
            f"{what} #{k + 1} (voxel z, y, x = {where}) lies outside image {image.name!r} of shape "
            f"{tuple(int(s) for s in shape)}. Select it and press Delete, or place it on the image."
        )


def read_points(layer: Any, image: Any, what: str = "Point") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A click layer's points as voxel indices of ``image`` ``(N, 3)``, polarity (bool) and plane, checked."""
    check_prompt_layer(layer, image)
    data = np.asarray(layer.data, float).reshape(-1, 3)
    voxels = to_image_voxels(layer, image, data)
    check_inside(voxels, image, what)
    features = layer.features
    positive = features["positive"].to_numpy(bool) if "positive" in features else np.ones(len(data), bool)
    plane = features["plane"].to_numpy(int) if "plane" in features else np.zeros(len(data), int)
    return voxels, positive, plane


def set_point_defaults(layer: Any, positive: bool, plane: int) -> None:
    """Make the next point positive (green disc) or negative (magenta cross), placed in ``plane``.

    The layer's selection is cleared first so that existing points keep their polarity.
    """
    style = POSITIVE_STYLE if positive else NEGATIVE_STYLE
    layer.selected_data = set()
    layer.feature_defaults = {"positive": bool(positive), "plane": int(plane)}
    layer.current_symbol = style["symbol"]
    layer.current_face_color = style["face_color"]
    layer.current_border_color = style["border_color"]


class PolarityPanel(QWidget):
    """Positive / negative choice for the next click; emits ``changed`` when it flips."""

    changed = Signal()

    def __init__(self, positive_tip: str, negative_tip: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        self.positive_radio.setToolTip(positive_tip + " ('T' on the layer toggles)")
        self.negative_radio.setToolTip(negative_tip + " ('T' on the layer toggles)")
        self._group = QButtonGroup(self)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for button in (self.positive_radio, self.negative_radio):
            self._group.addButton(button)
            row.addWidget(button)
        row.addWidget(QLabel("(T toggles)"))
        self.positive_radio.toggled.connect(lambda *_: self.changed.emit())

    @property
    def positive(self) -> bool:
        """Polarity of the next click."""
        return self.positive_radio.isChecked()

    def toggle(self, *_: Any) -> None:
        """Switch the next click between positive and negative."""
        (self.negative_radio if self.positive else self.positive_radio).setChecked(True)


class KeypointLayer:
    """The click layer of one dock: created on the image's grid, kept in step with the polarity panel and
    the displayed plane, read back as checked voxel indices.

    Parameters
    ----------
    viewer
        The dock's viewer (a proxy viewer is fine: the layer is looked up by name every time).
    name
        The layer's name.
    polarity
        The dock's :class:`PolarityPanel`.
    on_change
        Called with the event when points are edited (added, moved, deleted, polarity changed).
    size
        Point size in data units.
    """

    def __init__(
        self, viewer: Any, name: str, polarity: PolarityPanel, on_change: Callable[[Any], None], size: float = 5
    ) -> None:
        self.viewer, self.name, self.polarity, self.size = viewer, name, polarity, size
        self._on_change = on_change
        self._quiet = False  # clear() empties the layer without reporting an edit
        self._connected: set[Any] = set()  # unique_id of the layers whose events are connected
        polarity.changed.connect(self.apply_defaults)

    @property
    def layer(self) -> Any:
        """The Points layer, or ``None`` while there is none."""
        return self.viewer.layers[self.name] if self.name in self.viewer.layers else None

    def _plane_axis(self, image: Any) -> int | None:
        try:
            return current_plane(self.viewer, image).axis
        except PromptError:
            return None

    def ensure(self, image: Any) -> Any:
        """The layer, created on ``image``'s grid when absent; selected, in add mode."""
        import pandas as pd

        layer = self.layer
        if layer is None:
            features = pd.DataFrame({"positive": pd.Series(dtype=bool), "plane": pd.Series(dtype=int)})
            self.viewer.add_points(
                np.zeros((0, 3)), ndim=3, name=self.name, size=self.size, features=features, **grid_kwargs(image)
            )
            layer = self.layer
            set_point_defaults(layer, self.polarity.positive, self._plane_axis(image) or 0)
        self.connect()
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        return layer

    def connect(self, *_: Any) -> None:
        """Connect the layer's edit events and the ``T`` key (once per layer)."""
        layer = self.layer
        if layer is None or layer.unique_id in self._connected:
            return
        layer.events.data.connect(self._changed)
        layer.events.features.connect(self._changed)
        layer.bind_key("t", self.polarity.toggle, overwrite=True)
        self._connected.add(layer.unique_id)

    def _changed(self, event: Any) -> None:
        # napari reports "adding"/"changing"/"removing" before the edit itself: only the edit counts
        if not self._quiet and not str(getattr(event, "action", "")).endswith("ing"):
            self._on_change(event)

    def clear(self, image: Any = None) -> None:
        """Remove every point without reporting an edit; with ``image``, put the layer on its grid."""
        layer = self.layer
        if layer is None:
            return
        self._quiet = True
        try:
            layer.data = np.zeros((0, 3))
            put_on_grid(layer, image)
        finally:
            self._quiet = False
        self.apply_defaults()

    def apply_defaults(self, *_: Any) -> None:
        """Make the next click follow the polarity panel (in the plane of the last one)."""
        layer = self.layer
        if layer is not None:
            set_point_defaults(layer, self.polarity.positive, self._default_plane())

    def follow_plane(self, image: Any) -> None:
        """After the displayed plane changed: new clicks belong to it (existing ones keep theirs)."""
        layer, axis = self.layer, self._plane_axis(image) if image is not None else None
        if layer is not None and axis is not None and axis != self._default_plane():
            layer.feature_defaults = {"positive": self.polarity.positive, "plane": axis}

    def _default_plane(self) -> int:
        layer = self.layer
        return int(layer.feature_defaults["plane"][0]) if layer is not None else 0

    def read(self, image: Any, what: str = "Point") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(voxels (N, 3), positive (N,) bool, plane (N,) int)`` on ``image``; empty without a layer."""
        layer = self.layer
        if layer is None or len(layer.data) == 0:
            if layer is not None:
                check_prompt_layer(layer, image)
            return np.zeros((0, 3)), np.zeros(0, bool), np.zeros(0, int)
        return read_points(layer, image, what)
