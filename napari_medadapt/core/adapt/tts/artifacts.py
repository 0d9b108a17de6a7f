"""Synthetic acquisition artifacts for the TTS "trap set": bright fiducial markers and ruler-like stripes.

The trap protocol (METHODS section 2): train where an artifact correlates with the label, test where the
correlation is broken. Here a bright marker (a disc, like a skin fiducial) or a ruler-like stripe (a line
with tick marks) is painted *on the tumour* in training slices (and the annotation covers it), so a model
learns to fire on it; test slices carry the same artifact *away from* the tumour.

Functions work on one 2D slice ``(C, Y, X)`` and return boolean masks of the painted pixels, so benchmarks
can measure the false-positive volume on the artifact. Everything is seeded through ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ARTIFACT_KINDS: tuple[str, ...] = ("marker", "ruler")


def marker_mask(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disc of ``radius`` pixels around ``centre`` ``(y, x)``."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ruler_mask(
    shape: tuple[int, int], centre: tuple[float, float], length: float, angle: float, tick_every: float
) -> np.ndarray:
    """Boolean ruler: a 1-2 pixel line of ``length`` through ``centre`` at ``angle`` (radians), with ticks."""
    mask = np.zeros(shape, dtype=bool)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    steps = np.arange(-length / 2.0, length / 2.0 + 0.25, 0.5)
    points = [np.asarray(centre) + s * direction for s in steps]
    tick_length = max(2.0, tick_every * 0.6)
    for s in np.arange(-length / 2.0, length / 2.0 + 1e-6, tick_every):
        base = np.asarray(centre) + s * direction
        points += [base + t * normal for t in np.arange(0.0, tick_length + 0.25, 0.5)]
    index = np.rint(np.asarray(points)).astype(int)
    inside = (index[:, 0] >= 0) & (index[:, 0] < shape[0]) & (index[:, 1] >= 0) & (index[:, 1] < shape[1])
    mask[index[inside, 0], index[inside, 1]] = True
    return mask


def random_artifact_mask(
    shape: tuple[int, int],
    centre: tuple[float, float],
    rng: np.random.Generator,
    scale: float = 1.0,
    kind: str | None = None,
) -> np.ndarray:
    """A marker or ruler (``kind``, random when ``None``) centred at ``centre``; sizes scale with ``scale``.

    ``scale`` is pixels per 2 mm: 1.0 on a 2 mm grid, 2.0 on a 1 mm grid (lines are then 2-3 pixels wide).
    """
    kind = kind if kind is not None else ARTIFACT_KINDS[int(rng.integers(len(ARTIFACT_KINDS)))]
    if kind == "marker":
        return marker_mask(shape, centre, radius=float(rng.uniform(2.0, 3.0)) * scale)
    if kind == "ruler":
        mask = ruler_mask(
            shape,
            centre,
            length=float(rng.uniform(12.0, 20.0)) * scale,
            angle=float(rng.uniform(0.0, np.pi)),
            tick_every=3.0 * scale,
        )
        return ndimage.binary_dilation(mask, iterations=int(scale // 2)) if scale >= 2 else mask
    raise ValueError(f"unknown artifact kind {kind!r}; use one of {ARTIFACT_KINDS}")


def paint(image: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    """Copy of ``image`` ``(C, Y, X)`` with ``value`` (scalar or per channel) written under ``mask``."""
    out = np.array(image, dtype=np.float32, copy=True)
    values = np.broadcast_to(np.asarray(value, dtype=np.float32), (out.shape[0],))
    for c in range(out.shape[0]):
        out[c][mask] = values[c]
    return out


def centre_on_target(target: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    """A random pixel well inside ``target`` (its inner half by distance to the edge), or ``None`` if empty."""
    if not target.any():
        return None
    depth = ndimage.distance_transform_edt(target)
    inner = depth >= max(1.0, 0.5 * depth.max())
    candidates = np.argwhere(inner)
    y, x = candidates[int(rng.integers(len(candidates)))]
    return float(y), float(x)


def centre_away_from(
    target: np.ndarray, brain: np.ndarray, rng: np.random.Generator, min_distance: float, margin: float = 0.0
) -> tuple[float, float] | None:
    """A random brain pixel at least ``min_distance`` pixels from ``target`` and ``margin`` inside the brain."""
    allowed = brain.copy()
    if margin > 0:
        allowed &= ndimage.distance_transform_edt(brain) >= margin
    if target.any():
        allowed &= ndimage.distance_transform_edt(~target) >= min_distance
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        return None
    y, x = candidates[int(rng.integers(len(candidates)))]
    return float(y), float(x)
