"""The per-volume domain-shift score: BN-KL loss of the unadapted model (METHODS section 1).

``shift_score(model, volume)`` is the loss :func:`~napari_medadapt.core.adapt.tta.methods.adapt` starts from: how far
the volume's feature statistics lie from the model's training statistics. It correlates negatively with
segmentation quality (docs/benchmarks/tta.md), so it serves as a warning before trusting a result.

Its distribution over the training domain is stored in the model card (``card.shift_score``)::

    {"scores": [...], "quantiles": {"p50": ..., "p90": ..., "p95": ..., "max": ...},
     "typical_max": ..., "far_min": ..., "slices": 8, "volumes": [names...]}

:func:`classify_shift` calls a score ``"typical"`` up to ``typical_max`` (the 95th percentile of the
training-domain scores), ``"far"`` from ``far_min`` (``FAR_FACTOR`` times ``typical_max``) and
``"unusual"`` in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError
from ...jobs import JobContext, ensure_context

if TYPE_CHECKING:
    from ...models import ModelCard, SegModel
    from ...volume import Volume
    from .samples import SlicePolicy

#: ``far_min = FAR_FACTOR * typical_max``.
FAR_FACTOR = 3.0
CATEGORIES: tuple[str, ...] = ("typical", "unusual", "far")


def shift_score(
    model: SegModel,
    volume: Volume,
    *,
    slices: SlicePolicy = None,
    ctx: JobContext | None = None,
    device: str | None = None,
) -> float:
    """BN-KL loss of the unadapted ``model`` on ``volume`` (0 = training statistics; larger = more shift).

    Parameters
    ----------
    model
        A model with BatchNorm layers (:class:`ModelError` otherwise).
    volume
        The volume to score.
    slices
        Slice policy (see :mod:`napari_medadapt.core.adapt.tta.samples`); the default matches :func:`adapt`'s
        so that ``shift_score(model, volume)`` equals ``adapt(...).shift_score_before``.
    ctx
        Progress (one step per batch of slices) and cancellation.
    device
        Compute device (default: :func:`napari_medadapt.core.device.select_device`).
    """
    import torch

    from ...device import select_device
    from .methods import record_statistics, require_batchnorm
    from .samples import network_inputs
    from .stats import bn_kl_loss, reference_statistics

    ctx = ensure_context(ctx)
    require_batchnorm(model, "shift score")
    target = select_device(device)
    was_training = model.training
    original_device = model.device
    model.to(target).eval()
    try:
        _, inputs = network_inputs(model, volume, slices)
        with torch.no_grad():
            sums = record_statistics(model, inputs, ctx=ctx)
            return float(bn_kl_loss(sums.moments(), reference_statistics(model)))
    finally:
        model.to(original_device).train(was_training)


def shift_score_distribution(
    model: SegModel,
    volumes: Iterable[Volume | tuple[str, Volume]],
    *,
    slices: SlicePolicy = None,
    ctx: JobContext | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Scores of training-domain volumes and the thresholds :func:`classify_shift` uses.

    Parameters
    ----------
    model
        The model whose card will carry the distribution.
    volumes
        Training-domain volumes (e.g. phantom training volumes and the training real case), optionally as
        ``(name, volume)`` pairs.
    slices, ctx, device
        As in :func:`shift_score`; progress counts volumes.
    """
    ctx = ensure_context(ctx)
    total = len(volumes) if isinstance(volumes, Sized) else 0
    names, scores = [], []
    for index, item in enumerate(volumes):  # one volume in memory at a time
        name, volume = item if isinstance(item, tuple) else (f"volume {index}", item)
        ctx.progress(index, max(total, index + 1), f"shift score of {name}")
        names.append(name)
        scores.append(shift_score(model, volume, slices=slices, device=device))
    if not scores:
        raise ValueError("give at least one training-domain volume")
    ctx.progress(len(scores), len(scores), "shift score distribution done")
    values = np.asarray(scores, dtype=float)
    typical_max = float(np.percentile(values, 95))
    return {
        "scores": [float(v) for v in values],
        "volumes": names,
        "quantiles": {
            "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)),
            "p95": typical_max,
            "max": float(values.max()),
        },
        "typical_max": typical_max,
        "far_min": FAR_FACTOR * typical_max,
        "slices": slices if slices is None or isinstance(slices, int | str) else list(slices),
    }


def _distribution(card: ModelCard) -> dict[str, Any]:
    distribution = card.shift_score
    if not distribution or "typical_max" not in distribution or "far_min" not in distribution:
        raise ModelError(
            f"model {card.name!r} has no shift-score distribution in its card, so the score cannot be "
            "rated. Compute one with shift_score_distribution(model, training_volumes) and store it with "
            "store_shift_distribution(card_path, distribution)."
        )
    return distribution


def classify_shift(score: float, card: ModelCard) -> str:
    """``"typical"``, ``"unusual"`` or ``"far"``: where ``score`` lies in the card's training distribution."""
    distribution = _distribution(card)
    if not np.isfinite(score) or score >= float(distribution["far_min"]):
        return "far"
    if score <= float(distribution["typical_max"]):
        return "typical"
    return "unusual"


def typical_range(card: ModelCard) -> tuple[float, float] | None:
    """``(typical_max, far_min)`` of the card's distribution, or ``None`` when the card has none."""
    try:
        distribution = _distribution(card)
    except ModelError:
        return None
    return float(distribution["typical_max"]), float(distribution["far_min"])


def store_shift_distribution(card_path: str | Path, distribution: dict[str, Any]) -> Path:
    """Write ``distribution`` into the ``shift_score`` field of the model card at ``card_path``."""
    from ...models import ModelCard

    card = ModelCard.load(card_path)
    card.shift_score = dict(distribution)
    return card.save(card_path)


def describe_shift(score: float, card: ModelCard) -> str:
    """One line for users, e.g. ``shift score 0.84: unusual (typical <= 0.31, far >= 0.93)``."""
    bounds = typical_range(card)
    if bounds is None:
        return f"shift score {score:.3g} (no training distribution in the model card to compare with)"
    category = classify_shift(score, card)
    return f"shift score {score:.3g}: {category} (typical <= {bounds[0]:.3g}, far >= {bounds[1]:.3g})"

