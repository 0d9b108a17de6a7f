"""TTS on the one inference path: channel scores at the keypoints, then a feature hook that mutes channels.

Internal to :mod:`napari_medadapt.core.adapt.tts.run`. :func:`keypoint_masks` computes the tap's features where the
keypoints are (on the same cropped model grid as :func:`~napari_medadapt.core.inference.predict_prepared`, per
test-time flip replica), scores the channels and chooses the masks: one per slice holding keypoints, or one for
the whole volume. :class:`ChannelMuting` is the :class:`~napari_medadapt.core.inference.FeatureHook` that applies
them during inference and records the attention maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...inference import BatchPlace, flip_sets
from ...jobs import JobContext
from . import engine
from .select import ChannelSelection, channel_mask, combine_scores, keypoint_sums, select_channels

if TYPE_CHECKING:
    import torch

#: Slices per forward batch when scoring the keypoint slices of a 2D model.
BATCH = 8


@dataclass
class KeypointMasks:
    """The channel masks of one TTS call, on the model grid.

    Attributes
    ----------
    per_slice
        ``{replica: {grid slice: (C,) mask}}`` (2D, one mask per slice with keypoints), or ``None``.
    volume
        ``{replica: (C,) mask}`` (one mask for every slice or window), or ``None``.
    selections
        What was chosen (scores of the unflipped replica): ``{grid slice: selection}`` per slice, or
        ``{-1: selection}`` for the whole volume.
    ignored
        Keypoints not used: they lie outside the region the network runs on (all-zero input).
    """

    per_slice: dict[tuple[int, ...], dict[int, np.ndarray]] | None
    volume: dict[tuple[int, ...], np.ndarray] | None
    selections: dict[int, ChannelSelection]
    ignored: int = 0

    def mask(self, replica: tuple[int, ...], grid_slice: int | None) -> np.ndarray | None:
        """The mask of ``grid_slice`` (any slice for a volume mask) in ``replica``; ``None``: unmuted."""
        if self.volume is not None:
            return self.volume[replica]
        return (self.per_slice or {}).get(replica, {}).get(int(grid_slice))

    def selection(self, grid_slice: int | None) -> ChannelSelection | None:
        """The selection applied on ``grid_slice`` (``None``: unmuted)."""
        if -1 in self.selections:
            return self.selections[-1]
        return self.selections.get(int(grid_slice)) if grid_slice is not None else None


def _features(model: Any, x: torch.Tensor, layer: str, dims: int, flips: tuple[int, ...]) -> torch.Tensor:
    """Tap features of the flipped input, on the (unflipped) input grid ``x.shape[2:]``."""
    tap = engine.forward_tap(model, engine.flip(x, flips), layer, dims)
    return engine.flip(engine.features_on_grid(model, tap.features, x.shape[2:]), flips)


def inside(points: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``(N,)`` bool: which of ``points`` ``(N, 3)`` lie in ``box``."""
    lows = np.array([b.start for b in box])
    highs = np.array([b.stop for b in box])
    return np.all((points >= lows) & (points < highs), axis=1)


