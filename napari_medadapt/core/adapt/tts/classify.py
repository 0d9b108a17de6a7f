"""TTS for 2D image classification: any (feature extractor, head) pair.

The published setting (METHODS section 2): ``f(x)``, the last feature map of the extractor, is upsampled
to the image size, channels are scored at the keypoints, the top ``keep_fraction`` are kept, and the
classification head (e.g. global pooling + linear layer) runs on the muted map. The plugin's segmentation
models have no classification head, so this works on a generic pair of callables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import MedAdaptError
from ...inference import flip_sets
from . import engine
from .run import KeypointError, TTSWarning, check_settings, one_sided_message, validate_keypoints
from .select import (
    DEFAULT_ALPHA,
    DEFAULT_KEEP_FRACTION,
    ChannelSelection,
    combine_scores,
    keypoint_sums,
    select_channels,
)

if TYPE_CHECKING:
    import torch


@dataclass
class TTSClassResult:
    """Result of :func:`tts_classify`.

    Attributes
    ----------
    probabilities, baseline_probabilities
        ``(K,)`` class probabilities (softmax of the head's logits) with and without muting.
    label, baseline_label
        Arg-max class indices.
    selection
        Scores and kept channels (of the unflipped replica when ``tta_flips``).
    attention_before, attention_after
        ``(H, W)`` mean activation of all / of the kept channels on the image grid.
    warnings
        Messages about one-sided keypoints.
    """

    probabilities: np.ndarray
    baseline_probabilities: np.ndarray
    label: int
    baseline_label: int
    selection: ChannelSelection
    attention_before: np.ndarray
    attention_after: np.ndarray
    warnings: tuple[str, ...] = field(default_factory=tuple)


def tts_classify(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    image: Any,
    positive_points: Any,
    negative_points: Any,
    alpha: float = DEFAULT_ALPHA,
    keep_fraction: float = DEFAULT_KEEP_FRACTION,
    tta_flips: bool = False,
) -> TTSClassResult:
    """Classify ``image`` with the feature channels chosen by the keypoints.

    Parameters
    ----------
    features_fn
        Maps a batch ``(1, C, H, W)`` to the last feature map ``(1, F, h, w)``.
    head
        Maps a (muted) feature map ``(1, F, h, w)`` to logits ``(1, K)``.
    image
        ``(C, H, W)`` or ``(H, W)`` array or tensor, already normalised for ``features_fn``.
    positive_points, negative_points
        ``(N, 2)`` ``(y, x)`` pixel coordinates (on the target / on artifacts or background).
    alpha, keep_fraction
        Score weight of the positives and fraction of channels kept (see :func:`tts`).
    tta_flips
        Average over the 4 flip replicas (none, vertical, horizontal, both), one mask per replica.
    """
    import torch

    check_settings(alpha, keep_fraction, "features")
    x = torch.as_tensor(
        np.asarray(image) if not isinstance(image, torch.Tensor) else image, dtype=torch.float32
    )
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise MedAdaptError(f"the image must be (C, H, W) or (H, W); got shape {tuple(x.shape)}.")
    x = x[None]
    shape = tuple(x.shape[2:])
    positives = validate_keypoints(positive_points, shape, "positive")
    negatives = validate_keypoints(negative_points, shape, "negative")
    if len(positives) + len(negatives) == 0:
        raise KeypointError("TTS needs keypoints: place at least one positive and one negative keypoint.")
    muted_sum = baseline_sum = None
    selection = None
    attention_before = attention_after = None
    with torch.no_grad():
        for flips in flip_sets(2, tta_flips):
            features = features_fn(engine.flip(x, flips))
            grid = engine.flip(engine.features_on_grid(None, features, shape), flips)
            scores = combine_scores(*keypoint_sums(grid[0], positives, negatives), alpha)
            kept = select_channels(scores, keep_fraction)
            mask = torch.zeros(features.shape[1], dtype=features.dtype, device=features.device)
            mask[torch.from_numpy(kept).to(features.device)] = 1
            muted = torch.softmax(head(features * mask.reshape(1, -1, 1, 1)), dim=1)[0]
            baseline = torch.softmax(head(features), dim=1)[0]
            muted_sum = muted if muted_sum is None else muted_sum + muted
            baseline_sum = baseline if baseline_sum is None else baseline_sum + baseline
            if selection is None:
                selection = ChannelSelection(scores, kept, len(positives), len(negatives), None)
                attention_before = grid[0].mean(dim=0).cpu().numpy()
                attention_after = grid[0, torch.from_numpy(kept).to(grid.device)].mean(dim=0).cpu().numpy()
    n = len(flip_sets(2, tta_flips))
    probabilities = (muted_sum / n).cpu().numpy()
    baseline_probabilities = (baseline_sum / n).cpu().numpy()
    message = one_sided_message(len(positives), len(negatives), "TTS")
    if message:
        warnings.warn(message, TTSWarning, stacklevel=2)
    return TTSClassResult(
        probabilities=probabilities,
        baseline_probabilities=baseline_probabilities,
        label=int(probabilities.argmax()),
        baseline_label=int(baseline_probabilities.argmax()),
        selection=selection,
        attention_before=attention_before,
        attention_after=attention_after,
        warnings=(message,) if message else (),
    )
