"""3D propagation of a 2D Segment Anything mask through a volume.

From the annotated slice(s) the mask is propagated slice by slice outwards in both directions along
one axis; each slice is prompted from its neighbour's mask (a box, interior points, box + the
neighbour's mask logits, or LiteMedSAM's published 3D recipe, ``box-margin``: the neighbour's box widened
by 3 px of the model's input, and the annotated slice's box again where the neighbour's mask came out empty).
Propagation stops where the object ends: empty prediction, IoU with the
neighbour below a threshold, or a jump in area; also at a user range or at slices the user marked
with a negative-only prompt ("stop" slices). Between two annotated slices, each slice is prompted
from a shape interpolation (signed distance) of the two annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import MedAdaptError
from ..jobs import JobContext, ensure_context
from .clicks import interior_point, iou
from .predictor import SamPredictor
from .prompts import Prompts, box_from_mask, make_prompts, resolve_window

MODES = ("box", "points", "mask", "box-margin")
#: ``box-margin``: the box grows by this many pixels of the model's input on every side (LiteMedSAM's recipe)
BOX_MARGIN_PX = 3


@dataclass
class SliceStat:
    """What happened on one slice: its index, voxel count, IoU with the neighbour it was prompted
    from, the model's predicted IoU, and how it was obtained (``"seed"``, ``"propagated"``,
    ``"interpolated"``)."""

    index: int
    area: int
    neighbour_iou: float
    score: float
    source: str


@dataclass
class PropagationResult:
    """3D mask (same shape as the volume) plus per-slice statistics and why each direction stopped.

    ``stopped`` maps ``"down"`` / ``"up"`` to a reason: ``"empty"``, ``"iou"``, ``"area"``,
    ``"intensity"``, ``"stop-slice"``, ``"range"`` or ``"edge"``.
    """

    mask: np.ndarray
    stats: list[SliceStat] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)

    @property
    def slices(self) -> list[int]:
        """Indices of the slices that received a mask."""
        return sorted(s.index for s in self.stats)


def _neighbour_prompts(
    mask: np.ndarray, mode: str, logits: np.ndarray | None, margin: tuple[float, float] = (0.0, 0.0)
) -> Prompts:
    if mode == "points":
        labels, n = ndimage.label(mask)
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        order = np.argsort(sizes)[::-1][:3]
        points = [interior_point(labels == k + 1) for k in order]
        return make_prompts(points=points, labels=[1] * len(points))
    r0, c0, r1, c1 = box_from_mask(mask)
    if mode == "box-margin":
        rows, cols = mask.shape
        r0, c0 = max(0.0, r0 - margin[0]), max(0.0, c0 - margin[1])
        r1, c1 = min(rows - 1.0, r1 + margin[0]), min(cols - 1.0, c1 + margin[1])
    return make_prompts(box=(r0, c0, r1, c1), mask_input=logits if mode == "mask" else None)


def mask_to_logits(predictor: SamPredictor, mask: np.ndarray) -> np.ndarray:
    """Turn a 2D boolean mask into ``(1, 4g, 4g)`` low-resolution logits for a mask prompt."""
    import torch
    import torch.nn.functional as F

    model = predictor.model
    h, w = model.input_size(mask.shape)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
    t = F.pad(t, (0, model.image_size - w, 0, model.image_size - h))
    low = F.interpolate(t, (4 * model.grid, 4 * model.grid), mode="area")
    return ((low[0] - 0.5) * 16.0).numpy()


def interpolate_masks(mask_a: np.ndarray, mask_b: np.ndarray, fraction: float) -> np.ndarray:
    """Shape interpolation of two 2D masks by their signed distance maps (``fraction`` 0 -> a, 1 -> b)."""

    def sdf(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, bool)
        if not m.any():
            return np.full(m.shape, -1e3, np.float32)
        inside = ndimage.distance_transform_edt(m)
        outside = ndimage.distance_transform_edt(~m)
        return (inside - outside).astype(np.float32)

    return ((1.0 - fraction) * sdf(mask_a) + fraction * sdf(mask_b)) > 0


def propagate(
    predictor: SamPredictor,
    volume: np.ndarray,
    seeds: dict[int, np.ndarray],
    window: tuple[float, float] | str | None = None,
    axis: int = 0,
    mode: str = "mask",
    iou_threshold: float = 0.4,
    max_area_ratio: float = 2.5,
    min_area: int = 4,
    index_range: tuple[int, int] | None = None,
    stop_slices: Iterable[int] = (),
    intensity_tolerance: float | None = 2.0,
    prefetch: int = 4,
    ctx: JobContext | None = None,
    on_slice: Callable[[int, np.ndarray], None] | None = None,
) -> PropagationResult:
    """Propagate annotated 2D masks through a 3D volume.

    Parameters
    ----------
    predictor
        The predictor (its embedding cache is used and filled).
    volume
        3D array of raw intensities (e.g. one channel of ``Volume.data``: ``(Z, Y, X)``).
    seeds
        ``{slice index along axis: 2D boolean mask}``, at least one non-empty.
    window
        Intensity window for the whole volume (default: ``"mri-auto"`` over the volume).
    axis
        Axis to propagate along (0, 1 or 2).
    mode
        How a slice is prompted from its neighbour's mask: ``"box"``, ``"points"`` (interior points
        of its largest components), ``"mask"`` (box + the neighbour's mask logits) or ``"box-margin"``
        (the box plus :data:`BOX_MARGIN_PX` input pixels; an empty result is tried once more with the
        annotated slice's box before the direction stops).
    iou_threshold
        Stop when the new mask's IoU with its neighbour falls below this.
    max_area_ratio
        Stop when the area changes by more than this factor from one slice to the next.
    min_area
        Stop when the prediction has fewer voxels (the object ended).
    index_range
        ``(first, last)`` inclusive slice range to stay within; default the whole axis.
    stop_slices
        Slices (e.g. where the user gave only a negative click) where propagation halts, unfilled.
    intensity_tolerance
        Stop when the mean intensity inside the new mask differs from the annotated slices' mean by
        more than this many of their standard deviations (the mask left the object's tissue);
        ``None`` disables the check.
    prefetch
        When a slice ahead is not embedded yet, embed it together with up to ``prefetch - 1`` further
        slices in the propagation direction (in the model's encoder batches, which pay off on a GPU; at
        most ``prefetch - 1`` embeddings are wasted where the object ends, and they stay cached).
    ctx
        Progress (one step per slice) and cancellation.
    on_slice
        Called as ``on_slice(index, mask2d)`` with each slice as soon as it is decided (seeds first), along ``axis``.
    """
    ctx = ensure_context(ctx)
    if mode not in MODES:
        raise MedAdaptError(f"Unknown propagation mode {mode!r}; choose one of {MODES}.")
    vol = np.moveaxis(np.asarray(volume), axis, 0)
    n = vol.shape[0]
    seeds = {int(k): np.asarray(v, bool) for k, v in seeds.items() if np.any(v)}
    if not seeds:
        raise MedAdaptError("Propagation needs at least one slice with a non-empty mask; segment one slice first.")
    for k, m in seeds.items():
        if not 0 <= k < n or m.shape != vol.shape[1:]:
            raise MedAdaptError(
                f"Annotated slice {k} (mask {m.shape}) does not fit a volume with {n} slices of "
                f"{vol.shape[1:]} along axis {axis}."
            )
    lo, hi = (0, n - 1) if index_range is None else (max(0, int(index_range[0])), min(n - 1, int(index_range[1])))
    window = resolve_window(vol, window) if window is None or isinstance(window, str) else window
    stops = {int(s) for s in stop_slices}
    out = np.zeros(vol.shape, bool)
    result = PropagationResult(mask=out)
    order = sorted(seeds)
    show = on_slice if on_slice is not None else (lambda index, mask: None)
    for k in order:
        out[k] = seeds[k]
        show(k, out[k])
        result.stats.append(SliceStat(k, int(seeds[k].sum()), 1.0, 1.0, "seed"))
    total = max(1, hi - lo + 1)
    steps = [0]

    def tick(message: str) -> None:
        steps[0] += 1
        ctx.progress(min(steps[0], total), total, message)

    seed_values = np.concatenate([vol[k][m] for k, m in seeds.items()]).astype(np.float64)
    seed_mean, seed_std = float(seed_values.mean()), float(seed_values.std()) + 1e-6

    def left_tissue(index: int, mask: np.ndarray) -> bool:
        if intensity_tolerance is None:
            return False
        return abs(float(vol[index][mask].mean()) - seed_mean) > intensity_tolerance * seed_std

    margin = (0.0, 0.0)
    if mode == "box-margin":  # BOX_MARGIN_PX of the model's input, in slice voxels along rows and columns
        h, w = predictor.model.input_size(vol.shape[1:])
        margin = (BOX_MARGIN_PX * vol.shape[1] / h, BOX_MARGIN_PX * vol.shape[2] / w)
    logits_of: dict[int, np.ndarray] = {}
    if mode == "mask":
        logits_of = {k: mask_to_logits(predictor, m) for k, m in seeds.items()}

    # between consecutive annotated slices: prompt from the shape interpolation
    for a, b in zip(order[:-1], order[1:], strict=True):
        for i in range(a + 1, b):
            if i in stops or not lo <= i <= hi:
                continue
            prior = interpolate_masks(seeds[a], seeds[b], (i - a) / (b - a))
            if prior.sum() < min_area:
                tick(f"slice {i}: empty interpolation")
                continue
            prior_logits = mask_to_logits(predictor, prior) if mode == "mask" else None
            pred = predictor.predict(vol[i], window, _neighbour_prompts(prior, mode, prior_logits, margin))
            use = pred.mask if iou(pred.mask, prior) >= iou_threshold else prior
            out[i] = use
            show(i, use)
            result.stats.append(
                SliceStat(i, int(use.sum()), iou(pred.mask, prior), float(pred.scores[pred.best]), "interpolated")
            )
            tick(f"interpolated slice {i}")

    for direction, start, step in (("down", order[0], -1), ("up", order[-1], 1)):
        prev = seeds[start]
        prev_logits = logits_of.get(start)
        i = start + step
        reason = "edge"
        while 0 <= i < n:
            if not lo <= i <= hi:
                reason = "range"
                break
            if i in stops:
                reason = "stop-slice"
                break
            if prefetch > 1 and not predictor.is_cached(vol[i], window):
                ahead = [j for j in range(i, i + step * prefetch, step) if lo <= j <= hi and j not in stops]
                predictor.precompute([vol[j] for j in ahead], window)
            pred = predictor.predict(vol[i], window, _neighbour_prompts(prev, mode, prev_logits, margin))
            if mode == "box-margin" and pred.mask.sum() < min_area:  # the recipe: the annotated box again
                pred = predictor.predict(vol[i], window, _neighbour_prompts(seeds[start], mode, None, margin))
            area = int(pred.mask.sum())
            prev_area = max(1, int(prev.sum()))
            overlap = iou(pred.mask, prev)
            if area < min_area:
                reason = "empty"
            elif overlap < iou_threshold:
                reason = "iou"
            elif area > prev_area * max_area_ratio or area * max_area_ratio < prev_area:
                reason = "area"
            elif left_tissue(i, pred.mask):
                reason = "intensity"
            else:
                reason = ""
            if reason:
                break
            out[i] = pred.mask
            show(i, pred.mask)
            result.stats.append(SliceStat(i, area, overlap, float(pred.scores[pred.best]), "propagated"))
            tick(f"propagated to slice {i}")
            prev, prev_logits = pred.mask, pred.feedback
            i += step
            reason = "edge"
        result.stopped[direction] = reason
    result.stats.sort(key=lambda s: s.index)
    result.mask = np.moveaxis(out, 0, axis)
    return result
