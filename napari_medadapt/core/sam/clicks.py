"""Simulated users for interactive segmentation benchmarks (METHODS section 5).

First click: the interior point of the target farthest from its boundary (distance transform).
Next click: in the largest error region of the current prediction, at that region's interior point
farthest from its boundary; positive when the region was missed, negative when it is a false
positive. Box: the target's bounding box with 0-10 px random jitter per side. Stop at the target
IoU or after ``max_clicks``. Metrics: NoC@80/85/90 and NoF (failures within the click budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

IOU_TARGETS = (0.80, 0.85, 0.90)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    pred = np.asarray(pred, bool)
    target = np.asarray(target, bool)
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """The ``(row, col)`` of ``region`` farthest from its boundary (ties: first in raster order)."""
    padded = np.pad(np.asarray(region, bool), 1)
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def first_click(target: np.ndarray) -> tuple[int, int]:
    """First click: the target's interior point farthest from its boundary."""
    if not np.any(target):
        raise ValueError("the target mask is empty")
    return interior_point(target)


def next_click(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, bool] | None:
    """Corrective click ``(row, col, positive)`` in the largest error region, or ``None`` if no error.

    The largest connected region of false negatives or false positives is chosen by the size of its
    largest inscribed distance (the same criterion as the click position), so thin slivers lose to
    compact blobs.
    """
    pred = np.asarray(pred, bool)
    target = np.asarray(target, bool)
    best: tuple[float, int, int, bool] | None = None
    for error, positive in ((target & ~pred, True), (pred & ~target, False)):
        if not error.any():
            continue
        dist = ndimage.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
        labels, n = ndimage.label(error)
        if n == 0:
            continue
        maxima = ndimage.maximum(dist, labels, index=np.arange(1, n + 1))
        k = int(np.argmax(maxima))
        if best is None or maxima[k] > best[0]:
            region_dist = np.where(labels == k + 1, dist, -1.0)
            r, c = np.unravel_index(int(np.argmax(region_dist)), dist.shape)
            best = (float(maxima[k]), int(r), int(c), positive)
    if best is None:
        return None
    return best[1], best[2], best[3]


def jittered_box(
    target: np.ndarray, rng: np.random.Generator, max_jitter: int = 10
) -> tuple[int, int, int, int]:
    """Bounding box ``(r0, c0, r1, c1)`` of ``target`` with each side moved by 0..``max_jitter`` px
    (random direction), clipped to the image."""
    rows = np.flatnonzero(target.any(axis=1))
    cols = np.flatnonzero(target.any(axis=0))
    if rows.size == 0:
        raise ValueError("the target mask is empty")
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    jitter = rng.integers(-max_jitter, max_jitter + 1, size=4)
    h, w = target.shape
    r0 = int(np.clip(r0 + jitter[0], 0, h - 1))
    c0 = int(np.clip(c0 + jitter[1], 0, w - 1))
    r1 = int(np.clip(r1 + jitter[2], 0, h - 1))
    c1 = int(np.clip(c1 + jitter[3], 0, w - 1))
    return min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)


# A segmenter takes the clicks so far ((N, 2) row/col, (N,) labels) and returns a boolean mask.
Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ClickSession:
    """One simulated interactive session on one target.

    Attributes
    ----------
    ious
        IoU after each click (``ious[k]`` after ``k + 1`` clicks).
    points, labels
        The clicks given, ``(N, 2)`` row/col and ``(N,)`` 1/0.
    """

    ious: list[float] = field(default_factory=list)
    points: list[tuple[int, int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def clicks_to(self, target_iou: float, max_clicks: int) -> int:
        """Clicks needed to reach ``target_iou`` (``max_clicks`` when never reached: a failure)."""
        for k, value in enumerate(self.ious):
            if value >= target_iou:
                return k + 1
        return max_clicks

    def reached(self, target_iou: float) -> bool:
        """Whether ``target_iou`` was reached within the session."""
        return any(v >= target_iou for v in self.ious)

    def iou_after(self, clicks: int) -> float:
        """IoU after ``clicks`` clicks (the last value if the session stopped earlier)."""
        if not self.ious:
            return 0.0
        return self.ious[min(clicks, len(self.ious)) - 1]


def simulate_clicks(
    segment: Segmenter,
    target: np.ndarray,
    max_clicks: int = 20,
    stop_iou: float | None = max(IOU_TARGETS),
) -> ClickSession:
    """Run the click protocol on ``target`` with a segmenter.

    Parameters
    ----------
    segment
        Called with all clicks so far; returns the current boolean mask. A stateful segmenter (mask
        feedback) may keep its previous prediction between calls.
    target
        Ground-truth 2D boolean mask (non-empty).
    max_clicks
        Click budget (20 in the protocol).
    stop_iou
        Stop early once this IoU is reached (``None``: always use the full budget).
    """
    target = np.asarray(target, bool)
    session = ClickSession()
    r, c = first_click(target)
    positive = True
    for _ in range(max_clicks):
        session.points.append((r, c))
        session.labels.append(1 if positive else 0)
        pred = np.asarray(segment(np.asarray(session.points, float), np.asarray(session.labels)), bool)
        session.ious.append(iou(pred, target))
        if stop_iou is not None and session.ious[-1] >= stop_iou:
            break
        nxt = next_click(pred, target)
        if nxt is None:
            break
        r, c, positive = nxt
    return session


def summarize_sessions(
    sessions: Sequence[ClickSession], max_clicks: int = 20, targets: Sequence[float] = IOU_TARGETS
) -> dict[str, float]:
    """NoC@t (mean clicks to reach t, failures count as ``max_clicks``), NoF@t (failures) and mean IoU
    after 1, 3 and 5 clicks."""
    out: dict[str, float] = {"n": float(len(sessions))}
    for t in targets:
        tag = int(round(t * 100))
        out[f"NoC@{tag}"] = float(np.mean([s.clicks_to(t, max_clicks) for s in sessions])) if sessions else 0.0
        out[f"NoF@{tag}"] = float(sum(not s.reached(t) for s in sessions))
    for k in (1, 3, 5):
        out[f"IoU@{k}"] = float(np.mean([s.iou_after(k) for s in sessions])) if sessions else 0.0
    return out
