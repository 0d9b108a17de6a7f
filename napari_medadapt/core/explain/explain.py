"""Case-based explanations of a segmentation: which prototypes a voxel or region resembles, where they fire.

:class:`Explainer` holds one model, one prototype bank and one prepared volume. For a voxel or a region it
reports the top-k prototypes by cosine similarity (their class, source case, plane and position), and the
share of the predicted class's score each of that class's prototypes carries (``w_ck * mean similarity``,
negative contributions counted as 0). Heatmaps are each prototype's similarity over the volume (current plane
first, any planes on demand), shown as the activation ``exp(scale * (cos - 1))`` in (0, 1] (1 on the
prototype's own feature; ``scale`` is the head's logit scale, 10 for post-hoc banks), which separates the
object from the rest of the image far better than raw cosine values. With a model's own head bank whose projection was kept (the bank's card says
``projection.kept``), the model explained uses the projected prototypes, so every prototype *is* its source
patch's feature. Forgetting prototypes zeroes their weight in a copy of the model (nothing retrained) and
predicts again.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError, PromptError
from ..jobs import JobContext, ensure_context
from .bank import PrototypeBank, check_bank_model
from .features import bank_embedding, cosine_maps, decoder_features
from .projection import with_prototypes

if TYPE_CHECKING:
    import torch

    from ..model_input import ModelInput
    from ..models import SegModel


#: Activation scale of post-hoc (decoder) banks: the prototype head's default logit scale.
DEFAULT_SCALE = 10.0


@dataclass
class PrototypeMatch:
    """One prototype in an explanation: similarity to the target and its share of the class score."""

    id: int
    network_class: int
    label: int
    class_name: str
    similarity: float
    share: float | None
    source: dict[str, Any]
    forgotten: bool = False


@dataclass
class Explanation:
    """The explanation of a voxel or region (JSON-ready with :meth:`as_dict`)."""

    target: dict[str, Any]
    predicted_label: int
    predicted_class: str
    probability: float
    matches: list[PrototypeMatch]
    shares: list[dict[str, Any]]
    model: str
    bank: str
    projected: bool
    similar_planes: list[dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return asdict(self)


class Explainer:
    """Prototype explanations of ``model`` on ``prepared`` with ``bank``.

    Parameters
    ----------
    model
        The segmentation model the bank was built for (checked).
    bank
        Its prototype bank.
    prepared
        The volume prepared for the model (:func:`~napari_medadapt.core.model_input.prepare_model_input`).
    forgotten
        Prototype ids whose weight is 0 (head banks only).
    projected
        Explain with the bank's projected prototypes (head banks); ``None`` follows the bank's card
        (``projection.kept``), ``False`` explains the model's own prototypes against the gallery.
    device
        Torch device of the explainer's own copy of the model (default CPU: one plane is milliseconds); the
        model passed in (e.g. a session's, possibly on a GPU) is never moved or changed.
    """

    def __init__(
        self, model: SegModel, bank: PrototypeBank, prepared: ModelInput, *,
        forgotten: Iterable[int] = (), projected: bool | None = None, device: torch.device | None = None,
    ) -> None:
        check_bank_model(bank, model)
        self.base = model
        self.bank = bank
        self.prepared = prepared
        import torch

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        kept = bool(bank.card.get("projection", {}).get("kept", False)) if projected is None else projected
        self.projected = bank.space == "head" and kept
        self.model = self._copy()
        self.forgotten: tuple[int, ...] = ()
        if tuple(forgotten):
            self.forget(forgotten)

    # ------------------------------------------------------------------ grids
    @property
    def vectors(self) -> np.ndarray:
        """The prototype vectors heatmaps compare: the head's own (projected when kept), else the bank's."""
        if self.bank.space == "head":
            return self.model.prototypes.prototypes.detach().float().cpu().numpy()
        return self.bank.vectors

    def _copy(self) -> SegModel:
        """The explained model: a copy of the base (with the projected prototypes when kept) on ``device``."""
        base = with_prototypes(self.base, self.bank.vectors) if self.projected else copy.deepcopy(self.base)
        return base.eval().to(self.device)

    @property
    def scale(self) -> float:
        """Logit scale turning cosine similarity into the heatmaps' activation."""
        return float(self.model.prototypes.scale) if self.bank.space == "head" else DEFAULT_SCALE

    def _model_index(self, zyx: Sequence[int]) -> tuple[int, int, int]:
        source, model = self.prepared.source_shape, self.prepared.data.shape[1:]
        return tuple(min(int((int(i) + 0.5) * m / s), m - 1) for i, m, s in zip(zyx, model, source, strict=True))  # type: ignore[return-value]

    def check_voxel(self, zyx: Sequence[int]) -> tuple[int, int, int]:
        shape = self.prepared.source_shape
        if len(zyx) != 3 or not all(0 <= int(i) < n for i, n in zip(zyx, shape, strict=True)):
            raise PromptError(f"the voxel {tuple(int(i) for i in zyx)} is outside the image (shape {tuple(shape)}); pick a voxel inside it.")
        return tuple(int(i) for i in zyx)  # type: ignore[return-value]

    def _plane_outputs(self, planes: Sequence[int], ctx: JobContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings (n, D, Y, X) and class probabilities (n, K, Y, X) of model-grid planes (2D models), or
        of the whole volume (3D: n = 1, with Z)."""
        import torch

        decoder = decoder_features(self.model, self.prepared.data, planes, device=self.device, ctx=ctx)
        with torch.inference_mode():
            decoder = decoder.to(self.device)
            probs = torch.softmax(self.model.logits_from_decoder(decoder), dim=1).cpu()
        return bank_embedding(self.model, self.bank.space, decoder).cpu(), probs

    def _region_stats(self, mask: np.ndarray, ctx: JobContext | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean similarity to every prototype (P,), mean class probability (K,) and summed unit feature (D,) over
        the model-grid ``mask``."""
        sims, probs, pooled = np.zeros(len(self.bank)), np.zeros(self.model.num_classes), 0.0
        chunks = [None] if self.model.spatial_dims == 3 else np.array_split(
            np.flatnonzero(mask.any(axis=(1, 2))), max(-(-int(mask.any(axis=(1, 2)).sum()) // 8), 1)
        )
        for chunk in chunks:
            embedding, p = self._plane_outputs(None if chunk is None else chunk, ctx)
            inside = (mask[None] if chunk is None else mask[chunk])[:, None].astype(np.float32)
            axes = (0, *range(2, p.ndim))
            sims += (cosine_maps(embedding, self.vectors).numpy() * inside).sum(axis=axes)
            probs += (p.numpy() * inside).sum(axis=axes)
            pooled = pooled + (embedding.numpy() * inside).sum(axis=axes)
        count = max(int(mask.sum()), 1)
        return sims / count, probs / count, np.asarray(pooled)

    def similar_planes(self, pooled: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
        """The training planes whose pooled features are nearest ``pooled`` (a summed or mean unit feature):
        content-based retrieval, each with its source, cosine similarity and reference label voxel counts."""
        query = np.asarray(pooled, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-8)
        sims = self.bank.plane_vectors @ query
        order = np.argsort(-sims)[: max(int(top_k), 1)]
        return [{**self.bank.card["planes"][i], "similarity": round(float(sims[i]), 4)} for i in order]

    # ------------------------------------------------------------------ explanations
    def _explanation(
        self, target: dict[str, Any], sims: np.ndarray, probs: np.ndarray, pooled: np.ndarray, top_k: int, start: float,
    ) -> Explanation:
        cls = int(np.argmax(probs))
        label = int(self.model.card.labels[cls])
        notes = []
        if label == 0:
            notes.append("the model predicts background here; the prototypes below say what it resembles.")
        if self.bank.space != "head":
            notes.append("post-hoc bank: its prototypes take no part in the model's score; the shares are of the "
                         "predicted class's bank similarities (each weighted 1/K).")
        classes = self.bank.network_classes
        weights = self._weights()
        own = np.flatnonzero(classes == cls)
        contribution = np.maximum(weights[own] * sims[own], 0.0)
        total = float(contribution.sum())
        share = {int(i): (float(c) / total if total > 0 else 0.0) for i, c in zip(own, contribution, strict=True)}
        order = [int(i) for i in np.argsort(-sims)[: max(int(top_k), 1)]]
        matches = [
            PrototypeMatch(
                id=i, network_class=int(classes[i]), label=int(self.bank.entry(i)["label"]), class_name=self.bank.class_name(i),
                similarity=round(float(sims[i]), 4), share=round(share[i], 4) if i in share else None,
                source=dict(self.bank.entry(i)["source"]), forgotten=i in self.forgotten,
            )
            for i in order
        ]
        shares = [{"id": i, "share": round(s, 4), "similarity": round(float(sims[i]), 4)} for i, s in sorted(share.items(), key=lambda kv: -kv[1])]
        return Explanation(
            target=target, predicted_label=label, predicted_class=self.bank.class_name(own[0]) if len(own) else str(label),
            probability=round(float(probs[cls]), 4), matches=matches, shares=shares, model=self.base.card.name,
            bank=str(self.bank.card["name"]), projected=self.projected, similar_planes=self.similar_planes(pooled, top_k),
            seconds=round(time.perf_counter() - start, 3), notes=notes,
        )

    def _weights(self) -> np.ndarray:
        if self.bank.space == "head":
            return self.model.prototypes.weights.detach().cpu().numpy()
        per_class = np.bincount(self.bank.network_classes)
        return 1.0 / per_class[self.bank.network_classes]

    def explain_voxel(self, zyx: Sequence[int], top_k: int = 5) -> Explanation:
        """The top-k prototypes at voxel ``zyx`` (display grid), its predicted class and the class-score shares."""
        start = time.perf_counter()
        zyx = self.check_voxel(zyx)
        z, y, x = self._model_index(zyx)
        planes = [z] if self.model.spatial_dims == 2 else None
        embedding, probs = self._plane_outputs(planes)
        index = (0, slice(None), y, x) if self.model.spatial_dims == 2 else (0, slice(None), z, y, x)
        sims = cosine_maps(embedding, self.vectors)[index].numpy()
        # the global view pools the plane's predicted object (else the whole plane), as the training planes were pooled
        plane = (0, slice(None)) if self.model.spatial_dims == 2 else (0, slice(None), z)
        features, predicted = embedding[plane].numpy(), probs[plane].argmax(0).numpy() > 0
        weight = predicted if predicted.any() else np.any(self.prepared.data[:, z] != 0, axis=0)
        pooled = (features * weight[None]).reshape(len(features), -1).sum(axis=1)
        return self._explanation({"kind": "voxel", "zyx": list(zyx)}, sims, probs[index].numpy(), pooled, top_k, start)

    def explain_region(self, mask: np.ndarray, top_k: int = 5, *, description: str = "region", ctx: JobContext | None = None) -> Explanation:
        """The top-k prototypes by mean similarity over the display-grid ``mask`` (Z, Y, X), with shares."""
        start = time.perf_counter()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(self.prepared.source_shape):
            raise PromptError(f"the region has shape {mask.shape}; the image has {tuple(self.prepared.source_shape)}. Use labels drawn on this image.")
        if not mask.any():
            raise PromptError(f"the {description} is empty; paint or choose a region with at least one voxel.")
        model_mask = self._to_model_grid(mask)
        if not model_mask.any():
            raise PromptError(f"the {description} ({int(mask.sum())} voxels) vanishes on the model's coarser grid; choose a larger region.")
        sims, probs, pooled = self._region_stats(model_mask, ctx)
        target = {"kind": "region", "description": description, "voxels": int(mask.sum())}
        return self._explanation(target, sims, probs, pooled, top_k, start)

    def _to_model_grid(self, mask: np.ndarray) -> np.ndarray:
        if not self.prepared.resampled:
            return mask
        from skimage.transform import resize

        return resize(mask, self.prepared.data.shape[1:], order=0, preserve_range=True, anti_aliasing=False).astype(bool)

    # ------------------------------------------------------------------ heatmaps
    def heatmaps(
        self, ids: Sequence[int], planes: Sequence[int] | None = None, *, cosine: bool = False, ctx: JobContext | None = None,
    ) -> np.ndarray:
        """Activation of every voxel for prototypes ``ids`` (raw cosine similarity with ``cosine``): float16
        (n, Z, Y, X) on the display grid; for 2D models only display planes ``planes`` are computed (all when
        ``None``), the others stay 0."""
        from ..model_input import resize_channels

        ctx = ensure_context(ctx)
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.bank)]
        if bad:
            raise ModelError(f"prototype ids {bad} do not exist; the bank has 0..{len(self.bank) - 1}.")
        shape = self.prepared.data.shape[1:]
        out = np.zeros((len(ids), *shape), dtype=np.float16)
        vectors = self.vectors[ids]

        def shown(cos: np.ndarray) -> np.ndarray:
            return cos if cosine else np.exp(self.scale * (cos - 1.0))

        if self.model.spatial_dims == 3:
            embedding, _ = self._plane_outputs(None, ctx)
            out[:] = shown(cosine_maps(embedding, vectors)[0].numpy())
        else:
            wanted = list(range(shape[0]) if planes is None else sorted({self._model_index((p, 0, 0))[0] for p in planes}))
            for step, start in enumerate(range(0, len(wanted), 8)):
                chunk = wanted[start : start + 8]
                embedding, _ = self._plane_outputs(chunk)
                out[:, chunk] = shown(cosine_maps(embedding, vectors).numpy()).transpose(1, 0, 2, 3)
                ctx.progress(step + 1, -(-len(wanted) // 8), f"prototype heatmaps, planes {start + 1}-{start + len(chunk)} of {len(wanted)}")
        if not self.prepared.resampled:
            return out
        if planes is None or self.model.spatial_dims == 3:
            return resize_channels(out.astype(np.float32), tuple(self.prepared.source_shape)).astype(np.float16)
        # only some planes computed: each display plane takes its model plane, resized in-plane (resizing the whole
        # volume would blend it with the planes left at 0)
        source = tuple(self.prepared.source_shape)
        display = np.zeros((len(ids), *source), dtype=np.float16)
        for plane in planes:
            model_plane = self._model_index((plane, 0, 0))[0]
            display[:, plane] = resize_channels(out[:, model_plane, None].astype(np.float32), (1, *source[1:]))[:, 0]
        return display

    def evidence(self, explanation: Explanation, maps: np.ndarray) -> np.ndarray:
        """The combined evidence map of a region's explanation: its matches' activation heatmaps (``maps``, in
        match order) weighted by their share of the class score (equal weights when no share applies)."""
        weights = np.asarray([m.share if m.share is not None else 0.0 for m in explanation.matches], dtype=np.float32)
        if weights.sum() <= 0:
            weights = np.ones(len(explanation.matches), dtype=np.float32)
        weights /= weights.sum()
        return np.tensordot(weights, maps.astype(np.float32), axes=1).astype(np.float16)

    # ------------------------------------------------------------------ forgetting
    def forget(self, ids: Iterable[int]) -> None:
        """Explain and predict with prototypes ``ids`` weighted 0 (replaces the forgotten set; ``()`` restores all).

        Raises
        ------
        ModelError
            A post-hoc (decoder) bank: its prototypes take no part in the prediction, so nothing would change.
        """
        ids = tuple(sorted({int(i) for i in ids}))
        if ids and self.bank.space != "head":
            raise ModelError(
                "this is a post-hoc prototype bank: its prototypes explain the model but take no part in its "
                "prediction, so forgetting one cannot change the segmentation."
            )
        if ids == self.forgotten:
            return
        model = self._copy()
        model.prototypes.forget(ids)
        model.card = copy.deepcopy(model.card)
        arch = dict(model.card.architecture)
        arch["prototypes"] = {**arch["prototypes"], "forgotten": list(ids)}
        model.card.architecture = arch
        self.model, self.forgotten = model, ids

    def predict(self, *, ctx: JobContext | None = None) -> np.ndarray:
        """Labels of the explained model (projected and forgetting as set) on the display grid."""
        from ..inference import predict_prepared

        labels, _probs, _confidence, _notes = predict_prepared(
            self.model, self.prepared, ctx=ctx, device=self.device, return_probabilities=False
        )
        return labels
