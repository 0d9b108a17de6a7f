"""The compute side of the Prototype explanations dock (and of scripted sessions): one explainer per model,
volume and bank, kept while they stay the same; explanations with the current plane's heatmaps first; volume
heatmaps, source slices, forgetting and post-hoc banks on demand. Runs in the compute thread only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..jobs import JobContext, ensure_context
from .explain import Explainer, Explanation
from .targets import component_at, resolve_bank

if TYPE_CHECKING:
    from ..session import ModelSession
    from ..volume import Volume
    from .bank import PrototypeBank

TARGETS = ("voxel", "predicted region", "label region")


@dataclass
class ExplainResult:
    """An explanation with the heatmaps of its matches on ``plane`` (float16 (n, Z, Y, X), other planes 0),
    the evidence map of a region (same grid), the region explained (``None`` for a voxel) and the prediction."""

    explanation: Explanation
    bank: PrototypeBank
    plane: int
    heatmaps: np.ndarray
    evidence: np.ndarray | None
    region: np.ndarray | None
    prediction: np.ndarray | None
    whole_volume: bool = False  # the heatmaps cover every plane (not only ``plane``)
    focus: np.ndarray | None = None  # the whole-volume view's region: the explained object + a margin
    focus_text: str | None = None  # what that region is, e.g. "inside the predicted region + 5 mm"


@dataclass
class VolumeHeatmaps:
    """Heatmaps over the whole volume (unrestricted, float16 (n, Z, Y, X)) and the region of the honest view:
    the explained object grown by a margin (``None`` when the target is a voxel predicted background), with
    ``focus_text`` saying what it is."""

    heatmaps: np.ndarray
    focus: np.ndarray | None
    focus_text: str | None


@dataclass
class ForgetResult:
    """Labels before and after forgetting ``forgotten`` (display grid), and the session variant's card."""

    before: np.ndarray
    after: np.ndarray
    forgotten: tuple[int, ...]
    variant: Any


