"""Interactions on a 3D object: a 3D box, clicks, scribbles, a lasso, a given mask.

Coordinates are voxel indices of the volume ``(z, y, x)``. Each interaction names the ``axis`` of the plane it was
given in (0 axial, 1 coronal, 2 sagittal for a volume in napari's display order): a click's ``zyx`` and a scribble's
mask are in volume coordinates; a box or lasso lies on slice ``z`` of its axis, its ``(row, col)`` being the two other
axes in order. :func:`in_frame` expresses an interaction in the frame whose first axis is a given one (the frame a
slice-wise engine works in). Each interaction turns into 2D prompts on the slices it touches (sampled points, a box, a
mask prompt) with the helpers below.
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
    axis: int = 0

    def ranges(self) -> list[tuple[int, int]]:
        """The box as a cuboid: ``(first, last)`` voxel index along each volume axis."""
        r0, c0, r1, c1 = self.rect
        out = [(r0, r1), (c0, c1)]
        out.insert(self.axis, (self.z_min, self.z_max))
        return out

    @classmethod
    def from_ranges(cls, ranges: list[tuple[int, int]], axis: int = 0) -> Box3D:
        """The cuboid ``ranges`` as a box on ``axis`` (its middle slice across the cuboid)."""
        (z0, z1), (r0, r1), (c0, c1) = ranges[axis], *[ranges[i] for i in range(3) if i != axis]
        return cls(int(z0), int(z1), (int(z0) + int(z1)) // 2, (int(r0), int(c0), int(r1), int(c1)), axis)

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
    axis: int = 0


@dataclass(frozen=True, eq=False)
class Scribble:
    """A painted 3D boolean mask (any slices): ``positive`` (object) or negative (background)."""

    mask: np.ndarray
    positive: bool = True
    axis: int = 0


@dataclass(frozen=True, eq=False)
class Lasso:
    """A closed polygon ``[(row, col), ...]`` on slice ``z``: the outline of the object there (``positive``) or a
    region to remove from it."""

    z: int
    polygon: tuple[tuple[float, float], ...]
    positive: bool = True
    axis: int = 0


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A whole 3D mask given for the object (e.g. the previous prediction, or a painted label)."""

    mask: np.ndarray


Interaction = Box3D | Click | Scribble | Lasso | MaskPrompt


def given_on(interaction: Interaction, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The voxels an interaction was given on: the slices of its plane it lies on (a click's or lasso's slice, the
    slices a scribble paints); ``None`` for a 3D box or a mask, which speak for the whole volume."""
    if isinstance(interaction, Box3D | MaskPrompt):
        return None
    axis = interaction.axis
    if isinstance(interaction, Scribble):
        other = tuple(i for i in range(3) if i != axis)
        slices = np.asarray(interaction.mask, bool).any(axis=other)
    else:
        slices = np.zeros(shape[axis], bool)
        slices[interaction.zyx[axis] if isinstance(interaction, Click) else interaction.z] = True
    out = np.zeros(shape, bool)
    index = [slice(None)] * 3
    index[axis] = slices
    out[tuple(index)] = True
    return out


def in_frame(interaction: Interaction, axis: int, shape: tuple[int, int, int]) -> Interaction:
    """``interaction`` in the frame whose first axis is volume axis ``axis`` (``np.moveaxis(volume, axis, 0)``;
    ``shape`` is the volume's). A box of another plane becomes the same cuboid on ``axis``; a lasso of another
    plane becomes a scribble of its filled polygon. The result's ``axis`` is 0."""
    if isinstance(interaction, MaskPrompt):
        return MaskPrompt(np.moveaxis(np.asarray(interaction.mask), axis, 0))
    if isinstance(interaction, Click):
        z = interaction.zyx
        return Click((z[axis], *[z[i] for i in range(3) if i != axis]), interaction.positive)
    if isinstance(interaction, Scribble):
        return Scribble(np.moveaxis(np.asarray(interaction.mask), axis, 0), interaction.positive)
    if isinstance(interaction, Box3D):
        if interaction.axis == axis:
            return Box3D(interaction.z_min, interaction.z_max, interaction.z_mid, interaction.rect)
        box = Box3D.from_ranges(interaction.ranges(), axis)  # the same cuboid, drawn on ``axis``
        return Box3D(box.z_min, box.z_max, box.z_mid, box.rect)
    if interaction.axis == axis:
        return Lasso(interaction.z, interaction.polygon, interaction.positive)
    plane = [shape[i] for i in range(3) if i != interaction.axis]
    mask = np.zeros(shape, bool)
    np.moveaxis(mask, interaction.axis, 0)[interaction.z] = polygon_mask(interaction.polygon, (plane[0], plane[1]))
    return Scribble(np.moveaxis(mask, axis, 0), interaction.positive)


@dataclass
class ObjectState:
    """One object: its current 3D mask and the interactions that made it (the newest last)."""

    mask: np.ndarray
    interactions: list = field(default_factory=list)

    def in_frame(self, axis: int) -> ObjectState:
        """The state in the frame whose first axis is ``axis`` (the mask a view, see :func:`in_frame`)."""
        shape = self.mask.shape
        return ObjectState(np.moveaxis(self.mask, axis, 0), [in_frame(i, axis, shape) for i in self.interactions])

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
