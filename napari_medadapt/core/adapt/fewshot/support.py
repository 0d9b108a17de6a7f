"""The support of a few-shot fit: which planes the user labelled, what each one says, and the object's expected
size on the planes in between (the transductive size prior).

The user paints a few slices of a Labels layer, in whichever view they like. The support planes are found
along the axis on which the labelled voxels occupy the fewest planes with gaps between them (painting three
axial slices apart fills three separate axial planes, but unbroken runs of coronal and sagittal ones), unless
the axis is given. A plane with no label is not a support plane unless
it is given as *annotated, empty*. On a support plane only the classes painted on it are known (the marginal
loss treats the others as background there); on an empty plane every class is known to be absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import VolumeError

AXIS_NAMES = ("axial", "coronal", "sagittal")
#: A labelling that fills more than this share of the planes along every axis is not a few-shot support.
MAX_SUPPORT_SHARE = 0.5


@dataclass(frozen=True)
class SupportPlane:
    """One labelled plane: ``axis`` (0 axial, 1 coronal, 2 sagittal of the display array), ``index`` and the
    label ids painted on it (empty for a plane marked *annotated, empty*)."""

    axis: int
    index: int
    classes: tuple[int, ...]

    def describe(self) -> str:
        """e.g. ``axial 72 (labels 1, 2)``."""
        what = f"labels {', '.join(map(str, self.classes))}" if self.classes else "annotated empty"
        return f"{AXIS_NAMES[self.axis]} {self.index} ({what})"


@dataclass
class Support:
    """The support found in a label volume.

    Attributes
    ----------
    axis
        The axis the planes were painted on.
    planes
        The support planes in index order.
    classes
        Every label id painted (sorted): the classes of the fit.
    """

    axis: int
    planes: list[SupportPlane]
    classes: tuple[int, ...]

    @property
    def indices(self) -> list[int]:
        """Plane indices along :attr:`axis`."""
        return [p.index for p in self.planes]

    def describe(self) -> str:
        """One line per plane."""
        return "\n".join(p.describe() for p in self.planes)

    def as_records(self) -> list[dict[str, object]]:
        """The planes as JSON objects ``{"axis", "index", "classes"}`` (adapter cards, provenance, reports)."""
        return [{"axis": p.axis, "index": p.index, "classes": list(p.classes)} for p in self.planes]


def find_support(
    labels: np.ndarray, empty_planes: Iterable[tuple[int, int]] = (), axis: int | None = None
) -> Support:
    """The support planes of a ``(Z, Y, X)`` label volume in which only some planes are painted.

    Parameters
    ----------
    labels
        Integer labels, 0 unlabelled.
    empty_planes
        ``(axis, index)`` planes the user marks as *annotated, empty*.
    axis
        Force the axis (default: the one on which the labels occupy the fewest planes).

    Raises
    ------
    VolumeError
        No labelled plane, labels on more than half the planes of every axis (a full segmentation, not a
        few painted slices), every plane labelled, or an empty plane on another axis.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise VolumeError(f"the support labels must be a 3D volume; got shape {labels.shape}.")
    painted = labels > 0
    empty = sorted({(int(a), int(i)) for a, i in empty_planes})
    if not painted.any() and not empty:
        raise VolumeError(
            "no labelled slice: paint the object on a few slices (three spread over it is a good start) or mark "
            "a slice as annotated, empty."
        )
    per_axis = [np.flatnonzero(painted.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    if axis is None:
        axes_with_empty = {a for a, _ in empty}
        if len(axes_with_empty) > 1:
            raise VolumeError("the slices marked annotated, empty lie on different axes; mark them on one axis.")
        if axes_with_empty and not painted.any():
            axis = axes_with_empty.pop()
        else:
            axis = _painted_axis(per_axis, labels.shape)
    indices = {int(i) for i in per_axis[axis]}
    for plane_axis, index in empty:
        if plane_axis != axis:
            raise VolumeError(
                f"the slice marked annotated, empty ({AXIS_NAMES[plane_axis]} {index}) is not on the axis the "
                f"labels were painted on ({AXIS_NAMES[axis]})."
            )
        if not 0 <= index < labels.shape[axis]:
            raise VolumeError(f"{AXIS_NAMES[axis]} slice {index} is outside the volume (0-{labels.shape[axis] - 1}).")
    n = labels.shape[axis]
    if len(indices | {i for _, i in empty}) >= n:
        raise VolumeError(
            f"every {AXIS_NAMES[axis]} slice is labelled: there is nothing left to predict. Clear some slices "
            "(or use the labels as they are)."
        )
    if len(indices) > max(MAX_SUPPORT_SHARE * n, 1):
        raise VolumeError(
            f"labels lie on {len(indices)} of {n} {AXIS_NAMES[axis]} slices: this looks like a whole "
            "segmentation, not a few painted slices. Give a Labels layer in which only a few slices are painted."
        )
    planes = []
    for index in sorted(indices | {i for _, i in empty}):
        plane = np.take(labels, index, axis=axis)
        classes = tuple(int(v) for v in np.unique(plane) if v > 0)
        planes.append(SupportPlane(axis, index, classes))
    classes = tuple(int(v) for v in np.unique(labels[painted]))
    return Support(axis, planes, classes)


def _painted_axis(per_axis: list[np.ndarray], shape: tuple[int, ...]) -> int:
    """The axis the slices were painted on: one labelled plane on an axis is one painted slice; otherwise the
    fewest labelled planes among the axes on which they are not one unbroken run (slices painted apart leave
    gaps; along the other axes a small object fills a run), else the fewest labelled planes."""
    def planes(k: int) -> int:
        return len(per_axis[k]) if len(per_axis[k]) else shape[k] + 1

    single = [k for k in range(3) if len(per_axis[k]) == 1]
    gapped = [k for k, p in enumerate(per_axis) if len(p) > 1 and p[-1] - p[0] + 1 > len(p)]
    return min(single or gapped or range(3), key=planes)


def expected_areas(
    labels: np.ndarray, support: Support, classes: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per class, the expected object area (voxels) on every plane along the support axis: the areas painted on
    the support planes, linearly interpolated between them, 0 on planes marked empty; NaN where unknown (outside
    the outermost planes on which the class is known, and everywhere for a class known on one plane only).
    """
    n = labels.shape[support.axis]
    areas: dict[int, np.ndarray] = {}
    for cls in classes:
        known = [
            (p.index, float(np.count_nonzero(np.take(labels, p.index, axis=support.axis) == cls)))
            for p in support.planes
            if cls in p.classes or not p.classes
        ]
        curve = np.full(n, np.nan, dtype=np.float64)
        if len(known) >= 2:
            xs, ys = zip(*known, strict=True)
            inside = np.arange(xs[0], xs[-1] + 1)
            curve[inside] = np.interp(inside, xs, ys)
        areas[int(cls)] = curve
    return areas


def slab(array: np.ndarray, axis: int, index: int, halo: int) -> tuple[np.ndarray, int]:
    """Planes ``index - halo .. index + halo`` along ``axis`` of ``(..., Z, Y, X)`` data (clipped at the
    edges), with the position of plane ``index`` in the slab: the context a convolution of that half-width
    needs to give exact outputs on the plane."""
    spatial_axis = array.ndim - 3 + axis
    start = max(index - halo, 0)
    stop = min(index + halo + 1, array.shape[spatial_axis])
    taken = np.take(array, np.arange(start, stop), axis=spatial_axis)
    return taken, index - start