def keypoint_masks(
    model: Any,
    data: np.ndarray,
    box: tuple[slice, slice, slice] | None,
    layer: str,
    positives: np.ndarray,
    negatives: np.ndarray,
    *,
    alpha: float,
    keep_fraction: float,
    per_slice: bool,
    flips: bool,
    background: np.ndarray,
    ctx: JobContext,
) -> KeypointMasks:
    """Masks from the features at the keypoints (``(N, 3)`` model-grid indices) of the prepared ``data``
    ``(C, Z, Y, X)``, on its crop ``box`` (``None``: all of it), for every flip replica."""
    import torch

    dims = engine.spatial_dims_of(model)
    device = next(model.parameters()).device
    box = box or tuple(slice(0, n) for n in data.shape[1:])
    used = [p[inside(p, box)] for p in (positives, negatives)]
    ignored = len(positives) + len(negatives) - len(used[0]) - len(used[1])
    origin = np.array([b.start for b in box])
    pos, neg = (p - origin for p in used)  # on the crop
    replicas = flip_sets(dims, flips)

    def choose(sums: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scores = combine_scores(*sums, alpha)
        kept = select_channels(scores, keep_fraction, background)
        return scores, kept

    def selection(scores: np.ndarray, kept: np.ndarray, n_pos: int, n_neg: int, slices: Any) -> ChannelSelection:
        return ChannelSelection(scores, kept, n_pos, n_neg, slices, background)

    was_training = model.training
    model.eval()
    try:
        if dims == 3:
            x = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *box)])[None]).to(device)
            masks, chosen = {}, {}
            for r in replicas:
                ctx.progress(replicas.index(r), len(replicas), "TTS: scoring channels at the keypoints")
                scores, kept = choose(keypoint_sums(_features(model, x, layer, 3, r)[0], pos, neg))
                masks[r] = channel_mask(len(scores), kept, background)
                chosen.setdefault(-1, selection(scores, kept, len(pos), len(neg), None))
            return KeypointMasks(None, masks, chosen, ignored)
        keyed = sorted(set(pos[:, 0].tolist()) | set(neg[:, 0].tolist()))
        sums: dict[tuple[int, ...], dict[int, tuple[np.ndarray, np.ndarray]]] = {r: {} for r in replicas}
        for start in range(0, len(keyed), BATCH):
            ctx.progress(start, len(keyed), "TTS: scoring channels at the keypoints")
            batch = keyed[start : start + BATCH]
            rows = [box[0].start + z for z in batch]
            x = torch.from_numpy(np.ascontiguousarray(data[:, rows][:, :, box[1], box[2]].transpose(1, 0, 2, 3)))
            for r in replicas:
                features = _features(model, x.to(device), layer, 2, r)
                for b, z in enumerate(batch):
                    sums[r][z] = keypoint_sums(features[b], pos[pos[:, 0] == z, 1:], neg[neg[:, 0] == z, 1:])
    finally:
        model.train(was_training)
    counts = {z: (int((pos[:, 0] == z).sum()), int((neg[:, 0] == z).sum())) for z in keyed}
    if not per_slice:
        volume_masks, chosen = {}, {}
        for r in replicas:
            total = tuple(np.sum([sums[r][z][k] for z in keyed], axis=0) for k in (0, 1))
            scores, kept = choose(total)
            volume_masks[r] = channel_mask(len(scores), kept, background)
            slices = tuple(box[0].start + z for z in keyed)
            chosen.setdefault(-1, selection(scores, kept, len(pos), len(neg), slices))
        return KeypointMasks(None, volume_masks, chosen, ignored)
    per: dict[tuple[int, ...], dict[int, np.ndarray]] = {r: {} for r in replicas}
    chosen = {}
    for r in replicas:
        for z in keyed:
            scores, kept = choose(sums[r][z])
            grid_z = box[0].start + z
            per[r][grid_z] = channel_mask(len(scores), kept, background)
            if r == ():
                chosen[grid_z] = selection(scores, kept, *counts[z], (grid_z,))
    return KeypointMasks(per, None, chosen, ignored)


@dataclass
class ChannelMuting:
    """The :class:`~napari_medadapt.core.inference.FeatureHook` of TTS: multiplies the tap's channels by the
    masks (1 keep, 0 mute) and records, on the model grid, the mean activation of all channels
    (``attention_before``) and of the kept ones (``attention_after``) of the unflipped pass."""

    model: Any
    tap: str
    masks: KeypointMasks
    grid_shape: tuple[int, int, int]
    attention_before: np.ndarray = field(init=False)
    attention_after: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.attention_before = np.zeros(self.grid_shape, dtype=np.float32)
        self.attention_after = np.zeros(self.grid_shape, dtype=np.float32)

    def __call__(self, features: torch.Tensor, place: BatchPlace) -> torch.Tensor:
        import torch

        samples = list(place.slices) if place.slices is not None else [None] * features.shape[0]
        rows = [self.masks.mask(place.flips, z) for z in samples]
        muted = features
        if any(row is not None for row in rows):
            ones = np.ones(features.shape[1], dtype=np.float32)
            mask = torch.from_numpy(np.stack([ones if row is None else row for row in rows])).to(features)
            muted = features * mask.reshape(*mask.shape, *([1] * (features.ndim - 2)))
        if not place.flips:
            self._record(features, samples, place.regions)
        return muted

    def _record(self, features: torch.Tensor, samples: list[int | None], regions: list[tuple[slice, ...]]) -> None:
        for b, (z, region) in enumerate(zip(samples, regions, strict=True)):
            shape = tuple(r.stop - r.start for r in region)
            grid = engine.features_on_grid(self.model, features[b : b + 1], shape)[0]
            where = ((z,) if z is not None else ()) + tuple(region)
            self.attention_before[where] = grid.mean(dim=0).float().cpu().numpy()
            selection = self.masks.selection(z)
            kept = grid if selection is None else grid[torch_index(selection.kept, grid)]
            self.attention_after[where] = kept.mean(dim=0).float().cpu().numpy()


def torch_index(indices: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``indices`` as a long tensor on ``like``'s device."""
    import torch

    return torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(like.device)
