"""TTS on a whole volume as keypoints arrive, on top of the model's ordinary segmentation of that volume.

"Before" is the segmentation every other method starts from (:func:`~napari_medadapt.core.inference.
predict_volume`, with the card's post-processing; a :class:`~napari_medadapt.core.session.ModelSession`
computes it once per volume and model). "After" is "before" with each slice that holds keypoints replaced by
its muted prediction (its own channel mask, the per-slice rule of :func:`~napari_medadapt.core.adapt.tts.run.tts`),
then post-processed the same way. :meth:`LiveTTS.apply` brings the muting up to date with the keypoints and
re-predicts exactly the slices whose keypoints (or the settings) changed since its last call, from cached
features; every other slice keeps its muting, or is "before" unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError
from ...postprocess import postprocess_labels
from .run import validate_keypoints
from .select import DEFAULT_ALPHA, DEFAULT_KEEP_FRACTION, ChannelSelection
from .slices import SliceTTS

if TYPE_CHECKING:
    from ...inference import Prediction
    from ...jobs import JobContext
    from ...session import ModelSession
    from ...volume import Volume


@dataclass
class LiveTTSResult:
    """The volume after muting the requested slices.

    Attributes
    ----------
    before, after
        ``(Z, Y, X)`` label ids: the source segmentation and the muted one (both post-processed alike).
    slices
        The slices re-predicted by this call.
    selections
        ``{slice: channel mask}`` of every muted slice.
    attention_before, attention_after
        ``{slice: (Y, X)}`` mean activation of all channels / of the kept ones, for the re-predicted slices.
    warnings
        One-sided keypoints, or a target lost by muting.
    """

    before: np.ndarray
    after: np.ndarray
    slices: list[int]
    selections: dict[int, ChannelSelection]
    attention_before: dict[int, np.ndarray] = field(default_factory=dict)
    attention_after: dict[int, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """Voxels whose label muting changed."""
        return int(np.count_nonzero(self.after != self.before))


class LiveTTS:
    """Per-slice TTS of a 2D model on one volume, kept up to date slice by slice.

    Parameters
    ----------
    model
        A 2D :class:`~napari_medadapt.core.models.SegModel` (never changed).
    volume
        The input volume.
    before
        The model's segmentation of ``volume`` (:func:`~napari_medadapt.core.inference.predict_volume`).
    layer
        Feature tap to mute (see :class:`~napari_medadapt.core.adapt.tts.slices.SliceTTS`).
    """

    def __init__(self, model: Any, volume: Volume, before: Prediction, layer: str = "decoder") -> None:
        self.model = model
        self.slices = SliceTTS(model, volume, layer=layer)
        self.before = np.asarray(before.labels)
        self._raw = self.before.copy()  # before, with the muted slices' raw predictions written in
        self._selections: dict[int, ChannelSelection] = {}
        self._applied: dict[int, tuple] = {}  # slice -> the keypoints and settings its muting was computed from

    @property
    def layer(self) -> str:
        """The muted feature tap."""
        return self.slices.layer

    def update(
        self,
        slices: list[int],
        positive_points: Any,
        negative_points: Any,
        alpha: float = DEFAULT_ALPHA,
        keep_fraction: float = DEFAULT_KEEP_FRACTION,
        keep_background: bool = True,
        ctx: JobContext | None = None,
    ) -> LiveTTSResult:
        """Re-predict ``slices`` from the keypoints on each of them (a slice without keypoints returns to
        "before"); every other muted slice keeps its last prediction."""
        positives, negatives = self._keypoints(positive_points, negative_points)
        return self._update(slices, positives, negatives, alpha, keep_fraction, keep_background, ctx)

    def _keypoints(self, positive_points: Any, negative_points: Any) -> tuple[np.ndarray, np.ndarray]:
        shape = self.before.shape
        return validate_keypoints(positive_points, shape, "positive"), validate_keypoints(negative_points, shape, "negative")

    def _update(
        self, slices: list[int], positives: np.ndarray, negatives: np.ndarray, alpha: float, keep_fraction: float,
        keep_background: bool, ctx: JobContext | None,
    ) -> LiveTTSResult:
        settings = (float(alpha), float(keep_fraction), bool(keep_background))
        result = LiveTTSResult(self.before, self.before, sorted(set(int(z) for z in slices)), {})
        for step, z in enumerate(result.slices):
            if ctx is not None:
                ctx.progress(step, len(result.slices), f"TTS on slice {z}")
            on_slice = [points[points[:, 0] == z] for points in (positives, negatives)]
            outcome = self.slices.predict_slice(
                z, *on_slice, alpha=alpha, keep_fraction=keep_fraction, keep_background=keep_background, warn=False
            )
            if outcome.selection is None:  # no keypoints left, or none where the model runs
                self._raw[z] = self.before[z]
                self._selections.pop(z, None)
                if any(len(points) for points in on_slice):
                    self._applied[z] = (_signature(on_slice), settings)
                else:
                    self._applied.pop(z, None)
            else:
                self._raw[z] = outcome.labels
                self._selections[z] = outcome.selection
                self._applied[z] = (_signature(on_slice), settings)
            result.attention_before[z] = outcome.attention_before
            result.attention_after[z] = outcome.attention_after
            result.warnings.extend(outcome.warnings)
        result.after, _notes = postprocess_labels(self._raw.astype(self.before.dtype), self.model.card)
        result.selections = dict(self._selections)
        return result

    def apply(
        self,
        positive_points: Any,
        negative_points: Any,
        alpha: float = DEFAULT_ALPHA,
        keep_fraction: float = DEFAULT_KEEP_FRACTION,
        keep_background: bool = True,
        ctx: JobContext | None = None,
    ) -> LiveTTSResult:
        """Mute every slice that holds keypoints, and only those: re-predicts the slices whose keypoints or
        settings changed since the last call (slices whose keypoints are gone return to "before")."""
        positives, negatives = self._keypoints(positive_points, negative_points)
        settings = (float(alpha), float(keep_fraction), bool(keep_background))
        keyed = {int(z) for points in (positives, negatives) for z in points[:, 0]}
        wanted = {z: (_signature([p[p[:, 0] == z] for p in (positives, negatives)]), settings) for z in keyed}
        changed = [z for z in sorted(keyed | set(self._applied)) if self._applied.get(z) != wanted.get(z)]
        return self._update(changed, positives, negatives, alpha, keep_fraction, keep_background, ctx)


def _signature(points: list[np.ndarray]) -> tuple:
    """A comparable record of one slice's positive and negative keypoints (order-free)."""
    return tuple(tuple(sorted(map(tuple, p.tolist()))) for p in points)


