"""TTS channel selection: score every feature channel at the keypoints and keep the top share.

``S_c = alpha * sum_{p in positives} f_c(p) - (1 - alpha) * sum_{n in negatives} f_c(n)``; the top
``ceil(keep_fraction * C)`` channels are kept (see :mod:`.tts` for the method). Shared by the whole-volume
runner, the slice session and the classifier variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import engine

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_KEEP_FRACTION", "ChannelSelection", "channel_mask", "combine_scores",
    "keypoint_sums", "score_channels", "select_channels",
]  # fmt: skip

DEFAULT_ALPHA = 0.4
DEFAULT_KEEP_FRACTION = 0.10


@dataclass(frozen=True)
class ChannelSelection:
    """One channel mask and how it was chosen.

    Attributes
    ----------
    scores
        ``(C,)`` per-channel score ``alpha * S_pos - (1 - alpha) * S_neg``.
    kept
        Indices of the kept channels, highest score first.
    n_positive, n_negative
        Number of keypoints of each kind that built the mask.
    slices
        Slice indices (axis 0) whose keypoints built the mask; ``None`` for a 3D model.
    background
        Channels kept regardless of their score because their head weight favours the background class
        (``keep_background=True``); empty with the published rule.
    """

    scores: np.ndarray
    kept: np.ndarray
    n_positive: int
    n_negative: int
    slices: tuple[int, ...] | None
    background: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def mask(self) -> np.ndarray:
        """``(C,)`` float32: 1 for kept (and background) channels, 0 for muted ones."""
        return channel_mask(self.scores.shape[0], self.kept, self.background)


def channel_mask(n_channels: int, kept: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``(n_channels,)`` float32: 1 for the ``kept`` and ``background`` channels, 0 for the muted ones."""
    mask = np.zeros(n_channels, dtype=np.float32)
    mask[kept] = 1.0
    mask[background] = 1.0
    return mask


def score_channels(
    features: np.ndarray | torch.Tensor,
    positive_points: np.ndarray,
    negative_points: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Per-channel TTS score ``alpha * S_pos - (1 - alpha) * S_neg``.

    Parameters
    ----------
    features
        ``(C, *spatial)`` feature map on the image grid.
    positive_points, negative_points
        ``(N, ndim)`` integer voxel indices into ``spatial`` (either may be empty).
    alpha
        Weight of the positives; the negatives weigh ``1 - alpha``.

    Returns
    -------
    numpy.ndarray
        ``(C,)`` float64 scores.
    """
    pos_sum, neg_sum = keypoint_sums(features, positive_points, negative_points)
    return combine_scores(pos_sum, neg_sum, alpha)


def keypoint_sums(
    features: np.ndarray | torch.Tensor, positive_points: np.ndarray, negative_points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(S_pos, S_neg)``: per-channel sums ``(C,)`` of ``features`` at the positive and negative points."""

    def gather(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.int64).reshape(-1, features.ndim - 1)
        if len(points) == 0:
            return np.zeros(features.shape[0], dtype=np.float64)
        index = (slice(None), *(points[:, d] for d in range(points.shape[1])))
        values = features[index]
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
        return values.astype(np.float64).sum(axis=1)

    return gather(positive_points), gather(negative_points)


def combine_scores(pos_sum: np.ndarray, neg_sum: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * pos_sum - (1 - alpha) * neg_sum``."""
    return float(alpha) * np.asarray(pos_sum, dtype=np.float64) - (1.0 - float(alpha)) * np.asarray(
        neg_sum, dtype=np.float64
    )


def select_channels(
    scores: np.ndarray, keep_fraction: float = DEFAULT_KEEP_FRACTION, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the top ``ceil(keep_fraction * C)`` scores (at least one), highest first (stable on ties).

    Channels in ``exclude`` (the background channels kept anyway) are not candidates; ``C`` counts all
    channels, so the number chosen does not depend on how many are excluded.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    if exclude is not None and len(exclude):
        order = order[~np.isin(order, exclude)]
    return order[: engine.keep_count(scores.shape[0], keep_fraction)]


