"""Where heatmaps mark tissue, and the honest whole-volume view.

A prototype's similarity heatmap over a whole volume marks every voxel whose features resemble the prototype,
wherever it lies: tissue far from the explained object that merely looks alike (on the held-out glioma, most of
what the top prototypes mark over the volume lies outside the tumour they explain, while on the tumour's largest
plane most of it is inside). The dock therefore shows the whole-volume heatmaps *inside the explained object*
(the region explained, or the predicted region at the clicked voxel) grown by :data:`FOCUS_MARGIN_MM`, says so in
the layer names, and keeps the unrestricted view one click away.

Activation precision (MProtoNet's AP) is the share of the heatmap-marked tissue (min-max normalised, above 0.5)
inside the object; :func:`localisation` gives it over the whole volume and on the object's largest plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .attribution import activation_precision

#: Margin (mm) around the explained object kept in the whole-volume view: a few voxels of the context around
#: the object's border (fixed a priori, not tuned on any benchmark volume).
FOCUS_MARGIN_MM = 5.0


def focus_mask(obj: np.ndarray, spacing: Sequence[float], margin_mm: float = FOCUS_MARGIN_MM) -> np.ndarray:
    """The voxels within ``margin_mm`` of the object ``obj`` (bool, any dimensionality; ``spacing`` in mm per
    axis, so anisotropic grids keep a margin in millimetres)."""
    from scipy import ndimage

    obj = np.asarray(obj, dtype=bool)
    out = np.zeros(obj.shape, dtype=bool)
    if not obj.any():
        return out
    spacing = [float(s) for s in spacing][-obj.ndim:]
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    found = np.argwhere(obj)
    box = tuple(
        slice(max(int(lo) - p, 0), min(int(hi) + p + 1, n))
        for lo, hi, p, n in zip(found.min(0), found.max(0), pad, obj.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~obj[box], sampling=spacing)
    out[box] = distance <= margin_mm
    return out


def focus_text(description: str, margin_mm: float = FOCUS_MARGIN_MM) -> str:
    """What a restricted view shows, for layer names and the status: ``inside the predicted region + 5 mm``."""
    return f"inside the {description} + {margin_mm:g} mm"


def largest_plane(mask: np.ndarray) -> int:
    """The first-axis plane where ``mask`` (Z, Y, X) has the most voxels."""
    return int(np.argmax(np.asarray(mask, dtype=bool).reshape(len(mask), -1).sum(axis=1)))


def localisation(heatmap: np.ndarray, obj: np.ndarray, plane: int | None = None) -> dict[str, Any]:
    """Activation precision of ``heatmap`` (Z, Y, X) against the object ``obj``: over the whole volume and on one
    plane (default: the object's largest).

    Returns
    -------
    dict
        ``{"volume": AP, "plane": AP, "plane_index": z, "marked_volume": voxels, "marked_plane": pixels}`` (AP is
        NaN when nothing is marked).
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    obj = np.asarray(obj, dtype=bool)
    z = largest_plane(obj) if plane is None else int(plane)
    high, low = float(heat.max()), float(heat.min())
    marked = (heat - low) > 0.5 * (high - low) if high > low else np.zeros(heat.shape, bool)
    plane_heat = heat[z]
    plane_marked = (plane_heat - plane_heat.min()) > 0.5 * (plane_heat.max() - plane_heat.min()) if np.ptp(plane_heat) > 0 else np.zeros(plane_heat.shape, bool)
    return {
        "volume": round(activation_precision(heat, obj), 4),
        "plane": round(activation_precision(plane_heat, obj[z]), 4),
        "plane_index": z,
        "marked_volume": int(marked.sum()),
        "marked_plane": int(plane_marked.sum()),
    }
