"""Layers <-> Segment Anything prompts for the SAM dock: the displayed plane, points and boxes per slice.

A prompt belongs to the slice it was placed on, in the plane napari displayed at that moment: every point
of the "SAM prompts" layer carries the features ``positive`` (bool) and ``plane`` (the image axis across
the slices it was placed in); a box of the "SAM boxes" layer is a rectangle whose four corners share one
coordinate, which gives its plane and slice. All coordinates are turned into voxel indices of the chosen
image layer through world coordinates, so prompt layers made on the image's grid work at any zoom.
Slices are always the 2D arrays ``np.take(volume, index, axis)`` (remaining axes in ascending order), the
same arrays ``np.moveaxis(volume, axis, 0)[index]`` that precomputation and propagation use, so cached
embeddings are shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.sam import PromptError
from napari_medadapt.core.sam.prompts import Plane, Prompts
from napari_medadapt.widgets._layers import layer_geometry, layer_modality, prompt_metadata

POINTS_LAYER = "SAM prompts"
BOXES_LAYER = "SAM boxes"
PREVIEW_LAYER = "SAM preview"
SAM_LAYERS = (POINTS_LAYER, BOXES_LAYER, PREVIEW_LAYER)
POSITIVE_STYLE = {"symbol": "disc", "face_color": "lime", "border_color": "white"}
NEGATIVE_STYLE = {"symbol": "x", "face_color": "magenta", "border_color": "magenta"}
POINT_SIZE = 5


def check_image_layer(layer: Any) -> np.ndarray:
    """The 3D grayscale array of an image layer; :class:`VolumeError` for 2D, RGB, multi-channel data."""
    if layer is None:
        raise VolumeError("Open a 3D image (File > Open, or the glioma sample) and choose it as the image layer.")
    if getattr(layer, "multiscale", False):
        raise VolumeError(f"Layer {layer.name!r} is multiscale; open the volume as a single-scale image.")
    if getattr(layer, "rgb", False):
        raise VolumeError(
            f"Layer {layer.name!r} is an RGB image; Segment Anything prompts work on a grayscale 3D volume "
            "(one channel). Open the scan itself, not a screenshot or colour rendering."
        )
    data = np.asarray(layer.data)
    if data.ndim != 3:
        hint = (
            "a single 2D image cannot be propagated; open the whole volume"
            if data.ndim == 2
            else "split multi-channel or 4D data into one layer per channel (or per time point)"
        )
        raise VolumeError(
            f"Layer {layer.name!r} has {data.ndim}D data of shape {data.shape}; a 3D single-channel volume "
            f"(Z, Y, X) is needed: {hint}."
        )
    return data


def default_image(images: list[Any]) -> str:
    """The image offered first: FLAIR (a brain lesion's whole extent shows best on it), then CT, then the
    first visible image, then the first."""
    by_modality = {layer_modality(layer): layer.name for layer in reversed(images)}
    for modality in ("flair", "ct"):
        if modality in by_modality:
            return by_modality[modality]
    return next((layer.name for layer in images if layer.visible), images[0].name)


def current_plane(viewer: Any, image: Any) -> Plane:
    """The plane and slice napari displays, as an axis and slice index of ``image``'s array."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise PromptError("Segment Anything prompts work in the 2D view: switch the viewer to 2D (Ctrl+Y).")
    offset = dims.ndim - 3
    hidden = [d - offset for d in dims.not_displayed if d - offset >= 0]
    if len(hidden) != 1:
        raise PromptError(f"Show one plane of image {image.name!r} (2 of its 3 axes) to place prompts.")
    axis = hidden[0]
    position = image.world_to_data(np.asarray(dims.point)[-3:])
    index = int(np.rint(position[axis]))
    size = image.data.shape[axis]
    if not 0 <= index < size:
        raise PromptError(
            f"The displayed slice ({index} along axis {axis}) is outside image {image.name!r} (0-{size - 1}); "
            "move the slider onto the image."
        )
    return Plane(axis, index)


def _prompt_layer_metadata(image: Any) -> dict[str, Any]:
    return prompt_metadata(geometry=layer_geometry(image), shape=tuple(int(s) for s in image.data.shape))


def check_prompt_layer(layer: Any, image: Any) -> None:
    """Raise :class:`VolumeError` when a prompt layer was made for another image shape or geometry."""
    if layer.ndim != 3:
        raise VolumeError(
            f"Layer {layer.name!r} is {layer.ndim}D; prompts must be 3D (they belong to a slice of the volume). "
            "Press Clear to recreate it on the image's grid."
        )
    meta = (layer.metadata or {}).get("medadapt") or {}
    shape, geometry = meta.get("shape"), meta.get("geometry")
    image_geometry = layer_geometry(image)
    other_shape = shape is not None and tuple(shape) != tuple(image.data.shape)
    other_grid = geometry is not None and image_geometry is not None and not geometry.matches(image_geometry)
    if other_shape or other_grid:
        made_for = geometry.describe() if geometry is not None else f"shape {tuple(shape)}"
        raise VolumeError(
            f"Layer {layer.name!r} holds prompts placed on another volume ({made_for}) than image {image.name!r} "
            f"(shape {image.data.shape}). Press Clear to start over on this image, or choose the other image."
        )


def to_image_voxels(layer: Any, image: Any, coords: np.ndarray) -> np.ndarray:
    """Coordinates of ``layer``'s data ``(N, 3)`` as (fractional) voxel indices of ``image``."""
    return np.array(
        [image.world_to_data(layer.data_to_world(c)) for c in np.asarray(coords, float)], float
    ).reshape(-1, 3)


def _check_inside(voxels: np.ndarray, image: Any, what: str) -> None:
    shape = np.asarray(image.data.shape)
    outside = np.any((np.rint(voxels) < 0) | (np.rint(voxels) >= shape), axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        where = ", ".join(f"{v:.0f}" for v in voxels[k])
        raise PromptError(
            f"{what} #{k + 1} (voxel {where}) lies outside image {image.name!r} of shape "
            f"{tuple(int(s) for s in shape)}. "
            "Place prompts on the image, or remove that one."
        )


def point_prompts(layer: Any, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points as image voxels ``(N, 3)``, their labels (1/0) and planes (image axis), checked."""
    check_prompt_layer(layer, image)
    data = np.asarray(layer.data, float).reshape(-1, 3)
    voxels = to_image_voxels(layer, image, data)
    _check_inside(voxels, image, "Point")
    features = layer.features
    positive = features["positive"].to_numpy(bool) if "positive" in features else np.ones(len(data), bool)
    plane = features["plane"].to_numpy(int) if "plane" in features else np.zeros(len(data), int)
    return voxels, positive.astype(np.int64), plane


def box_prompts(layer: Any, image: Any) -> list[tuple[int, int, tuple[float, float, float, float]]]:
    """Rectangles as ``(axis, slice index, (r0, c0, r1, c1))`` in slice coordinates, in drawing order."""
    check_prompt_layer(layer, image)
    boxes = []
    for number, (vertices, kind) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        if kind != "rectangle":
            continue
        voxels = to_image_voxels(layer, image, vertices)
        _check_inside(np.clip(voxels, -0.5, np.asarray(image.data.shape) - 0.5), image, "Box")
        flat = np.flatnonzero(np.ptp(voxels, axis=0) < 1e-6)
        if flat.size > 1:
            continue  # a box without area (the first moment of drawing one) is no prompt yet
        if flat.size == 0:
            raise PromptError(f"Box #{number + 1} is not drawn on one slice; draw rectangles in the 2D view.")
        plane = Plane(int(flat[0]), int(np.rint(voxels[0, flat[0]])))
        if not 0 <= plane.index < image.data.shape[plane.axis]:
            raise PromptError(f"Box #{number + 1} lies outside image {image.name!r}; draw it on the image.")
        rows, cols = plane.in_plane_axes
        r, c = voxels[:, rows], voxels[:, cols]
        boxes.append((plane.axis, plane.index, (r.min(), c.min(), r.max(), c.max())))
    return boxes


def collect_prompts(points: Any | None, boxes: Any | None, image: Any, axis: int) -> dict[int, Prompts]:
    """``{slice index: Prompts}`` for every slice along ``axis`` that holds prompts placed in that plane.

    Only the most recently drawn box of a slice counts (SAM takes one box per object).
    """
    by_slice: dict[int, tuple[list, list, Any]] = {}
    plane_axes = Plane(axis, 0).in_plane_axes
    if points is not None and len(points.data):
        voxels, labels, planes = point_prompts(points, image)
        for voxel, label, plane in zip(voxels, labels, planes, strict=True):
            if plane != axis:
                continue
            entry = by_slice.setdefault(int(np.rint(voxel[axis])), ([], [], None))
            entry[0].append([voxel[plane_axes[0]], voxel[plane_axes[1]]])
            entry[1].append(int(label))
    if boxes is not None and len(boxes.data):
        for box_axis, index, box in box_prompts(boxes, image):
            if box_axis == axis:
                pts, labs, _ = by_slice.get(index, ([], [], None))
                by_slice[index] = (pts, labs, box)
    return {
        index: Prompts(np.asarray(pts, float).reshape(-1, 2), np.asarray(labs, np.int64), box)
        for index, (pts, labs, box) in by_slice.items()
    }


def add_points_layer(viewer: Any, image: Any, positive: bool, plane: int) -> Any:
    """Create the "SAM prompts" Points layer on ``image``'s grid (features ``positive`` and ``plane``)."""
    import pandas as pd

    layer = viewer.add_points(
        np.zeros((0, 3)),
        ndim=3,
        name=POINTS_LAYER,
        size=POINT_SIZE,
        features=pd.DataFrame({"positive": pd.Series(dtype=bool), "plane": pd.Series(dtype=int)}),
        **_grid_kwargs(image),
    )
    set_point_defaults(layer, positive, plane)
    return layer


def add_boxes_layer(viewer: Any, image: Any) -> Any:
    """Create the "SAM boxes" Shapes layer (rectangles) on ``image``'s grid."""
    layer = viewer.add_shapes(
        ndim=3,
        name=BOXES_LAYER,
        shape_type="rectangle",
        edge_color="yellow",
        face_color="transparent",
        edge_width=1,
        **_grid_kwargs(image),
    )
    return layer


def regrid(layer: Any, image: Any) -> None:
    """Put an (emptied) prompt layer on ``image``'s grid."""
    for key, value in _grid_kwargs(image).items():
        setattr(layer, key, value)


def _grid_kwargs(image: Any) -> dict[str, Any]:
    return {
        "scale": tuple(image.scale)[-3:],
        "translate": tuple(image.translate)[-3:],
        "metadata": _prompt_layer_metadata(image),
    }


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
