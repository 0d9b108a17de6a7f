"""The frozen part of a few-shot fit: a segmentation model's decoder features of one volume, computed once.

The features come from the one inference path: the source model segments the volume
(:func:`~napari_medadapt.core.inference.predict_prepared`) with a feature hook on the ``decoder`` tap that
records every batch's map, so the same pass gives the zero-shot segmentation (the floor a fit must beat) and
the features, on the same prepared, cropped input. They are kept as float16 ``(C, Z, Y, X)`` over the crop
box, so an epoch of an adapter or a linear probe costs only the trainable head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError
from ...inference import BatchPlace, crop_box, predict_prepared
from ...model_input import ModelInput, prepare_model_input
from ...provenance import model_sha256
from ...session import volume_fingerprint

if TYPE_CHECKING:
    import torch

    from ...jobs import JobContext
    from ...models import SegModel
    from ...session import ModelSession
    from ...volume import Volume


@dataclass
class FeatureVolume:
    """Decoder features of one volume.

    Attributes
    ----------
    features
        float16 ``(C, Z, Y, X)`` over :attr:`box` of the model grid.
    box
        The region of the model grid the network ran on (:func:`~napari_medadapt.core.inference.crop_box`).
    zero_shot
        The source model's labels on the volume's own grid (the same pass, with the card's post-processing:
        what the Segment dock shows).
    seconds
        Time the pass took.
    """

    features: np.ndarray
    box: tuple[slice, slice, slice]
    zero_shot: np.ndarray
    seconds: float


class _Recorder:
    """A feature hook that stores each batch's decoder map and returns it unchanged."""

    tap = "decoder"

    def __init__(self, store: np.ndarray, box: tuple[slice, slice, slice], spatial_dims: int) -> None:
        self.store = store
        self.origin = tuple(b.start for b in box)
        self.spatial_dims = spatial_dims

    def __call__(self, features: torch.Tensor, place: BatchPlace) -> torch.Tensor:
        values = features.detach().to("cpu").half().numpy()
        for sample, region in enumerate(place.regions):
            if self.spatial_dims == 2:
                z = int(place.slices[sample]) - self.origin[0]
                region = (slice(z + self.origin[0], z + self.origin[0] + 1), *region)
                block = values[sample][:, None]
            else:
                block = values[sample]
            local = tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, self.origin, strict=True))
            sizes = tuple(s.stop - s.start for s in local)
            self.store[(slice(None), *local)] = block[(slice(None), *(slice(0, n) for n in sizes))]
        return features


