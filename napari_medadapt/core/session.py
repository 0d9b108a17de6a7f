"""A model session: each segmentation model loaded once, each whole-volume segmentation computed once,
and the models derived from them (a test-time-adapted copy) available to every dock by name.

The napari docks of one viewer share one session, owned by the viewer's compute worker (so it is only
used from one thread): the Segment, Test-time adaptation and TTS docks load ``glioma2d`` once between
them, and a segmentation the Segment dock computed is the "before" of the TTS dock and the source result
of an adaptation, without running the model again. A model adapted in the TTA dock is a *variant* of the
session ("glioma2d (TTA bn_affine)"): the Segment and TTS docks can pick it like any registered model. The
command line runs its workflows through a session too. Scripts may use a session the same way.

A cached segmentation is found by the model's card path and weights checksum, the post-processing
setting, and a fingerprint of the input volume (its channel names, grid and a hash of its voxels), so an
edited image or another modality assignment is segmented afresh.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .jobs import JobContext, ensure_context

if TYPE_CHECKING:
    from .inference import Prediction
    from .interactive.editor import ObjectEditor
    from .models import SegModel
    from .sam.workspace import SamWorkspace
    from .volume import Volume

__all__ = ["ModelSession", "volume_fingerprint"]


def volume_fingerprint(volume: Volume) -> str:
    """A hash of a volume's voxels, channel names and display grid (blake2b; ~0.2 s per 100 M voxels)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((volume.channels, volume.data.shape, volume.data.dtype.str)).encode())
    digest.update(np.ascontiguousarray(volume.geometry.display_affine, dtype=np.float64).tobytes())
    digest.update(memoryview(np.ascontiguousarray(volume.data)).cast("B"))
    return digest.hexdigest()


def _nbytes(prediction: Prediction) -> int:
    arrays = (prediction.labels, prediction.confidence, prediction.probabilities)
    return sum(a.nbytes for a in arrays if a is not None)


class ModelSession:
    """Models and whole-volume segmentations, cached (compute thread only).

    Parameters
    ----------
    max_models
        Models kept loaded (least recently used dropped first).
    max_prediction_bytes
        Memory the kept segmentations may use (each holds labels and confidence: ~5 bytes per voxel); the
        newest one is always kept.
    device
        Where segmentations run (default: :func:`~napari_medadapt.core.device.select_device`).
    """

    def __init__(self, max_models: int = 3, max_prediction_bytes: int = 1 << 30, device: Any = None) -> None:
        self.max_models = int(max_models)
        self.max_prediction_bytes = int(max_prediction_bytes)
        self.device = device
        self._models: OrderedDict[str, SegModel] = OrderedDict()
        self._variants: dict[str, SegModel] = {}  # derived models: kept until the session ends
        self._predictions: OrderedDict[tuple, Prediction] = OrderedDict()
        self._sam: SamWorkspace | None = None
        self._objects: ObjectEditor | None = None
        self._artefacts: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.loads = 0  # model files read
        self.hits = 0  # segmentations served from the cache

    def _key(self, name_or_path: str | Path) -> str:
        from .models.io import resolve_model

        if str(name_or_path) in self._models or str(name_or_path) in self._variants:
            return str(name_or_path)
        card_path, _weights = resolve_model(name_or_path)
        return str(Path(card_path).resolve())

    def add(self, model: SegModel) -> str:
        """Use an already loaded model for its card's path (or its name, for a model built in memory);
        returns the name to pass to :meth:`model` and :meth:`segment`."""
        key = str(Path(model.card.path).resolve()) if model.card.path else model.card.name
        self._models[key] = model
        return key

    @property
    def sam(self) -> SamWorkspace:
        """The promptable (Segment Anything) model of the session, with its embedding cache."""
        if self._sam is None:
            from .sam.workspace import SamWorkspace

            self._sam = SamWorkspace()
        return self._sam

    @property
    def objects(self) -> ObjectEditor:
        """The 3D objects being segmented with the promptable model (:attr:`sam`), per image."""
        if self._objects is None:
            from .interactive.editor import ObjectEditor

            self._objects = ObjectEditor(self.sam)
        return self._objects

    def add_variant(self, model: SegModel, name: str) -> str:
        """Keep a derived model (e.g. a test-time-adapted copy) under ``name`` (made unique with ``#2``,
        ``#3`` ...); its card gets that name. Returns the name to pass to :meth:`model` and :meth:`segment`."""
        unique, number = name, 1
        while unique in self._variants or unique in self._models:
            number += 1
            unique = f"{name} #{number}"
        model.card = replace(model.card, name=unique, path=None)
        self._variants[unique] = model
        return unique

    def model(self, name_or_path: str | Path, ctx: JobContext | None = None) -> SegModel:
        """The model of a registered name, card or weight file (loaded on first use), or a variant's."""
        from .models import load_model

        if str(name_or_path) in self._variants:
            return self._variants[str(name_or_path)]
        key = self._key(name_or_path)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        ensure_context(ctx).progress(0, 0, "loading the model")
        model = load_model(key)
        self.loads += 1
        self._models[key] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model

    def segment(
        self,
        name_or_path: str | Path,
        volume: Volume,
        *,
        largest_component: bool | None = None,
        ctx: JobContext | None = None,
        **options: Any,
    ) -> Prediction:
        """:func:`~napari_medadapt.core.inference.predict_volume` of the model on ``volume``, computed once.

        ``largest_component`` (``None``: the card's setting) and ``options`` (passed on, e.g. ``device``)
        are part of the cache key. Probabilities are not kept (``return_probabilities=False``). The labels
        returned are a copy: editing them (a napari Labels layer does) leaves the cached result intact.
        """
        from .inference import predict_volume

        model = self.model(name_or_path, ctx)
        if largest_component is None:
            largest_component = bool(model.card.postprocess.get("largest_component", False))
        key = (
            self._key(name_or_path),
            model.card.weights_sha256,
            volume_fingerprint(volume),
            bool(largest_component),
            tuple(sorted((k, repr(v)) for k, v in options.items())),
        )
        if key in self._predictions:
            self._predictions.move_to_end(key)
            self.hits += 1
        else:
            options.setdefault("device", self.device)
            self._predictions[key] = predict_volume(
                model, volume, ctx=ctx, return_probabilities=False, largest_component=largest_component, **options
            )
            while len(self._predictions) > 1 and sum(map(_nbytes, self._predictions.values())) > self.max_prediction_bytes:
                self._predictions.popitem(last=False)
        prediction = self._predictions[key]
        return replace(prediction, labels=prediction.labels.copy(), notes=list(prediction.notes))

    def keep(self, key: tuple, value: Any, nbytes: int) -> None:
        """Keep a computed artefact of a volume (the frozen features of a few-shot fit) under ``key``; older
        ones are dropped once they use more than ``max_prediction_bytes`` (the newest is always kept)."""
        self._artefacts[key] = (value, int(nbytes))
        self._artefacts.move_to_end(key)
        while len(self._artefacts) > 1 and sum(n for _, n in self._artefacts.values()) > self.max_prediction_bytes:
            self._artefacts.popitem(last=False)

    def cached(self, key: tuple) -> Any:
        """An artefact kept by :meth:`keep`, or ``None``."""
        if key not in self._artefacts:
            return None
        self._artefacts.move_to_end(key)
        self.hits += 1
        return self._artefacts[key][0]

    def clear(self) -> None:
        """Forget every model, variant, segmentation and kept artefact."""
        self._artefacts.clear()
        self._models.clear()
        self._variants.clear()
        self._predictions.clear()
        self._sam = None
        self._objects = None
