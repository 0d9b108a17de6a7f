"""Interactions on a 3D object: a 3D box, clicks, scribbles, a lasso, a given mask.

Coordinates are voxel indices of the volume ``(z, y, x)``: ``z`` is the slicing axis of a slice-wise engine, a
slice's rows are ``y`` and its columns ``x``. Each interaction turns into 2D prompts on the slices it touches
(sampled points, a box, a mask prompt) with the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box3D:
    """A 3D box: the 2D box ``rect = (r0, c0, r1, c1)`` (inclusive) drawn on slice ``z_mid``, the object lying
    between slices ``z_min`` and ``z_max`` (inclusive): its slab."""

    z_min: int
    z_max: int
    z_mid: int
    rect: tuple[int, int, int, int]

    @classmethod
    def from_dict(cls, d: dict) -> Box3D:
        """From the challenge's dict (``x`` = column, ``y`` = row)."""
        return cls(
            int(d["z_min"]), int(d["z_max"]), int(d["z_mid"]),
            (int(d["z_mid_y_min"]), int(d["z_mid_x_min"]), int(d["z_mid_y_max"]), int(d["z_mid_x_max"])),
        )

    def to_dict(self) -> dict[str, int]:
        """The challenge's dict."""
        r0, c0, r1, c1 = self.rect
        return {"z_min": self.z_min, "z_max": self.z_max, "z_mid": self.z_mid,
                "z_mid_x_min": c0, "z_mid_y_min": r0, "z_mid_x_max": c1, "z_mid_y_max": r1}


@dataclass(frozen=True)
class Click:
    """One click at voxel ``zyx``: ``positive`` (object here) or negative (not the object)."""

    zyx: tuple[int, int, int]
    positive: bool = True


@dataclass(frozen=True, eq=False)
class Scribble:
    """A painted 3D boolean mask (any slices): ``positive`` (object) or negative (background)."""

    mask: np.ndarray
    positive: bool = True


@dataclass(frozen=True, eq=False)
class Lasso:
    """A closed polygon ``[(row, col), ...]`` on slice ``z``: the outline of the object there (``positive``) or a
    region to remove from it."""

    z: int
    polygon: tuple[tuple[float, float], ...]
    positive: bool = True


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A whole 3D mask given for the object (e.g. the previous prediction, or a painted label)."""

    mask: np.ndarray


Interaction = Box3D | Click | Scribble | Lasso | MaskPrompt


@dataclass
class ObjectState:
    """One object: its current 3D mask and the interactions that made it (the newest last)."""

    mask: np.ndarray
    interactions: list = field(default_factory=list)

    @property
    def box(self) -> Box3D | None:
        """The newest 3D box, if any."""
        return next((i for i in reversed(self.interactions) if isinstance(i, Box3D)), None)

    def slab(self, depth: int) -> tuple[int, int]:
        """The slices the object may occupy: the box's ``z_min..z_max``; a positive click, scribble or lasso
        given since beyond one end opens the slab on that side (the box was too short there); the whole volume
        without a box."""
        box = self.box
        if box is None:
            return 0, depth - 1
        lo, hi = box.z_min, box.z_max
        for i in self.interactions[self.interactions.index(box) + 1:]:
            zs: list[int] = []
            if isinstance(i, Click) and i.positive:
                zs = [i.zyx[0]]
            elif isinstance(i, Lasso) and i.positive:
                zs = [i.z]
            elif isinstance(i, Scribble) and i.positive:
                zs = np.flatnonzero(i.mask.any(axis=(1, 2))).tolist()
            if zs and min(zs) < lo:  # the box was too short on that side: the object may go on past the click
                lo = 0
            if zs and max(zs) > hi:
                hi = depth - 1
        return max(0, lo), min(depth - 1, hi)

    def clicks_on(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Every click of the object on slice ``z``: ``(N, 2)`` (row, col) and ``(N,)`` labels 1/0."""
        pts = [(c.zyx[1], c.zyx[2], int(c.positive)) for c in self.interactions if isinstance(c, Click) and c.zyx[0] == z]
        if not pts:
            return np.zeros((0, 2)), np.zeros(0, np.int64)
        arr = np.asarray(pts, np.float64)
        return arr[:, :2], arr[:, 2].astype(np.int64)


def sample_points(region: np.ndarray, n: int = 3) -> np.ndarray:
    """Up to ``n`` ``(row, col)`` points spread over a 2D region: the deepest point first, then the voxels
    farthest from the points already chosen."""
    region = np.asarray(region, bool)
    if not region.any():
        return np.zeros((0, 2))
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    coords = np.argwhere(region)
    chosen = [coords[int(np.argmax(dist[region]))]]
    while len(chosen) < min(n, len(coords)):
        d = np.min([np.hypot(*(coords - c).T) for c in chosen], axis=0)
        if d.max() < 2:
            break
        chosen.append(coords[int(np.argmax(d))])
    return np.asarray(chosen, np.float64)


def polygon_mask(polygon: tuple[tuple[float, float], ...], shape: tuple[int, int]) -> np.ndarray:
    """The voxels of a slice of ``shape`` inside a ``(row, col)`` polygon (its outline included)."""
    from skimage.draw import polygon as fill
    from skimage.draw import polygon_perimeter

    pts = np.asarray(polygon, np.float64)
    out = np.zeros(shape, bool)
    if len(pts) < 3:
        return out
    rr, cc = fill(pts[:, 0], pts[:, 1], shape)
    out[rr, cc] = True
    rr, cc = polygon_perimeter(np.rint(pts[:, 0]), np.rint(pts[:, 1]), shape)
    out[rr, cc] = True
    return out
