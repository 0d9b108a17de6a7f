"""The Few-shot dock's compute side: the jobs it runs in the compute worker (fit, leave-one-slice-out check,
apply a saved adapter), on the viewer's :class:`~napari_medadapt.core.session.ModelSession`.

Qt-free and torch-free at import (torch comes with the first job).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ...jobs import JobContext
    from ...session import ModelSession
    from ...volume import Volume
    from .fit import FewShotResult
    from .suggest import SliceSuggestion

#: The frozen-model choice of the foundation model (LiteMedSAM's slice embeddings).
FOUNDATION = "litemedsam"


def frozen_model(backbone: str, model_ref: str, session: ModelSession, ctx: JobContext) -> Any:
    """The session's frozen model: LiteMedSAM's predictor, or the segmentation model."""
    if backbone == FOUNDATION:
        from ...sam.workspace import ModelChoice

        return session.sam.predictor(ModelChoice(FOUNDATION), ctx, [])
    return session.model(model_ref, ctx)


def fit_job(
    backbone: str, model_ref: str, volume: Volume, labels: np.ndarray, settings: dict[str, Any],
    session: ModelSession, on_step: Any, warm_start: FewShotResult | None = None, *, ctx: JobContext,
) -> tuple[FewShotResult, str | None, list[SliceSuggestion]]:
    """Fit in the compute thread (from ``warm_start``'s weights when it matches); a segmentation model's
    adapted copy becomes a session variant; with the slices to suggest next."""
    from .fit import fit

    frozen = frozen_model(backbone, model_ref, session, ctx)
    result = fit(frozen, volume, labels, session=session, on_step=on_step, ctx=ctx, leave_one_out=False,
                 warm_start=warm_start, **settings)
    variant = None
    if backbone != FOUNDATION:
        variant = session.add_variant(result.model, f"{frozen.card.name} (few-shot {result.method})")
    return result, variant, result.suggestions(3)  # the ranking reads the whole volume: not on the UI thread


def leave_one_out_job(
    backbone: str, model_ref: str, volume: Volume, labels: np.ndarray, settings: dict[str, Any],
    session: ModelSession, *, ctx: JobContext,
) -> dict[int, float]:
    """The leave-one-slice-out check of a fit, in the compute thread (the frozen features are the session's)."""
    from .fit import leave_one_out

    frozen = frozen_model(backbone, model_ref, session, ctx)
    return leave_one_out(frozen, volume, labels, session=session, ctx=ctx, **settings)


def apply_job(folder: str, volume: Volume, model_ref: str | None, session: ModelSession, *, ctx: JobContext) -> tuple:
    """:func:`~napari_medadapt.core.adapt.fewshot.io.apply_adapter` in the compute thread."""
    from .io import apply_adapter

    return apply_adapter(folder, volume, session, model=model_ref, ctx=ctx)
