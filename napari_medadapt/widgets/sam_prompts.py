"""Layers <-> Segment Anything prompts for the SAM dock: points and boxes per slice.

A prompt belongs to the slice it was placed on, in the plane napari displayed at that moment: the points of
the "SAM prompts" layer are the clicks of :mod:`napari_medadapt.widgets._keypoints` (features ``positive`` and
``plane``); a box of the "SAM boxes" layer is a rectangle whose four corners share one
coordinate, which gives its plane and slice. All coordinates are turned into voxel indices of the chosen
image layer through world coordinates, so prompt layers made on the image's grid work at any zoom.
Slices are always the 2D arrays ``np.take(volume, index, axis)`` (remaining axes in ascending order), the
same arrays ``np.moveaxis(volume, axis, 0)[index]`` that precomputation and propagation use, so cached
embeddings are shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medadapt.core.errors import PromptError, VolumeError
from napari_medadapt.core.sam.prompts import Plane, Prompts
from napari_medadapt.widgets._keypoints import (
    check_prompt_layer,
    grid_kwargs,
    read_points,
    to_image_voxels,
)
from napari_medadapt.widgets._layers import layer_modality

POINTS_LAYER = "SAM prompts"
BOXES_LAYER = "SAM boxes"
PREVIEW_LAYER = "SAM preview"
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


def fill_image_combo(combo: Any, viewer: Any) -> None:
    """Offer the viewer's image layers that are not results in ``combo`` (no signal), keeping the current choice,
    else :func:`default_image`."""
    from napari.layers import Image

    from napari_medadapt.widgets._layers import is_result_layer

    images = [layer for layer in viewer.layers if isinstance(layer, Image) and not is_result_layer(layer)]
    names = [layer.name for layer in images]
    previous = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if previous in names:
        combo.setCurrentText(previous)
    elif images:
        combo.setCurrentText(default_image(images))
    combo.blockSignals(False)


def point_prompts(layer: Any, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points as image voxels ``(N, 3)``, their labels (1/0) and planes (image axis), checked."""
    voxels, positive, plane = read_points(layer, image)
    return voxels, positive.astype(np.int64), plane


def shape_on_slice(layer: Any, image: Any, number: int) -> tuple[Plane, np.ndarray] | None:
    """Shape ``number`` of a Shapes layer as the plane it was drawn on and its vertices ``(N, 2)`` as ``(row, col)``
    of that plane's slice, clipped to the image (``None`` for a shape without area yet: the first moment of drawing
    one); raises :class:`PromptError` for a shape across slices or outside the image."""
    voxels = to_image_voxels(layer, image, np.asarray(layer.data[number]))
    flat = np.flatnonzero(np.ptp(voxels, axis=0) < 1e-6)
    if flat.size > 1:
        return None
    if flat.size == 0:
        raise PromptError(f"Shape #{number + 1} is not drawn on one slice; draw it in the 2D view.")
    plane = Plane(int(flat[0]), int(np.rint(voxels[0, flat[0]])))
    if not 0 <= plane.index < image.data.shape[plane.axis]:
        raise PromptError(f"Shape #{number + 1} lies outside image {image.name!r}; draw it on the image.")
    rows, cols = plane.in_plane_axes  # a shape dragged past the image's edge is clipped to it
    r = np.clip(voxels[:, rows], 0, image.data.shape[rows] - 1)
    c = np.clip(voxels[:, cols], 0, image.data.shape[cols] - 1)
    return plane, np.stack([r, c], axis=1)


def box_prompts(layer: Any, image: Any) -> list[tuple[int, int, tuple[float, float, float, float]]]:
    """Rectangles as ``(axis, slice index, (r0, c0, r1, c1))`` in slice coordinates, in drawing order."""
    check_prompt_layer(layer, image)
    boxes = []
    for number, kind in enumerate(layer.shape_type):
        placed = shape_on_slice(layer, image, number) if kind == "rectangle" else None
        if placed is not None:
            plane, rc = placed
            boxes.append((plane.axis, plane.index, (rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max())))
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


def add_boxes_layer(viewer: Any, image: Any) -> Any:
    """Create the "SAM boxes" Shapes layer (rectangles) on ``image``'s grid."""
    layer = viewer.add_shapes(
        ndim=3,
        name=BOXES_LAYER,
        shape_type="rectangle",
        edge_color="yellow",
        face_color="transparent",
        edge_width=1,
        **grid_kwargs(image),
    )
    return layer
