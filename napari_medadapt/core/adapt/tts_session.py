"""Interactive TTS: re-predict one slice after every keypoint change from cached features.

:class:`TTSSession` prepares the volume once, runs the network once per slice (cached, least recently used
slices dropped first) and, when keypoints move, only re-scores the channels and re-runs the head on the
muted cached features (the ``decoder`` tap). For other taps the cached features still make scoring free,
but the network after the tap has to run again.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from . import tts_engine as engine
from .tts import (
    TTSWarning,
    check_settings,
    label_ids_for,
    lost_target_message,
    one_sided_message,
    prepare_tts_input,
    validate_keypoints,
)
from .tts_select import (
    DEFAULT_ALPHA,
    DEFAULT_KEEP_FRACTION,
    ChannelSelection,
    combine_scores,
    keypoint_sums,
    select_channels,
)

if TYPE_CHECKING:
    import torch

    from ..volume import Volume


@dataclass
class SliceTTSResult:
    """TTS on one display slice.

    Attributes
    ----------
    z
        Display slice index (axis 0).
    labels, baseline_labels
        ``(Y, X)`` label ids with and without muting (equal when the slice has no keypoints).
    probabilities, baseline_probabilities
        ``(K, Y, X)`` float32.
    selection
        The channel mask used, ``None`` when the slice has no keypoints (unmuted).
    attention_before, attention_after
        ``(Y, X)`` mean activation of all channels / of the kept channels.
    warnings
        Messages about one-sided keypoints.
    """

    z: int
    labels: np.ndarray
    probabilities: np.ndarray
    baseline_labels: np.ndarray
    baseline_probabilities: np.ndarray
    selection: ChannelSelection | None
    attention_before: np.ndarray
    attention_after: np.ndarray
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class _CachedSlice:
    x: torch.Tensor
    tap: engine.TapPass
    grid_features: torch.Tensor
    baseline: np.ndarray
    attention_before: np.ndarray


class TTSSession:
    """Cached single-slice TTS for a 2D model and one volume.

    Parameters
    ----------
    model
        A 2D :class:`~napari_medadapt.core.models.SegModel` (weights never change).
    image
        A :class:`~napari_medadapt.core.volume.Volume` or an already normalised ``(C, Z, Y, X)`` array.
    layer
        Feature tap to mute (``"decoder"``: fastest, only the head re-runs).
    max_cached_slices
        Slices whose features stay in memory.
    """

    def __init__(
        self, model: Any, image: Volume | np.ndarray, layer: str = "decoder", max_cached_slices: int = 16
    ) -> None:
        check_settings(DEFAULT_ALPHA, DEFAULT_KEEP_FRACTION, layer)
        engine.check_layer(model, layer)
        if engine.spatial_dims_of(model) != 2:
            raise ModelError(
                "Slice-by-slice TTS needs a 2D model; for a 3D model run tts() on the whole volume."
            )
        self.model = model
        self.layer = layer
        self.max_cached_slices = int(max_cached_slices)
        self._x, self.shape = prepare_tts_input(model, image)
        self._grid = tuple(self._x.shape[1:])
        self._cache: OrderedDict[int, _CachedSlice] = OrderedDict()
        self._device = next(model.parameters()).device
        self._background = engine.background_channels(model, layer)

    @property
    def cached_slices(self) -> list[int]:
        """Model-grid slice indices whose features are cached."""
        return list(self._cache)

    def clear(self) -> None:
        """Drop every cached slice."""
        self._cache.clear()

    def features(self, z: int) -> np.ndarray:
        """``(C, Y, X)`` float32 tap features of display slice ``z``, resampled to the display grid (cached)."""
        entry = self._cached(self._grid_slice(int(z)))
        return engine.resize_to(entry.grid_features[0].cpu().numpy(), self.shape[1:])

    def _grid_slice(self, z: int) -> int:
        return int(engine.points_to_grid(np.array([[z]]), self.shape[:1], self._grid[:1])[0, 0])

    def _cached(self, zg: int) -> _CachedSlice:
        import torch

        if zg in self._cache:
            self._cache.move_to_end(zg)
            return self._cache[zg]
        was_training = self.model.training
        self.model.eval()
        try:
            x = torch.from_numpy(np.ascontiguousarray(self._x[:, zg][None])).to(self._device)
            tap = engine.forward_tap(self.model, x, self.layer, 2)
        finally:
            self.model.train(was_training)
        grid_features = engine.features_on_grid(self.model, tap.features, x.shape[2:])
        baseline = engine.probabilities_from_logits(tap.logits)[0].cpu().numpy()
        entry = _CachedSlice(
            x=x,
            tap=tap,
            grid_features=grid_features,
            baseline=engine.resize_to(baseline, self.shape[1:]),
            attention_before=engine.resize_to(grid_features[0].mean(dim=0).cpu().numpy(), self.shape[1:]),
        )
        self._cache[zg] = entry
        while len(self._cache) > self.max_cached_slices:
            self._cache.popitem(last=False)
        return entry

    def predict_slice(
        self,
        z: int,
        positive_points: Any,
        negative_points: Any,
        alpha: float = DEFAULT_ALPHA,
        keep_fraction: float = DEFAULT_KEEP_FRACTION,
        keep_background: bool = True,
        warn: bool = True,
    ) -> SliceTTSResult:
        """Muted and baseline prediction of display slice ``z``.

        Parameters
        ----------
        z
            Display slice index (axis 0).
        positive_points, negative_points
            ``(N, 3)`` ``(z, y, x)`` keypoints of the whole volume; only those on slice ``z`` are used.
        alpha, keep_fraction, keep_background
            As in :func:`~napari_medadapt.core.adapt.tts.tts`.
        warn
            Also issue the result's messages as :class:`TTSWarning` (a dock shows them in its status instead).
        """
        import torch

        check_settings(alpha, keep_fraction, self.layer)
        if not 0 <= int(z) < self.shape[0]:
            raise ModelError(f"slice {z} is outside the volume (0..{self.shape[0] - 1}).")
        positives = validate_keypoints(positive_points, self.shape, "positive")
        negatives = validate_keypoints(negative_points, self.shape, "negative")
        positives = positives[positives[:, 0] == int(z)]
        negatives = negatives[negatives[:, 0] == int(z)]
        entry = self._cached(self._grid_slice(int(z)))
        label_ids = label_ids_for(self.model, entry.baseline.shape[0])
        baseline_labels = label_ids[entry.baseline.argmax(axis=0)]
        if len(positives) + len(negatives) == 0:
            return SliceTTSResult(
                z=int(z),
                labels=baseline_labels,
                probabilities=entry.baseline,
                baseline_labels=baseline_labels,
                baseline_probabilities=entry.baseline,
                selection=None,
                attention_before=entry.attention_before,
                attention_after=entry.attention_before,
            )
        pos_grid = engine.points_to_grid(positives, self.shape, self._x.shape[1:])[:, 1:]
        neg_grid = engine.points_to_grid(negatives, self.shape, self._x.shape[1:])[:, 1:]
        pos_sum, neg_sum = keypoint_sums(entry.grid_features[0], pos_grid, neg_grid)
        scores = combine_scores(pos_sum, neg_sum, alpha)
        background = self._background if keep_background else np.zeros(0, dtype=np.int64)
        kept = select_channels(scores, keep_fraction, background)
        selection = ChannelSelection(
            scores=scores,
            kept=kept,
            n_positive=len(positives),
            n_negative=len(negatives),
            slices=(self._grid_slice(int(z)),),
            background=background,
        )
        mask = torch.from_numpy(selection.mask[None]).to(self._device)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = engine.muted_logits(self.model, entry.x, entry.tap, self.layer, mask, 2)
        finally:
            self.model.train(was_training)
        probabilities = engine.resize_to(
            engine.probabilities_from_logits(logits)[0].cpu().numpy(), self.shape[1:]
        )
        attention_after = (
            entry.grid_features[0, torch.from_numpy(kept).to(self._device)].mean(dim=0).cpu().numpy()
        )
        labels = label_ids[probabilities.argmax(axis=0)]
        messages = [
            m
            for m in (
                one_sided_message(len(positives), len(negatives), f"TTS on slice {int(z)}"),
                lost_target_message(labels, baseline_labels, positives[:, 1:]),
            )
            if m
        ]
        for message in messages if warn else ():
            warnings.warn(message, TTSWarning, stacklevel=2)
        return SliceTTSResult(
            z=int(z),
            labels=labels,
            probabilities=probabilities,
            baseline_labels=baseline_labels,
            baseline_probabilities=entry.baseline,
            selection=selection,
            attention_before=entry.attention_before,
            attention_after=engine.resize_to(attention_after, self.shape[1:]),
            warnings=tuple(messages),
        )
