"""Small rules of :class:`~.engine.SliceEngine` on one slice: where a click's change is, which part of the object's
box a negative click leaves, how large the object is near a slice or on one."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..sam.prompts import box_from_mask
from .interactions import Click


def near_click(old: np.ndarray, pred: np.ndarray, click: Click, reach: int, whole_when_none: bool) -> np.ndarray:
    """The clicked slice changed only where the click is: the added (positive) or removed (negative) regions of the
    answer ``pred`` that come within ``reach`` voxels of the click; when none does, the answer as it is
    (``whole_when_none``) or ``old`` unchanged."""
    change = (pred & ~old) if click.positive else (old & ~pred)
    regions, _ = ndimage.label(change)
    r, c = click.zyx[1], click.zyx[2]
    ids = np.unique(regions[max(0, r - reach): r + reach + 1, max(0, c - reach): c + reach + 1])
    ids = ids[ids != 0]
    if ids.size == 0 and whole_when_none:
        return pred
    keep = np.isin(regions, ids)
    return (old | keep) if click.positive else (old & ~keep)


def size_near(mask: np.ndarray, z: int) -> int:
    """The area of the 3D ``mask`` on slice ``z``, or on the nearest slice that holds it (0 for an empty mask)."""
    areas = mask.sum(axis=(1, 2))
    held = np.flatnonzero(areas)
    if held.size == 0:
        return 0
    return int(areas[held[np.argmin(np.abs(held - z))]])


def slice_size(mask: np.ndarray, rect: tuple[int, int, int, int] | None) -> int | None:
    """The size of an object on a slice: the area of its box's rectangle ``rect`` (``(r0, c0, r1, c1)``, inclusive),
    without a box its 3D ``mask``'s largest slice; ``None`` for an empty object without a box."""
    if rect is not None:
        r0, c0, r1, c1 = rect
        return int((r1 - r0 + 1) * (c1 - c0 + 1))
    if mask.any():
        return int(mask.sum(axis=(1, 2)).max())
    return None


def box_cut_at(mask: np.ndarray, rc: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The part of the 2D ``mask``'s box beside the row or column through ``rc`` (above, below, left or right of it)
    that holds most of the mask, as ``(r0, c0, r1, c1)``; ``None`` when no part is at least 2 x 2 pixels."""
    box = box_from_mask(mask)
    if box is None:
        return None
    r0, c0, r1, c1 = (int(v) for v in box)
    r, c = rc
    best, most = None, -1
    for part in ((r0, c0, r - 1, c1), (r + 1, c0, r1, c1), (r0, c0, r1, c - 1), (r0, c + 1, r1, c1)):
        if part[2] - part[0] < 1 or part[3] - part[1] < 1:
            continue
        held = int(mask[part[0]: part[2] + 1, part[1]: part[3] + 1].sum())
        if held > most:
            best, most = part, held
    return None if best is None else tuple(float(v) for v in best)
