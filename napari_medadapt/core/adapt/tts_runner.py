"""Forward passes of one :func:`~napari_medadapt.core.adapt.tts.tts` call: flip replicas, per-slice or
whole-volume channel masks, accumulation of muted and baseline probabilities, attention maps.

Internal to :mod:`napari_medadapt.core.adapt.tts`; everything is on the model grid until :func:`to_display`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..jobs import JobContext
from . import tts_engine as engine
from .tts_select import ChannelSelection, channel_mask, combine_scores, keypoint_sums, select_channels

if TYPE_CHECKING:
    import torch

#: Slices per forward batch for 2D models.
BATCH = 8


def to_display(out: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """Resample the model-grid outputs to the display grid (no-op when the grids agree)."""
    grid = out["probabilities"].shape[1:]
    if tuple(grid) == tuple(shape):
        return out
    out = dict(out)
    for key in ("probabilities", "baseline", "attention_before", "attention_after"):
        out[key] = engine.resize_to(out[key], shape)
    if shape[0] != grid[0]:
        source_slices = engine.points_to_grid(np.arange(shape[0])[:, None], shape[:1], grid[:1])[:, 0]
        out["slice_selection"] = out["slice_selection"][source_slices]
    return out


class Runner:
    """Forward passes of one :func:`tts` call (replicas, masks, accumulation)."""

    def __init__(
        self,
        model: Any,
        layer: str,
        dims: int,
        replicas: list[tuple[int, ...]],
        alpha: float,
        keep_fraction: float,
        device: torch.device,
        background: np.ndarray | None = None,
    ) -> None:
        self.model, self.layer, self.dims, self.replicas = model, layer, dims, replicas
        self.alpha, self.keep_fraction, self.device = alpha, keep_fraction, device
        self.background = np.zeros(0, dtype=np.int64) if background is None else np.asarray(background)

    def _features(self, x: torch.Tensor, flips: tuple[int, ...]) -> tuple[engine.TapPass, torch.Tensor]:
        """Tap pass on the flipped input, and its features on the (unflipped) input grid."""
        tap = engine.forward_tap(self.model, engine.flip(x, flips), self.layer, self.dims)
        grid = engine.features_on_grid(self.model, tap.features, x.shape[2:])
        return tap, engine.flip(grid, flips)

    def _masks(self, sums: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, np.ndarray]:
        """Masks ``(B, C)`` from per-item keypoint sums, and the scores ``(B, C)``."""
        import torch

        scores = np.stack([combine_scores(p, n, self.alpha) for p, n in sums])
        masks = np.stack([
            channel_mask(len(row), select_channels(row, self.keep_fraction, self.background), self.background)
            for row in scores
        ])
        return torch.from_numpy(masks).to(self.device), scores

    def _selection(
        self, scores: np.ndarray, n_pos: int, n_neg: int, slices: tuple[int, ...] | None
    ) -> ChannelSelection:
        return ChannelSelection(
            scores=scores,
            kept=select_channels(scores, self.keep_fraction, self.background),
            n_positive=n_pos,
            n_negative=n_neg,
            slices=slices,
            background=self.background,
        )

    def run_volume(
        self, x_all: np.ndarray, positives: np.ndarray, negatives: np.ndarray, ctx: JobContext
    ) -> dict[str, Any]:
        import torch

        x = torch.from_numpy(x_all[None]).to(self.device)
        baseline = muted = None
        attention_before = attention_after = None
        selection = None
        for step, flips in enumerate(self.replicas):
            ctx.progress(step, len(self.replicas), "TTS: muting the volume's features")
            tap, grid = self._features(x, flips)
            masks, scores = self._masks([keypoint_sums(grid[0], positives, negatives)])
            logits = engine.flip(
                engine.muted_logits(self.model, engine.flip(x, flips), tap, self.layer, masks, self.dims),
                flips,
            )
            probs = engine.probabilities_from_logits(logits)[0]
            base = engine.probabilities_from_logits(engine.flip(tap.logits, flips))[0]
            baseline = base if baseline is None else baseline + base
            muted = probs if muted is None else muted + probs
            if step == 0:
                selection = self._selection(scores[0], len(positives), len(negatives), None)
                attention_before = grid[0].mean(dim=0)
                attention_after = grid[0][torch.from_numpy(selection.kept).to(self.device)].mean(dim=0)
        ctx.progress(len(self.replicas), len(self.replicas), "TTS: done")
        n = float(len(self.replicas))
        return {
            "probabilities": (muted / n).cpu().numpy().astype(np.float32),
            "baseline": (baseline / n).cpu().numpy().astype(np.float32),
            "selections": [selection],
            "slice_selection": np.zeros(x_all.shape[1], dtype=np.int64),
            "attention_before": attention_before.cpu().numpy().astype(np.float32),
            "attention_after": attention_after.cpu().numpy().astype(np.float32),
        }

    def _global_sums(
        self, x_all: np.ndarray, positives: np.ndarray, negatives: np.ndarray, ctx: JobContext
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per replica, the keypoint sums over every slice that holds keypoints (``per_slice=False``)."""
        import torch

        slices = sorted(set(positives[:, 0].tolist()) | set(negatives[:, 0].tolist()))
        channels = None
        totals: list[list[np.ndarray]] = []
        for start in range(0, len(slices), BATCH):
            ctx.progress(start, len(slices), "TTS: scoring channels at the keypoints")
            batch = slices[start : start + BATCH]
            x = torch.from_numpy(x_all[:, batch].transpose(1, 0, 2, 3).copy()).to(self.device)
            for r, flips in enumerate(self.replicas):
                _tap, grid = self._features(x, flips)
                if channels is None:
                    channels = grid.shape[1]
                    totals = [[np.zeros(channels), np.zeros(channels)] for _ in self.replicas]
                for b, z in enumerate(batch):
                    pos, neg = keypoint_sums(
                        grid[b], positives[positives[:, 0] == z, 1:], negatives[negatives[:, 0] == z, 1:]
                    )
                    totals[r][0] += pos
                    totals[r][1] += neg
        return [(p, n) for p, n in totals]

    def run_slices(
        self,
        x_all: np.ndarray,
        positives: np.ndarray,
        negatives: np.ndarray,
        per_slice: bool,
        ctx: JobContext,
        messages: list[str],
    ) -> dict[str, Any]:
        import torch

        n_slices = x_all.shape[1]
        global_sums = None if per_slice else self._global_sums(x_all, positives, negatives, ctx)
        selections: list[ChannelSelection] = []
        slice_selection = np.full(n_slices, -1, dtype=np.int64)
        one_sided: list[int] = []
        baseline = np.zeros((0,), dtype=np.float32)
        muted = baseline
        attention_before = np.zeros(x_all.shape[1:], dtype=np.float32)
        attention_after = np.zeros(x_all.shape[1:], dtype=np.float32)
        keyed = set(positives[:, 0].tolist()) | set(negatives[:, 0].tolist())
        if global_sums is not None:
            key_slices = tuple(sorted(keyed))
            scores = combine_scores(*global_sums[0], self.alpha)
            selections.append(self._selection(scores, len(positives), len(negatives), key_slices))
            slice_selection[:] = 0
        for start in range(0, n_slices, BATCH):
            ctx.progress(start, n_slices, "TTS: predicting slices")
            batch = list(range(start, min(n_slices, start + BATCH)))
            x = torch.from_numpy(x_all[:, batch].transpose(1, 0, 2, 3).copy()).to(self.device)
            muted_rows = [b for b, z in enumerate(batch) if global_sums is not None or z in keyed]
            base_sum = muted_sum = None
            for r, flips in enumerate(self.replicas):
                tap, grid = self._features(x, flips)
                base = engine.probabilities_from_logits(engine.flip(tap.logits, flips))
                probs = base.clone()
                if muted_rows:
                    if global_sums is not None:
                        sums = [global_sums[r]] * len(muted_rows)
                    else:
                        sums = [
                            keypoint_sums(
                                grid[b],
                                positives[positives[:, 0] == batch[b], 1:],
                                negatives[negatives[:, 0] == batch[b], 1:],
                            )
                            for b in muted_rows
                        ]
                    masks, scores = self._masks(sums)
                    full = torch.ones((x.shape[0], grid.shape[1]), device=self.device)
                    full[muted_rows] = masks
                    logits = engine.muted_logits(
                        self.model, engine.flip(x, flips), tap, self.layer, full, self.dims
                    )
                    probs[muted_rows] = engine.probabilities_from_logits(engine.flip(logits, flips))[
                        muted_rows
                    ]
                    if r == 0 and global_sums is None:
                        for row, b in enumerate(muted_rows):
                            z = batch[b]
                            n_pos = int((positives[:, 0] == z).sum())
                            n_neg = int((negatives[:, 0] == z).sum())
                            if not (n_pos and n_neg):
                                one_sided.append(z)
                            slice_selection[z] = len(selections)
                            selections.append(self._selection(scores[row], n_pos, n_neg, (z,)))
                if r == 0:
                    attention_before[batch] = grid.mean(dim=1).cpu().numpy()
                    for b, z in enumerate(batch):
                        selection = selections[slice_selection[z]] if slice_selection[z] >= 0 else None
                        if selection is None:
                            attention_after[z] = attention_before[z]
                        else:
                            kept = torch.from_numpy(selection.kept).to(self.device)
                            attention_after[z] = grid[b, kept].mean(dim=0).cpu().numpy()
                base_sum = base if base_sum is None else base_sum + base
                muted_sum = probs if muted_sum is None else muted_sum + probs
            if baseline.size == 0:
                k = base_sum.shape[1]
                baseline = np.zeros((k, *x_all.shape[1:]), dtype=np.float32)
                muted = np.zeros_like(baseline)
            n = float(len(self.replicas))
            baseline[:, batch] = (base_sum / n).cpu().numpy().transpose(1, 0, 2, 3)
            muted[:, batch] = (muted_sum / n).cpu().numpy().transpose(1, 0, 2, 3)
        ctx.progress(n_slices, n_slices, "TTS: done")
        if one_sided and len(positives) and len(negatives):
            messages.append(
                f"TTS: slice(s) {', '.join(str(z) for z in sorted(one_sided))} hold only one kind of keypoint; "
                "their masks use that kind alone (per_slice=False pools the keypoints of all slices)."
            )
        return {
            "probabilities": muted,
            "baseline": baseline,
            "selections": selections,
            "slice_selection": slice_selection,
            "attention_before": attention_before,
            "attention_after": attention_after,
        }
