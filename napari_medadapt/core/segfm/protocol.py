"""The CVPR 2025 interactive 3D segmentation protocol (``CVPR25_iter_eval.py``, ``get_boxes.py``), re-implemented.

- Boxes (``get_boxes.py``): labels relabelled 1..n; per class the slices holding it give ``z_min``/``z_max`` and
  ``z_mid`` (the middle one of those slices); the 2D box on ``z_mid`` is widened by a shift drawn once per class
  from ``randint(0, 6)`` (numpy's legacy generator seeded 2025) and scaled by ``size / 256`` per axis.
- Clicks: per class, the largest 26-connected component of the error (prediction != reference); its Euclidean
  distance transform on its bounding box padded by 25 % (at least 1 voxel); among the voxels at the maximum one is
  drawn uniformly with the generator seeded 42; a foreground click if that voxel is missed, else background.
- Metrics: mean over the reference's classes of DSC, and of NSD at 2 mm (DeepMind's surface distance), NSD only
  when the mean DSC exceeds 0.2; DSC_AUC = trapezoid over the last 5 steps (x = 0..4); final DSC and NSD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Voxels above which the challenge halves the EDT's crop (``block_reduce`` by 2, max)
EDT_MAX_VOXELS = 60_000_000
N_CLICKS = 5
NSD_TOLERANCE_MM = 2.0


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in increasing order of their values (0 stays 0)."""
    values = np.unique(labels)
    values = values[values != 0]
    out = np.zeros(labels.shape, np.uint16 if len(values) > 255 else np.uint8)
    for k, v in enumerate(values, start=1):
        out[labels == v] = k
    return out


