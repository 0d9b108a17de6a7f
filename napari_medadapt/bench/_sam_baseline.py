"""Classical click-based baseline for the Segment Anything benchmark: geodesic seed classification.

Each pixel takes the label of the seed set it is geodesically closest to, where the path cost grows
with the image gradient (a GeoS-style interactive segmentation). Positive clicks seed the object;
negative clicks and the slice border seed the background. No learning, no ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric


def gradient_cost(image: np.ndarray, window: tuple[float, float], contrast: float = 30.0) -> np.ndarray:
    """Per-pixel travel cost: 1 + ``contrast`` x gradient magnitude of the windowed [0, 1] image."""
    lo, hi = window
    x = np.clip((np.asarray(image, np.float32) - lo) / (hi - lo), 0, 1)
    x = ndimage.gaussian_filter(x, 1.0)
    grad = np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)) / 8.0
    return 1.0 + contrast * grad


def geodesic_segment(cost: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Object mask from clicks: pixels geodesically closer to a positive click than to a negative
    click or the border."""
    h, w = cost.shape
    pos = [tuple(int(v) for v in p) for p, lab in zip(points, labels, strict=True) if lab == 1]
    if not pos:
        return np.zeros(cost.shape, bool)
    neg = [tuple(int(v) for v in p) for p, lab in zip(points, labels, strict=True) if lab == 0]
    border = [(0, c) for c in range(w)] + [(h - 1, c) for c in range(w)]
    border += [(r, 0) for r in range(h)] + [(r, w - 1) for r in range(h)]
    d_pos, _ = MCP_Geometric(cost).find_costs(pos)
    d_neg, _ = MCP_Geometric(cost).find_costs(neg + border)
    return d_pos < d_neg