class SegBackbone:
    """A segmentation model's ``decoder`` tap on one volume.

    Parameters
    ----------
    model
        The source model (never changed).
    volume
        The volume to adapt to.
    modalities
        Explicit ``{model modality: channel}`` assignments (others matched by name).
    """

    def __init__(self, model: SegModel, volume: Volume, modalities: Mapping[str, str | None] | None = None) -> None:
        self.model = model
        self.volume = volume
        self.modalities = dict(modalities or {})
        self.prepared: ModelInput = prepare_model_input(model, volume, modalities)
        shape = self.prepared.data.shape[1:]
        self.box = crop_box(model, self.prepared.data) or tuple(slice(0, n) for n in shape)

    @property
    def spatial_dims(self) -> int:
        """2 (slice-wise model) or 3."""
        return self.model.spatial_dims

    @property
    def channels(self) -> int:
        """Channels of the decoder map."""
        return self.model.decoder_channels

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the feature grid (the crop box)."""
        return tuple(b.stop - b.start for b in self.box)  # type: ignore[return-value]

    def cache_key(self) -> tuple:
        """What the features depend on: the model's weights, the volume and the modality assignment."""
        return (
            "fewshot-features",
            self.model.card.name,
            self.model.card.weights_sha256,
            volume_fingerprint(self.volume),
            tuple(sorted(self.modalities.items())),
        )

    def compute(self, device: Any = None, ctx: JobContext | None = None, session: ModelSession | None = None) -> FeatureVolume:
        """The features and zero-shot labels (from ``session``'s cache when it holds them)."""
        import time

        if session is not None:
            cached = session.cached(self.cache_key())
            if cached is not None:
                return cached
        start = time.perf_counter()
        store = np.zeros((self.channels, *self.grid_shape), dtype=np.float16)
        recorder = _Recorder(store, self.box, self.spatial_dims)
        labels, _probs, _confidence, _notes = predict_prepared(
            self.model, self.prepared, ctx=ctx, device=device, return_probabilities=False, feature_hook=recorder,
        )
        result = FeatureVolume(store, self.box, labels, time.perf_counter() - start)
        if session is not None:
            session.keep(self.cache_key(), result, store.nbytes + labels.nbytes)
        return result

    def to_grid(self, plane: np.ndarray, axis: int, index: int) -> tuple[int, np.ndarray] | None:
        """A source-grid plane of labels on the feature grid: ``(index on the feature grid, labels)``, or
        ``None`` when the plane lies outside the region the network runs on (there the input is empty and the
        answer is background)."""
        import torch
        import torch.nn.functional as F

        source = self.prepared.source_shape
        model_shape = self.prepared.data.shape[1:]
        model_index = int(np.floor((index + 0.5) * model_shape[axis] / source[axis]))
        other = [a for a in range(3) if a != axis]
        if tuple(model_shape[a] for a in other) != plane.shape:
            resized = F.interpolate(
                torch.from_numpy(plane.astype(np.float32))[None, None], size=[model_shape[a] for a in other],
                mode="nearest",
            )
            plane = resized[0, 0].numpy().astype(plane.dtype)
        box_axis = self.box[axis]
        if not box_axis.start <= model_index < box_axis.stop:
            return None
        cropped = plane[tuple(self.box[a] for a in other)]
        return model_index - box_axis.start, np.ascontiguousarray(cropped)

    def trainable(self, method: str, classes: tuple[int, ...]) -> tuple[SegModel, torch.nn.Module, list[int]]:
        """A model copy with a new head for background + ``classes`` (initialised from the source head where
        the class exists), the head, and the label ids taken from the source."""
        from .train import new_head

        model = self.model
        head, reused = new_head(
            model.head, model.card.labels, classes, model.decoder_channels, model.spatial_dims,
            adapter=method == "adapter",
        )
        return adapted_copy(model, head, classes, method), head, reused

    @staticmethod
    def head_of(adapted: SegModel) -> torch.nn.Module:
        """The trained head of an adapted copy."""
        return adapted.head

    @staticmethod
    def feature_index(axis: int, index: int) -> int:
        """The features lie on the label grid."""
        return index

    def input_planes(self, indices: list[int]) -> np.ndarray:
        """The prepared network input of axial planes (feature-grid indices): ``(B, C, Y, X)`` float32."""
        if self.spatial_dims != 2:
            raise ModelError("training the backbone itself works with slice-wise (2D) models only.")
        z0 = self.box[0].start
        data = self.prepared.data[:, [z0 + i for i in indices]][:, :, self.box[1], self.box[2]]
        return np.ascontiguousarray(data.transpose(1, 0, 2, 3))

    @property
    def base_name(self) -> str:
        """The source model's name."""
        return self.model.card.name

    @property
    def base_sha256(self) -> str | None:
        """The source model's weights checksum (:func:`~napari_medadapt.core.provenance.model_sha256`)."""
        return model_sha256(self.model)

    def class_names(self, classes: tuple[int, ...]) -> dict[int, str]:
        """The source model's class names where it has the class."""
        names = dict(zip(self.model.card.labels, self.model.card.class_names, strict=True))
        return {0: "background", **{c: names.get(c, f"label {c}") for c in classes}}

    def predict(
        self, adapted: SegModel, classes: tuple[int, ...], device: Any = None, ctx: JobContext | None = None,
        largest_component: bool = False, session: ModelSession | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and float16 probabilities of ``adapted`` over the whole volume, on the source grid (the one
        inference path, with the source model's preparation and cropping)."""
        labels, probs, _confidence, _notes = predict_prepared(
            adapted, self.prepared, ctx=ctx, device=device, return_probabilities=True,
            largest_component=largest_component,
        )
        return labels, probs


def adapted_copy(model: SegModel, head: torch.nn.Module, classes: tuple[int, ...], method: str) -> SegModel:
    """A copy of ``model`` with ``head`` (background + ``classes``) and no prototype branch."""
    names = dict(zip(model.card.labels, model.card.class_names, strict=True))
    adapted = model.copy()
    adapted.prototypes = None
    adapted.replace_head(head)
    architecture = {**adapted.card.architecture, "out_channels": len(classes) + 1, "prototypes": None}
    adapted.card = replace(
        adapted.card,
        name=f"{model.card.name} (few-shot {method})",
        architecture=architecture,
        labels=[0, *classes],
        class_names=["background", *(names.get(c, f"label {c}") for c in classes)],
        regions={},
        path=None,
    )
    return adapted
