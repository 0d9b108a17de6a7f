"""Interactive TTS: re-predict one slice after every keypoint change from cached features.

:class:`SliceTTS` prepares the volume once, runs the network once per slice (cached, least recently used
slices dropped first) and, when keypoints move, only re-scores the channels and re-runs the head on the
muted cached features (the ``decoder`` tap). For other taps the cached features still make scoring free,
but the network after the tap has to run again.

The network sees what it sees in :func:`~napari_medadapt.core.inference.predict_volume`: the same prepared
input, cropped to the same box around the non-zero input (:func:`~napari_medadapt.core.inference.crop_box`), so
an unmuted slice equals that slice of Segment volume's prediction. Outside the box every voxel is background
with probability 1 and attention 0, and keypoints there are not used.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError
from ...inference import crop_box
from . import engine
from .muting import inside
from .run import (
    TTSWarning,
    check_settings,
    label_ids_for,
    lost_target_message,
    one_sided_message,
    prepare_tts_input,
    validate_keypoints,
)
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

    from ...volume import Volume


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
    """One model-grid slice: the crop's input and tap pass, its features on the crop, and the display-grid
    baseline and attention (background and 0 outside the crop). ``tap`` is ``None`` for a slice outside
    the crop."""

    x: torch.Tensor | None
    tap: engine.TapPass | None
    grid_features: torch.Tensor | None
    baseline: np.ndarray
    attention_before: np.ndarray


class SliceTTS:
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
        prepared = prepare_tts_input(model, image)
        self._x, self.shape = prepared.data, tuple(prepared.source_shape)
        self._grid = tuple(self._x.shape[1:])
        box = crop_box(model, self._x) or tuple(slice(0, n) for n in self._grid)
        self._box: tuple[slice, slice, slice] = box  # type: ignore[assignment]
        self._outside = np.ones(self._grid[1:], dtype=bool)
        self._outside[box[1:]] = False
        self._cache: OrderedDict[int, _CachedSlice] = OrderedDict()
        self._device = next(model.parameters()).device
        self._background = engine.background_channels(model, layer)

    @property
    def cached_slices(self) -> list[int]:
        """Model-grid slice indices whose features are cached."""
        return list(self._cache)

    def features(self, z: int) -> np.ndarray:
        """``(C, Y, X)`` float32 tap features of display slice ``z``, resampled to the display grid (cached;
        0 outside the region the network runs on)."""
        entry = self._cached(self._grid_slice(int(z)))
        if entry.grid_features is None:
            raise ModelError(f"slice {z} lies outside the region the model runs on (the empty background).")
        full = self._on_slice(entry.grid_features[0].cpu().numpy(), 0.0)
        return engine.resize_to(full, self.shape[1:])

    def _grid_slice(self, z: int) -> int:
        return int(engine.points_to_grid(np.array([[z]]), self.shape[:1], self._grid[:1])[0, 0])

    def _on_slice(self, crop: np.ndarray, fill: float) -> np.ndarray:
        """A crop ``(..., y, x)`` placed on the model grid's slice, ``fill`` outside (model grid)."""
        full = np.full((*crop.shape[:-2], *self._grid[1:]), fill, dtype=np.float32)
        full[(..., *self._box[1:])] = crop
        return full

    def _probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Crop probabilities ``(K, y, x)`` on the display slice, background (class 0) with 1 outside."""
        full = self._on_slice(probabilities, 0.0)
        full[0][self._outside] = 1.0
        return engine.resize_to(full, self.shape[1:])

    def _cached(self, zg: int) -> _CachedSlice:
        import torch

        if zg in self._cache:
            self._cache.move_to_end(zg)
            return self._cache[zg]
        if not self._box[0].start <= zg < self._box[0].stop:
            n_classes = int(getattr(self.model, "num_classes", 2))
            certain = np.zeros((n_classes, *(b.stop - b.start for b in self._box[1:])), dtype=np.float32)
            certain[0] = 1.0
            background = self._probabilities(certain)
            entry = _CachedSlice(None, None, None, background, np.zeros(self.shape[1:], dtype=np.float32))
        else:
            was_training = self.model.training
            self.model.eval()
            try:
                crop = self._x[(slice(None), zg, *self._box[1:])]
                x = torch.from_numpy(np.ascontiguousarray(crop)[None]).to(self._device)
                tap = engine.forward_tap(self.model, x, self.layer, 2)
            finally:
                self.model.train(was_training)
            grid_features = engine.features_on_grid(self.model, tap.features, x.shape[2:])
            baseline = engine.probabilities_from_logits(tap.logits)[0].cpu().numpy()
            attention = self._on_slice(grid_features[0].mean(dim=0).cpu().numpy(), 0.0)
            entry = _CachedSlice(
                x, tap, grid_features, self._probabilities(baseline), engine.resize_to(attention, self.shape[1:])
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
            As in :func:`~napari_medadapt.core.adapt.tts.run.tts`.
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
        outside = entry.grid_features is None  # the whole slice lies outside the region the model runs on
        used = [points[:0, 1:] if outside else self._on_crop(points) for points in (positives, negatives)]
        messages: list[str] = []
        ignored = len(positives) + len(negatives) - len(used[0]) - len(used[1])
        if ignored:
            messages.append(
                f"TTS on slice {int(z)}: {ignored} keypoint(s) lie in the empty background around the scan, where "
                "the model does not run; they were not used."
            )
        if entry.grid_features is None or len(used[0]) + len(used[1]) == 0:
            for message in messages if warn else ():
                warnings.warn(message, TTSWarning, stacklevel=2)
            return SliceTTSResult(
                z=int(z),
                labels=baseline_labels,
                probabilities=entry.baseline,
                baseline_labels=baseline_labels,
                baseline_probabilities=entry.baseline,
                selection=None,
                attention_before=entry.attention_before,
                attention_after=entry.attention_before,
                warnings=tuple(messages),
            )
        pos_sum, neg_sum = keypoint_sums(entry.grid_features[0], *used)
        scores = combine_scores(pos_sum, neg_sum, alpha)
        background = self._background if keep_background else np.zeros(0, dtype=np.int64)
        kept = select_channels(scores, keep_fraction, background)
        selection = ChannelSelection(
            scores=scores,
            kept=kept,
            n_positive=len(used[0]),
            n_negative=len(used[1]),
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
        probabilities = self._probabilities(engine.probabilities_from_logits(logits)[0].cpu().numpy())
        attention_after = entry.grid_features[0, torch.from_numpy(kept).to(self._device)].mean(dim=0).cpu().numpy()
        labels = label_ids[probabilities.argmax(axis=0)]
        messages += [
            m
            for m in (
                one_sided_message(len(used[0]), len(used[1]), f"TTS on slice {int(z)}"),
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
            attention_after=engine.resize_to(self._on_slice(attention_after, 0.0), self.shape[1:]),
            warnings=tuple(messages),
        )

    def _on_crop(self, points: np.ndarray) -> np.ndarray:
        """Display keypoints ``(N, 3)`` of one slice as ``(y, x)`` indices on the crop; those outside dropped."""
        on_grid = engine.points_to_grid(points, self.shape, self._grid)[:, 1:]
        return on_grid[inside(on_grid, self._box[1:])] - np.array([b.start for b in self._box[1:]])