class ExplainWorkspace:
    """Explanations of session models on a volume.

    Parameters
    ----------
    session
        The model session (models are loaded once; a model with forgotten prototypes becomes a session variant).
    """

    def __init__(self, session: ModelSession) -> None:
        self.session = session
        self._key: tuple | None = None
        self._explainer: Explainer | None = None
        self._prediction: np.ndarray | None = None
        self._spacing: tuple[float, ...] = (1.0, 1.0, 1.0)

    def explainer(self, model_ref: str, volume: Volume, bank: str | Path | None = None) -> Explainer:
        """The explainer of ``model_ref`` on ``volume`` with ``bank`` (the model's own by default), reused."""
        from ..model_input import prepare_model_input
        from ..session import volume_fingerprint

        key = (model_ref, volume_fingerprint(volume), str(bank) if bank else None)
        if key != self._key or self._explainer is None:
            model = self.session.model(model_ref)
            explainer = Explainer(model, resolve_bank(model, bank), prepare_model_input(model, volume), device=None)
            self._key, self._explainer, self._prediction = key, explainer, None
            self._spacing = tuple(float(s) for s in volume.geometry.spacing)
        return self._explainer

    @property
    def forgotten(self) -> tuple[int, ...]:
        """Prototype ids forgotten in the current explainer."""
        return () if self._explainer is None else self._explainer.forgotten

    def evidence(self, explanation: Explanation, heatmaps: np.ndarray) -> np.ndarray:
        """The evidence map of a region's explanation from its matches' heatmaps."""
        return self._explainer.evidence(explanation, heatmaps)

    def build_bank(self, model_ref: str, cases: Path, out: Path | None = None, ctx: JobContext | None = None) -> Path:
        """A post-hoc bank for ``model_ref`` from a folder of labelled case folders (or one case folder), saved at
        ``out`` or in the user cache (where the model's bank is looked for); returns the card's path."""
        from .bank import cache_bank_path, save_bank
        from .projection import case_folders, case_slices, kmeans_bank

        model = self.session.model(model_ref)
        target = out or cache_bank_path(model)
        if target is None:
            from ..errors import ModelError

            raise ModelError(f"the model {model.card.name!r} exists only in this session; save it before building a bank.")
        bank = kmeans_bank(model, case_slices(case_folders(cases), model), ctx=ctx)
        return save_bank(bank, target, replace=out is None)  # the cache's bank of this model is rebuilt

    def prediction(self, explainer: Explainer, ctx: JobContext | None = None) -> np.ndarray:
        """The explained model's labels on the volume (computed once per explainer and forgotten set)."""
        if self._prediction is None:
            self._prediction = explainer.predict(ctx=ctx)
        return self._prediction

    def explain(
        self, model_ref: str, volume: Volume, target: str, *, zyx: Sequence[int] | None = None,
        region: np.ndarray | None = None, top_k: int = 5, bank: str | Path | None = None,
        ctx: JobContext | None = None,
    ) -> ExplainResult:
        """Explain a ``voxel`` (``zyx``), the ``predicted region`` (connected component) at ``zyx``, or a
        ``label region`` (``region`` mask); heatmaps of the matches on the target's plane."""
        ctx = ensure_context(ctx)
        explainer = self.explainer(model_ref, volume, bank)
        prediction = None
        if target == "voxel":
            explanation = explainer.explain_voxel(zyx, top_k)
            plane = int(zyx[0])
        else:
            if target == "predicted region":
                explainer.check_voxel(zyx)
                prediction = self.prediction(explainer, ctx)
                region = component_at(prediction, zyx)
                description = "predicted region at the point"
            else:
                description = "label region"
            explanation = explainer.explain_region(region, top_k, description=description, ctx=ctx)
            plane = int(zyx[0]) if zyx is not None and region[int(zyx[0])].any() else int(np.argmax(region.sum(axis=(1, 2))))
        heatmaps = explainer.heatmaps([m.id for m in explanation.matches], planes=[plane], ctx=ctx)
        evidence = None if region is None else explainer.evidence(explanation, heatmaps)
        return ExplainResult(explanation, explainer.bank, plane, heatmaps, evidence, region, prediction)

    def volume_heatmaps(self, result: ExplainResult, ctx: JobContext | None = None) -> VolumeHeatmaps:
        """Heatmaps of ``result``'s matches over the whole volume (with progress), and the region of the honest
        view (:func:`~napari_medadapt.core.explain.localisation.focus_mask` of the explained object: the region,
        or the predicted region at an explained voxel)."""
        from .localisation import focus_mask, focus_text

        heatmaps = self._explainer.heatmaps([m.id for m in result.explanation.matches], ctx=ctx)
        target = result.explanation.target
        obj, what = None, None
        if result.region is not None:
            obj, what = result.region, target.get("description", "region").replace(" at the point", "")
        elif target.get("kind") == "voxel":
            prediction = self.prediction(self._explainer, ctx)
            zyx = tuple(int(i) for i in target["zyx"])
            if prediction[zyx] != 0:
                obj, what = component_at(prediction, zyx), "predicted region at the point"
        if obj is None:
            return VolumeHeatmaps(heatmaps, None, None)
        return VolumeHeatmaps(heatmaps, focus_mask(obj, self._spacing), focus_text(what))

    def export(self, result: ExplainResult, volume: Volume, image: np.ndarray, folder: Path, ctx: JobContext | None = None) -> Path:
        """Write ``result`` as a report into ``folder`` (heatmaps over the whole volume, computed unless they are);
        ``image`` (Z, Y, X) is shown under the heatmaps. Returns the HTML file."""
        from .report import write_explanation

        heatmaps = result.heatmaps if result.whole_volume else self.volume_heatmaps(result, ctx=ctx).heatmaps
        evidence = None if result.region is None else self.evidence(result.explanation, heatmaps)
        written = write_explanation(
            folder, result.explanation, result.bank, heatmaps, volume.geometry, plane_image=image[result.plane],
            plane=result.plane, evidence=evidence, inputs=[p for p in volume.source_paths if p],
            extra={"inputs": {c: p for c, p in zip(volume.channels, volume.source_paths, strict=True) if p}},
        )
        return written["html"]

    def forget(self, ids: Sequence[int], ctx: JobContext | None = None) -> ForgetResult:
        """Predict again with prototypes ``ids`` forgotten (``()`` restores every one); the model with the
        forgotten prototypes becomes a session variant (usable in every dock; its card lists them)."""
        explainer = self._explainer
        before = self.prediction(explainer, ctx)
        explainer.forget(ids)
        self._prediction = None
        after = self.prediction(explainer, ctx)
        variant = None
        if explainer.forgotten:
            name = f"{explainer.base.card.name} without prototypes {','.join(map(str, explainer.forgotten))}"
            variant = self.session.model(self.session.add_variant(explainer.model, name)).card
        return ForgetResult(before, after, explainer.forgotten, variant)


def source_image(bank: PrototypeBank, pid: int, ctx: JobContext | None = None) -> tuple[np.ndarray, str | None]:
    """Prototype ``pid``'s full training plane (the display channel), or its stored patch and the message saying
    why the plane is unavailable."""
    from .report import display_channel
    from .sources import SourceUnavailable, source_plane

    channel = display_channel(bank.card["modalities"])
    try:
        image, _labels = source_plane(bank.entry(pid)["source"], bank.card["modalities"])
        return image[channel], None
    except SourceUnavailable as err:
        return bank.patches[pid, channel].astype(np.float32), str(err)