def boxes_from_labels(labels: np.ndarray, seed: int = 2025) -> list[dict[str, int]]:
    """The challenge's 3D box per class of a sequential label map ``(D, H, W)`` (see the module docstring)."""
    rng = np.random.RandomState(seed)
    out = []
    depth, rows, cols = labels.shape
    for lab in np.unique(labels)[1:]:
        obj = labels == lab
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        z_mid = int(zs[len(zs) // 2])
        ys, xs = np.nonzero(obj[z_mid])
        shift = int(rng.randint(0, 6, 1)[0])
        sx, sy = int(shift * cols / 256), int(shift * rows / 256)
        out.append({
            "z_min": int(zs[0]), "z_max": int(zs[-1]), "z_mid": z_mid,
            "z_mid_x_min": max(0, int(xs.min()) - sx), "z_mid_y_min": max(0, int(ys.min()) - sy),
            "z_mid_x_max": min(cols - 1, int(xs.max()) + sx), "z_mid_y_max": min(rows - 1, int(ys.max()) + sy),
        })
    return out


def _largest_component(error: np.ndarray) -> np.ndarray:
    try:
        import cc3d

        comp = cc3d.connected_components(error.astype(np.uint8), connectivity=26)
    except ImportError:  # the same components; cc3d (the challenge's) is in the [bench] extra
        comp, _ = ndimage.label(error, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(np.argmax(sizes))


def component_edt(component: np.ndarray) -> np.ndarray:
    """EDT of a 3D component computed on its bounding box padded by 25 % per axis (>= 1), zero outside it."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    crop = hi - lo
    pad = np.maximum((crop * 0.25).astype(int), 1)
    box = np.zeros(crop + 2 * pad, np.uint8)
    box[tuple(slice(p, p + c) for p, c in zip(pad, crop, strict=True))] = component[
        tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    ]
    halved = box.size > EDT_MAX_VOXELS
    if halved:  # as the challenge: 2x max-pooling, EDT, nearest upsampling
        from skimage.measure import block_reduce

        box = block_reduce(box, block_size=(2, 2, 2), func=np.max)
    edt = ndimage.distance_transform_edt(box)
    if halved:
        edt = edt.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    out = np.zeros(component.shape, edt.dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = edt[
        tuple(slice(p, p + c) for p, c in zip(pad, crop, strict=True))
    ]
    return out


@dataclass
class SimulatedClick:
    """A click of the protocol: ``(z, y, x)`` and whether it is foreground (a missed voxel)."""

    zyx: tuple[int, int, int]
    foreground: bool

    @property
    def kind(self) -> str:
        """``"fg"`` or ``"bg"``."""
        return "fg" if self.foreground else "bg"


def next_click_3d(pred: np.ndarray, target: np.ndarray, seed: int = 42) -> SimulatedClick | None:
    """The protocol's click for one class (boolean ``pred`` and ``target``), or ``None`` when they agree."""
    pred = np.asarray(pred, bool)
    target = np.asarray(target, bool)
    error = pred != target
    if not error.any():
        return None
    component = _largest_component(error)
    edt = component_edt(component) * component
    if edt.sum() == 0:
        edt = component.astype(np.float64)
    maxima = np.argwhere(edt == edt.max())
    chosen = maxima[np.random.RandomState(seed).choice(len(maxima))]
    zyx = tuple(int(v) for v in chosen)
    return SimulatedClick(zyx, bool(target[zyx]))


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty, as the challenge)."""
    total = int(gt.sum()) + int(pred.sum())
    return float("nan") if total == 0 else 2.0 * int((gt & pred).sum()) / total


def surface_dice(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], tolerance: float) -> float:
    """Normalised surface Dice at ``tolerance`` mm (DeepMind's surfel areas; the challenge's SurfaceDice.py)."""
    try:  # DeepMind's surfel-area table (the same as the challenge's SurfaceDice.py: checked equal)
        from surface_distance.lookup_tables import (
            ENCODE_NEIGHBOURHOOD_3D_KERNEL,
            create_table_neighbour_code_to_surface_area,
        )
    except ImportError as err:
        from ..errors import MedAdaptError

        raise MedAdaptError(
            "The surface Dice needs the package surface-distance: pip install 'napari-medadapt[bench]'"
        ) from err

    both = gt | pred
    if not both.any():
        return float("nan")
    idx = [np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    sl = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    area_of = create_table_neighbour_code_to_surface_area(tuple(float(s) for s in spacing))
    kernel = np.asarray(ENCODE_NEIGHBOURHOOD_3D_KERNEL)
    parts = []
    for mask in (gt, pred):
        crop = np.zeros(tuple(s.stop - s.start + 1 for s in sl), np.uint8)  # one voxel of zeros after the end
        crop[:-1, :-1, :-1] = mask[sl]
        code = ndimage.correlate(crop, kernel, mode="constant", cval=0)
        border = (code != 0) & (code != 255)
        parts.append((border, area_of[code]))
    (b_gt, a_gt), (b_pr, a_pr) = parts

    def distance_to(border: np.ndarray) -> np.ndarray:
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=spacing)

    d_gt_to_pred = distance_to(b_pr)[b_gt]
    d_pred_to_gt = distance_to(b_gt)[b_pr]
    s_gt, s_pr = a_gt[b_gt], a_pr[b_pr]
    num = s_gt[d_gt_to_pred <= tolerance].sum() + s_pr[d_pred_to_gt <= tolerance].sum()
    return float(num / (s_gt.sum() + s_pr.sum()))


def multiclass_scores(gt: np.ndarray, seg: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """Mean DSC and NSD (2 mm) over the classes of ``gt``; NSD is 0 unless the mean DSC exceeds 0.2."""
    classes = np.unique(gt)[1:]
    dscs = [dice(gt == c, seg == c) for c in classes]
    dsc = float(np.mean(dscs)) if dscs else float("nan")
    if not dsc > 0.2:
        return dsc, 0.0
    nsd = float(np.mean([surface_dice(gt == c, seg == c, spacing, NSD_TOLERANCE_MM) for c in classes]))
    return dsc, nsd


def auc(values: list[float], n_clicks: int = N_CLICKS) -> float:
    """Trapezoid area over the last ``n_clicks`` steps (x = 0 .. n_clicks - 1, so at most n_clicks - 1)."""
    y = np.asarray(values[-n_clicks:], np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2.0))
