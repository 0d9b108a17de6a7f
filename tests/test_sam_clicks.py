"""Click simulation (METHODS section 5) on synthetic masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadapt.core.sam.clicks import (
    first_click,
    iou,
    jittered_box,
    next_click,
    simulate_clicks,
    summarize_sessions,
)


def _disk(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


def test_first_click_is_the_deepest_interior_point() -> None:
    mask = _disk((64, 64), (30, 40), 10)
    assert first_click(mask) == (30, 40)
    with pytest.raises(ValueError):
        first_click(np.zeros((5, 5), bool))


def test_next_click_targets_largest_error_with_the_right_sign() -> None:
    target = _disk((80, 80), (40, 40), 20)
    missed = target & ~_disk((80, 80), (40, 52), 9)  # prediction misses a blob on the right
    r, c, positive = next_click(missed, target)
    assert positive and abs(r - 40) <= 1 and abs(c - 52) <= 3
    false_pos = target | _disk((80, 80), (10, 10), 6)  # prediction leaks into a blob outside
    r, c, positive = next_click(false_pos, target)
    assert not positive and abs(r - 10) <= 1 and abs(c - 10) <= 1
    assert next_click(target, target) is None


def test_jittered_box_stays_within_ten_pixels_and_the_image() -> None:
    target = np.zeros((50, 60), bool)
    target[5:20, 30:58] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        r0, c0, r1, c1 = jittered_box(target, rng)
        assert 0 <= r0 <= r1 < 50 and 0 <= c0 <= c1 < 60
        assert abs(r0 - 5) <= 10 and abs(c0 - 30) <= 10 and abs(r1 - 19) <= 10 and c1 >= 47


def test_simulated_user_converges_and_metrics_summarise() -> None:
    target = _disk((64, 64), (32, 32), 12) | _disk((64, 64), (32, 52), 6)

    def grow(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """A toy segmenter: disks of radius 7 around positive clicks minus those around negatives."""
        out = np.zeros(target.shape, bool)
        for (r, c), lab in zip(points, labels, strict=True):
            disk = _disk(target.shape, (int(r), int(c)), 7)
            out = out | disk if lab == 1 else out & ~disk
        return out & target

    session = simulate_clicks(grow, target, max_clicks=20)
    assert session.labels[0] == 1 and session.points[0] == (32, 32)
    assert session.ious == sorted(session.ious)  # this toy segmenter only ever adds object
    assert session.ious[-1] >= 0.9 and len(session.ious) < 20

    def nothing(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.zeros(target.shape, bool)

    failed = simulate_clicks(nothing, target, max_clicks=5)
    summary = summarize_sessions([session, failed], max_clicks=5)
    assert summary["NoF@90"] == 1.0 and summary["n"] == 2.0
    assert summary["NoC@90"] == pytest.approx((len(session.ious) + 5) / 2)
    assert 0.0 < summary["IoU@1"] < 1.0
    assert iou(target, target) == 1.0 and iou(target, ~target) == 0.0
