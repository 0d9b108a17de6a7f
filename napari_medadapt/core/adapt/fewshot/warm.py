"""Warm refits of a few-shot adapter: after one more slice is painted, the next fit starts from the previous
fit's weights and runs a share of the steps, so it costs seconds instead of a whole fit.

A refit starts warm only when it shares everything but the support slices with the earlier fit
(:func:`warm_key`): the frozen features (model weights, volume, inputs or window), the method and settings
(prior, steps, seed, cross-entropy, post-processing), the classes and the painting axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .support import Support, find_support

#: A warm refit runs this share of the steps: its support differs from the previous fit's by a slice or two.
WARM_SHARE = 0.25
#: Learning-rate factor of a warm refit (it starts near a solution: smaller steps keep it there).
WARM_LR_SHARE = 0.5
#: Unlabelled planes the size prior sees per step (:data:`~.train.PRIOR_PLANES`; on for half the steps).
_PRIOR_PLANES = 4

#: The settings two fits must share (besides the features, classes and axis).
KEY_SETTINGS = ("method", "prior", "steps", "seed", "cross_entropy", "largest_component")


def warm_steps(steps: int) -> int:
    """Steps of a warm refit of a fit of ``steps`` steps (:data:`WARM_SHARE` of them, at least one)."""
    return max(1, math.ceil(steps * WARM_SHARE))


def warm_key(backbone: Any, support: Support, settings: Mapping[str, Any]) -> tuple:
    """What a later fit must share with this one to start from its weights: the backbone's feature cache key
    (model, volume, inputs), the :data:`KEY_SETTINGS`, the classes and the axis."""
    return (backbone.cache_key(), tuple(settings[k] for k in KEY_SETTINGS), support.classes, support.axis)


def support_key(labels: np.ndarray, empty_planes: Iterable[tuple[int, int]] = ()) -> tuple:
    """``(classes, axis, number of support slices)`` of painted ``labels`` (see
    :func:`~.support.find_support`); empty when they are not a few painted slices (the fit says why)."""
    from ...errors import MedAdaptError

    try:
        support = find_support(np.asarray(labels), empty_planes)
    except MedAdaptError:
        return ()
    return (support.classes, support.axis, len(support.planes))


def refit_seconds(
    seconds_per_step: float, steps: int, prior: bool, old_planes: int, new_planes: int, predict_seconds: float
) -> float:
    """Expected seconds of a warm refit.

    Parameters
    ----------
    seconds_per_step
        Measured seconds of one step of the previous fit.
    steps
        Steps of a full fit (the refit runs :func:`warm_steps` of them).
    prior
        Whether the size prior is on (its planes add to a step's cost for half of the steps).
    old_planes, new_planes
        Support slices of the previous fit and of the refit (a step sees every support slice).
    predict_seconds
        Measured seconds of the previous fit's whole-volume prediction.
    """
    extra = _PRIOR_PLANES / 2 if prior else 0.0
    scale = (max(new_planes, 1) + extra) / (max(old_planes, 1) + extra)
    return seconds_per_step * scale * warm_steps(steps) + predict_seconds