class TTSWorkspace:
    """The TTS state of one dock over a :class:`~napari_medadapt.core.session.ModelSession` (compute thread).

    Keeps one :class:`LiveTTS` for the current model, volume and feature map; ``volume_key`` is the
    caller's cheap identity of the volume (e.g. which layers and arrays it came from), so a keypoint change
    reuses the cached features and "before" without hashing the volume again.
    """

    def __init__(self, session: ModelSession) -> None:
        self.session = session
        self._live: LiveTTS | None = None
        self._key: tuple | None = None

    def live(self, model: str, volume_key: Any, volume: Volume, layer: str, ctx: JobContext | None = None) -> LiveTTS:
        """The live TTS of ``model`` on ``volume`` (created, with "before", on first use)."""
        key = (model, volume_key, layer)
        if self._live is None or self._key != key:
            segmenter = self.session.model(model, ctx)
            if segmenter.spatial_dims != 2:
                raise ModelError(
                    f"model {segmenter.card.name!r} is 3D: slice-by-slice TTS needs a 2D model; use 'Apply to "
                    "volume' with one mask for the whole volume."
                )
            before = self.session.segment(model, volume, ctx=ctx)
            self._live, self._key = LiveTTS(segmenter, volume, before, layer), key
        return self._live

    def apply(
        self, model: str, volume_key: Any, volume: Volume, layer: str, positives: Any, negatives: Any,
        alpha: float, keep_fraction: float, keep_background: bool, per_slice: bool, *, ctx: JobContext,
        tta_flips: bool = False,
    ) -> LiveTTSResult:
        """TTS on the volume: per slice (only slices whose keypoints changed are computed), or one mask from every
        keypoint for the whole volume, or with flip replicas (:func:`~napari_medadapt.core.adapt.tts.run.tts` on
        every slice, through Segment volume's path); "after" is post-processed as the card says in every case."""
        from .run import tts

        segmenter = self.session.model(model, ctx)
        if per_slice and segmenter.spatial_dims == 2 and not tta_flips:
            live = self.live(model, volume_key, volume, layer, ctx)
            return live.apply(positives, negatives, alpha, keep_fraction, keep_background, ctx)
        before = self.session.segment(model, volume, ctx=ctx).labels
        muted = tts(
            segmenter, volume, positives, negatives, alpha=alpha, keep_fraction=keep_fraction, layer=layer,
            per_slice=per_slice, tta_flips=tta_flips, keep_background=keep_background, warn=False, ctx=ctx,
            baseline_labels=before,
        )
        after = muted.labels.astype(before.dtype)
        depth = before.shape[0]
        return LiveTTSResult(
            before,
            after,
            list(range(depth)),
            {z: s for z in range(depth) if (s := muted.selection_for_slice(z)) is not None},
            {z: muted.attention_before[z] for z in range(depth)},
            {z: muted.attention_after[z] for z in range(depth)},
            list(muted.warnings),
        )

    def reset(self, *, ctx: JobContext | None = None) -> None:
        """Forget the muted slices and cached features (the session keeps models and segmentations)."""
        self._live, self._key = None, None
