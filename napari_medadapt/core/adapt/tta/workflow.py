"""Segment, adapt, segment again: the test-time-adaptation workflow of the dock and of ``medadapt segment --tta``.

Both run it through a :class:`~napari_medadapt.core.session.ModelSession`: the source segmentation is the
session's (computed once, shared with the Segment dock), the adapted copy becomes a session variant that any
dock can select by name, and its segmentation is computed on the same path with the same post-processing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...inference import Prediction
    from ...jobs import JobContext
    from ...session import ModelSession
    from ...volume import Volume
    from .methods import AdaptationResult


@dataclass
class AdaptOutcome:
    """The workflow's results.

    Attributes
    ----------
    before
        The source model's segmentation (``None`` when it was skipped).
    after
        The adapted model's segmentation.
    result
        The adaptation (adapted copy, losses, shift scores, warnings including a whole-volume collapse).
    variant
        The session name of the adapted model.
    rating_before, rating_after
        The shift score and its rating against the model's training data, as text.
    """

    before: Prediction | None
    after: Prediction
    result: AdaptationResult
    variant: str
    rating_before: str
    rating_after: str


def adapt_and_segment(
    session: ModelSession,
    model: str,
    volume: Volume,
    settings: dict[str, Any] | None = None,
    *,
    segment_source: bool = True,
    largest_component: bool | None = None,
    on_loss: Callable[[int, float], Any] | None = None,
    ctx: JobContext | None = None,
) -> AdaptOutcome:
    """Segment ``volume`` with ``model`` (unless ``segment_source`` is False), adapt a copy to it, segment
    with the copy; warn when the adapted whole-volume segmentation is five times smaller or larger.

    Parameters
    ----------
    session
        Where the models and segmentations live.
    model
        A registered name, card path or session variant.
    volume
        The scan.
    settings
        Keyword arguments of :func:`~napari_medadapt.core.adapt.tta.methods.adapt` (``method``, ``lr``, ...).
    segment_source
        Also segment with the source model (needed for the collapse check on the whole volume).
    largest_component
        Post-processing of both segmentations (``None``: as the card says).
    on_loss
        Called with ``(iteration, loss)`` during the adaptation.
    ctx
        Progress and cancellation.
    """
    from .methods import adapt, segmentation_change_warning
    from .score import describe_shift

    source = session.model(model, ctx)
    before = session.segment(model, volume, largest_component=largest_component, ctx=ctx) if segment_source else None
    result = adapt(source, volume, ctx=ctx, on_loss=on_loss, **(settings or {}))
    variant = session.add_variant(result.model, f"{source.card.name} (TTA {result.method})")
    after = session.segment(variant, volume, largest_component=largest_component, ctx=ctx)
    collapse = None if before is None else segmentation_change_warning(before.labels, after.labels)
    if collapse:
        result.warnings.append(collapse)
    return AdaptOutcome(
        before,
        after,
        result,
        variant,
        describe_shift(result.shift_score_before, source.card),
        describe_shift(result.shift_score_after, source.card),
    )
