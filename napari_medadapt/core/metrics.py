"""Segmentation metrics: Dice, HD95, BraTS evaluation regions, volumes in mL.

Conventions
-----------
* Dice of two empty masks is 1.0 (both agree that the structure is absent); one empty side gives 0.0.
* HD95 (95th percentile of the symmetric surface distances, in mm, using the voxel spacing) is ``nan`` when
  both masks are empty (no surface to measure) and ``inf`` when exactly one is empty (a structure was missed
  or invented: the distance is unbounded). Summaries should report these cases separately, not average them.
* Region schemes (label ids of each evaluation region):

  - ``"brats"`` (BraTS 2017-2020 ids 0, 1 NCR/NET, 2 edema, 4 enhancing): WT = {1, 2, 4}, TC = {1, 4},
    ET = {4}.
  - ``"brats2013"`` (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing): WT = {1, 2, 3, 4},
    TC = {1, 3, 4}, ET = {4}.
  - ``"labels"``: one region per non-zero label id present in either map.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import MedAdaptError

REGION_SCHEMES: dict[str, dict[str, tuple[int, ...]]] = {
    "brats": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    "brats2013": {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)},
}


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise MedAdaptError(
            f"prediction and reference have different shapes {pred.shape} and {ref.shape}; compare label "
            f"maps on the same voxel grid."
        )
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (``nan`` both empty, ``inf`` one empty).

    Computed with :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``) on the bounding box
    of both masks (plus a one-voxel margin), which leaves the distances unchanged and saves time.
    """
    pred, ref = _pair(pred, ref)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan
    if has_pred != has_ref:
        return math.inf
    import torch
    from monai.metrics import compute_hausdorff_distance

    union = np.logical_or(pred, ref)
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(idx[0] - 1, 0), idx[-1] + 2))
    pred_c = torch.from_numpy(np.ascontiguousarray(pred[tuple(box)]))[None, None]
    ref_c = torch.from_numpy(np.ascontiguousarray(ref[tuple(box)]))[None, None]
    spacing_list = [float(s) for s in spacing] if spacing is not None else None
    with warnings.catch_warnings():  # MONAI deprecation notices about its own internal arguments
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            pred_c, ref_c, include_background=True, percentile=95, spacing=spacing_list
        )
    return float(value.reshape(-1)[0])


def region_masks(labels: np.ndarray, scheme: str = "brats", label_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks of the evaluation regions of ``scheme`` (see module docstring).

    For ``"labels"`` the regions are ``label_ids`` (default: the non-zero ids in ``labels``), named by id.
    """
    labels = np.asarray(labels)
    if scheme == "labels":
        ids = sorted(int(v) for v in np.unique(labels) if v != 0) if label_ids is None else list(label_ids)
        return {str(i): labels == i for i in ids}
    if scheme not in REGION_SCHEMES:
        raise MedAdaptError(f"unknown region scheme {scheme!r}; choose one of brats, brats2013, labels.")
    return {name: np.isin(labels, ids) for name, ids in REGION_SCHEMES[scheme].items()}


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL (spacing in mm)."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0


def label_volumes_ml(
    labels: np.ndarray, spacing: Sequence[float], label_ids: Sequence[int] | None = None
) -> dict[int, float]:
    """Volume in mL of each label id (default: every non-zero id present)."""
    labels = np.asarray(labels)
    ids, counts = np.unique(labels, return_counts=True)
    found = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
    wanted = [int(i) for i in ids if i != 0] if label_ids is None else [int(i) for i in label_ids]
    per_voxel = voxel_volume_ml(spacing)
    return {i: found.get(i, 0) * per_voxel for i in wanted}


def region_volumes_ml(volumes_ml: Mapping[int, float], regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Total mL of each named region (a group of label ids, e.g. whole tumour = 1, 2, 4) from class volumes."""
    return {name: float(sum(volumes_ml.get(int(i), 0.0) for i in ids)) for name, ids in regions.items()}


def evaluate_labels(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    scheme: str = "brats",
    with_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-region Dice, HD95 (mm) and volumes (mL) of a predicted vs a reference label map.

    Returns ``{region: {"dice", "hd95", "pred_ml", "ref_ml"}}``; for ``scheme="labels"`` the regions are the
    non-zero ids present in either map.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _pair(pred, ref)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    ids = None
    if scheme == "labels":
        ids = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    pred_regions = region_masks(pred, scheme, ids)
    ref_regions = region_masks(ref, scheme, ids)
    per_voxel = voxel_volume_ml(spacing)
    results: dict[str, dict[str, float]] = {}
    for name, pred_mask in pred_regions.items():
        ref_mask = ref_regions[name]
        results[name] = {
            "dice": dice(pred_mask, ref_mask),
            "hd95": hd95(pred_mask, ref_mask, spacing) if with_hd95 else math.nan,
            "pred_ml": int(pred_mask.sum()) * per_voxel,
            "ref_ml": int(ref_mask.sum()) * per_voxel,
        }
    return results


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """A small text table of :func:`evaluate_labels` results (HD95 "n/a" when both sides are empty)."""
    lines = [f"{'region':<10} {'Dice':>7} {'HD95 mm':>9} {'pred mL':>9} {'ref mL':>9}"]
    for name, row in results.items():
        distance = "n/a" if math.isnan(row["hd95"]) else f"{row['hd95']:.2f}"
        lines.append(f"{name:<10} {row['dice']:>7.4f} {distance:>9} {row['pred_ml']:>9.2f} {row['ref_ml']:>9.2f}")
    return "\n".join(lines)
