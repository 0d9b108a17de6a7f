"""TTS: keypoint-driven feature muting (Test-Time Selection, METHODS section 2).

A clinician clicks a few *positive* keypoints on the target (tumour) and *negative* keypoints on what the
model should ignore (an artifact, background). For every channel ``c`` of a feature map ``f`` (upsampled
to the image grid) the score is::

    S_c = alpha * sum_{p in positives} f_c(p) - (1 - alpha) * sum_{n in negatives} f_c(n)

The top ``ceil(keep_fraction * C)`` channels (at least one) are kept, all others are set to zero, and the
network's head runs on the muted features. No weight changes: muting is a multiplication of activations
(for the ``decoder`` tap, the input of the head) or a forward hook (other taps such as ``bottleneck``,
after which the rest of the network runs on the muted tensor).

Keypoints are voxel indices ``(z, y, x)`` of the display volume. For a 2D (slice-wise) model each slice
with keypoints gets its own mask from its own keypoints and slices without keypoints stay unmuted
(``per_slice=True``); with ``per_slice=False`` the keypoints of all slices build one mask used for every
slice. A 3D model is muted on its 3D feature maps with one mask for the volume.

Segmentation extension (``keep_background=True``, the default): at the ``decoder`` tap, channels whose head
weight favours the background class (:func:`~napari_medadapt.core.adapt.tts.engine.background_channels`) are
never muted; the top ``keep_fraction`` is chosen among the other channels. In the published classifier the
muted channels only carried evidence for the classes; in a segmentation head the background channels carry the
evidence for "not target" at every pixel, and zeroing them moved every boundary outwards (on the training case
of the trap model, clean-slice Dice fell by 0.04 at keep 10 % and by 0.12 at keep 25 %; with them kept, 0.013
and 0.000). ``keep_background=False`` is the published rule: every channel outside the top fraction is zeroed.

With only positives (or only negatives) the method still runs: the score is then
``alpha * S_pos`` (or ``-(1 - alpha) * S_neg``, i.e. the channels least active on the negatives are
kept). The published method always had both kinds, so a :class:`TTSWarning` says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import MedAdaptError, PromptError
from ...jobs import JobContext, ensure_context
from . import engine
from .select import (
    DEFAULT_ALPHA,
    DEFAULT_KEEP_FRACTION,
    ChannelSelection,
)

if TYPE_CHECKING:
    from ...model_input import ModelInput
    from ...volume import Volume
    from .muting import KeypointMasks

ARTIFACT_ALPHA = 0.2
LAYERS = engine.TAP_LAYERS


class KeypointError(PromptError):
    """Keypoints that cannot be used (outside the image, none at all, wrong shape)."""


class TTSWarning(UserWarning):
    """TTS ran under a condition the published method did not cover (e.g. only one kind of keypoint)."""


@dataclass
class TTSResult:
    """Muted and baseline predictions of :func:`tts`, on the display grid.

    Attributes
    ----------
    labels, baseline_labels
        ``(Z, Y, X)`` label ids (the model card's ``labels``) with and without muting, post-processed as the
        card says (as Segment volume's labels are).
    probabilities, baseline_probabilities
        ``(K, Z, Y, X)`` float32 class probabilities with and without muting (``baseline_probabilities`` is
        ``None`` when the caller passed the baseline labels).
    selections
        The channel masks used (one per muted slice for ``per_slice=True``, else one).
    slice_selection
        ``(Z,)`` int: index into ``selections`` of the mask used on each slice, -1 where unmuted.
    attention_before, attention_after
        ``(Z, Y, X)`` float32 mean activation of all channels of the tap, and of the kept channels
        (equal to ``attention_before`` on unmuted slices; 0 where the model does not run).
    layer, alpha, keep_fraction
        The settings used.
    warnings
        Messages about conditions the published method did not cover (also issued as :class:`TTSWarning`).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    baseline_labels: np.ndarray
    baseline_probabilities: np.ndarray | None
    selections: list[ChannelSelection]
    slice_selection: np.ndarray
    attention_before: np.ndarray
    attention_after: np.ndarray
    layer: str
    alpha: float
    keep_fraction: float
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def scores(self) -> np.ndarray:
        """``(n_masks, C)`` the per-channel scores of every mask."""
        return np.stack([s.scores for s in self.selections])

    @property
    def kept_channels(self) -> list[np.ndarray]:
        """The kept channel indices of every mask."""
        return [s.kept for s in self.selections]

    def selection_for_slice(self, z: int) -> ChannelSelection | None:
        """The mask applied on slice ``z`` (``None`` where it stayed unmuted)."""
        index = int(self.slice_selection[z])
        return None if index < 0 else self.selections[index]


def check_settings(alpha: float, keep_fraction: float, layer: str) -> None:
    """Raise :class:`MedAdaptError` for settings outside their ranges."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise MedAdaptError(
            f"alpha must lie in [0, 1] (0.4 by default, 0.2 for artifact negatives); got {alpha}."
        )
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise MedAdaptError(
            f"keep fraction must lie in (0, 1] (0.10 keeps 10% of the channels); got {keep_fraction}."
        )
    if not isinstance(layer, str) or not layer:
        raise MedAdaptError(f"layer must be a feature tap name such as {', '.join(LAYERS)}; got {layer!r}.")


def validate_keypoints(points: Any, shape: Sequence[int], kind: str) -> np.ndarray:
    """Round keypoints to voxel indices and check that they lie inside ``shape``.

    Parameters
    ----------
    points
        ``(N, 3)`` array-like of ``(z, y, x)`` voxel coordinates (floats are rounded), or ``None``.
    shape
        ``(Z, Y, X)`` of the display volume.
    kind
        "positive" or "negative", used in messages.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` int64 indices.
    """
    if points is None:
        return np.zeros((0, len(shape)), dtype=np.int64)
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, len(shape)), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != len(shape):
        raise KeypointError(
            f"{kind} keypoints must be an (N, {len(shape)}) array of (z, y, x) voxel coordinates; "
            f"got shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise KeypointError(f"{kind} keypoints contain NaN or infinite coordinates; remove those points.")
    index = np.rint(array).astype(np.int64)
    for number, point in enumerate(index):
        if np.any(point < 0) or np.any(point >= np.asarray(shape)):
            where = ", ".join(f"{a}={v:g}" for a, v in zip("zyx", array[number], strict=False))
            raise KeypointError(
                f"{kind} keypoint #{number + 1} ({where}) lies outside the image of shape "
                f"{tuple(int(s) for s in shape)} (z, y, x); remove it or place it on this image."
            )
    return index


def one_sided_message(n_positive: int, n_negative: int, where: str) -> str | None:
    """A warning text when only one kind of keypoint is given (``None`` when both are)."""
    if n_positive and not n_negative:
        return (
            f"{where}: only positive keypoints; the channels most active on the target are kept "
            "(the published method also used negatives: add some on the artifact or background)."
        )
    if n_negative and not n_positive:
        return (
            f"{where}: only negative keypoints; the channels least active on them are kept "
            "(the published method also used positives: add some on the target)."
        )
    return None


def lost_target_message(labels: np.ndarray, baseline_labels: np.ndarray, positives: np.ndarray) -> str | None:
    """A warning when muting turned every positive keypoint the baseline called target into background."""
    if len(positives) == 0:
        return None
    index = tuple(positives[:, d] for d in range(positives.shape[1]))
    was_target = baseline_labels[index] != 0
    if was_target.any() and np.all(labels[index][was_target] == 0):
        return (
            "TTS: after muting, the positive keypoints are no longer segmented as target; the kept channels do "
            "not carry the target on their own here. Keep more channels, use alpha 0.4, or mute another "
            "feature map."
        )
    return None


# ---------------------------------------------------------------------------------------------- input
def prepare_tts_input(model: Any, image: Volume | np.ndarray) -> ModelInput:
    """The model's input for ``image``.

    A :class:`~napari_medadapt.core.volume.Volume` is prepared exactly as :func:`predict_volume` does
    (:func:`~napari_medadapt.core.model_input.prepare_model_input`: modalities matched by name, the card's
    intensity normalisation, resampling to the card's voxel size, so the model grid may differ from the display
    grid); an array ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) is taken as already normalised and on the model grid.
    """
    from ...model_input import ModelInput, prepare_model_input

    if not isinstance(image, np.ndarray):
        return prepare_model_input(model, image)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise MedAdaptError(f"the image must be (C, Z, Y, X) (or (Z, Y, X)); got shape {image.shape}.")
    modalities = tuple(getattr(model, "modalities", ()))
    if modalities and array.shape[0] != len(modalities):
        raise MedAdaptError(
            f"the model takes {len(modalities)} input channels ({', '.join(modalities)}); "
            f"the image has {array.shape[0]}."
        )
    shape = tuple(int(s) for s in array.shape[1:])
    return ModelInput(array, modalities, (), (1.0, 1.0, 1.0), shape)  # type: ignore[arg-type]


def label_ids_for(model: Any, n_classes: int) -> np.ndarray:
    """Network class -> label id (the model card's ``labels``; identity when absent or mismatched)."""
    labels = list(getattr(model, "labels", None) or [])
    if len(labels) != n_classes:
        labels = list(range(n_classes))
    return np.asarray(labels, dtype=np.int64)


def _one_sided_slices(masks: KeypointMasks, display_z: np.ndarray, grid_z: np.ndarray) -> str | None:
    """The warning for per-slice masks built from one kind of keypoint, naming the display slices."""
    one_sided = {z for z, s in masks.selections.items() if z >= 0 and not (s.n_positive and s.n_negative)}
    if not one_sided:
        return None
    slices = sorted({int(d) for d, g in zip(display_z, grid_z, strict=True) if int(g) in one_sided})
    return (
        f"TTS: slice(s) {', '.join(map(str, slices))} hold only one kind of keypoint; "
        "their masks use that kind alone (per_slice=False pools the keypoints of all slices)."
    )


# ---------------------------------------------------------------------------------------------- tts
def tts(
    model: Any,
    image: Volume | np.ndarray,
    positive_points: Any,
    negative_points: Any,
    alpha: float = DEFAULT_ALPHA,
    keep_fraction: float = DEFAULT_KEEP_FRACTION,
    layer: str = "decoder",
    per_slice: bool = True,
    tta_flips: bool = False,
    keep_background: bool = True,
    ctx: JobContext | None = None,
    warn: bool = True,
    baseline_labels: np.ndarray | None = None,
) -> TTSResult:
    """Predict ``image`` with the feature channels chosen by the keypoints, and the baseline.

    Both predictions run through :func:`~napari_medadapt.core.inference.predict_prepared`, the path of Segment
    volume: the same input preparation, crop to the non-zero input, sliding window (3D), resampling back and
    the card's post-processing; muting is a feature hook on that path.

    Parameters
    ----------
    model
        A :class:`~napari_medadapt.core.models.SegModel` (2D or 3D); its weights are never changed.
    image
        A :class:`~napari_medadapt.core.volume.Volume` or an already normalised ``(C, Z, Y, X)`` array.
    positive_points, negative_points
        ``(N, 3)`` ``(z, y, x)`` voxel coordinates of the display volume (target / artifact or background).
    alpha
        Weight of the positives in the score (0.4; 0.2 when the negatives sit on known artifacts).
    keep_fraction
        Fraction of channels kept (``ceil(keep_fraction * C)``, at least 1).
    layer
        Feature tap to mute: ``"decoder"`` (input of the head) or ``"bottleneck"``.
    per_slice
        2D models: one mask per slice with keypoints, other slices unmuted (True), or one mask from all
        keypoints for every slice (False). Ignored for 3D models (one mask for the volume).
    tta_flips
        Average over flip replicas (every combination of in-plane axis flips, or of the 3 axes for 3D);
        each replica gets its own mask, reported scores are those of the unflipped replica.
    keep_background
        Never mute the decoder channels whose head weight favours the background (segmentation extension,
        see the module docstring); False applies the published rule. No effect on other taps.
    ctx
        Progress and cancellation.
    warn
        Also issue the result's messages as :class:`TTSWarning` (they are always in ``result.warnings``).
    baseline_labels
        The model's plain segmentation of ``image`` when the caller has it already (a
        :class:`~napari_medadapt.core.session.ModelSession`'s): the unmuted pass is skipped and
        ``baseline_probabilities`` is ``None``.

    Returns
    -------
    TTSResult
    """
    from ...inference import crop_box, predict_prepared
    from .muting import ChannelMuting, inside, keypoint_masks

    ctx = ensure_context(ctx)
    check_settings(alpha, keep_fraction, layer)
    engine.check_layer(model, layer)
    prepared = prepare_tts_input(model, image)
    shape = tuple(prepared.source_shape)
    positives = validate_keypoints(positive_points, shape, "positive")
    negatives = validate_keypoints(negative_points, shape, "negative")
    if len(positives) + len(negatives) == 0:
        raise KeypointError(
            "TTS needs keypoints: place at least one positive (on the target) and one negative "
            "(on the artifact or background)."
        )
    messages = [m for m in (one_sided_message(len(positives), len(negatives), "TTS"),) if m]
    grid = tuple(prepared.data.shape[1:])
    pos_grid, neg_grid = (engine.points_to_grid(p, shape, grid) for p in (positives, negatives))
    background = engine.background_channels(model, layer) if keep_background else np.zeros(0, dtype=np.int64)
    device = next(model.parameters()).device
    box = crop_box(model, prepared.data)
    if box is not None and not any(inside(p, box).any() for p in (pos_grid, neg_grid)):
        raise KeypointError(
            "TTS needs keypoints on the image: every keypoint lies in the empty background around the scan."
        )
    masks = keypoint_masks(
        model, prepared.data, box, layer, pos_grid, neg_grid, alpha=alpha, keep_fraction=keep_fraction,
        per_slice=per_slice, flips=tta_flips, background=background, ctx=ctx,
    )
    if masks.ignored:
        messages.append(
            f"TTS: {masks.ignored} keypoint(s) lie in the empty background around the scan, where the model does "
            "not run; they were not used. Place them on the image."
        )
    if engine.spatial_dims_of(model) == 2 and per_slice and len(positives) and len(negatives):
        keypoints, on_grid = np.concatenate([positives, negatives]), np.concatenate([pos_grid, neg_grid])
        one_sided = _one_sided_slices(masks, keypoints[:, 0], on_grid[:, 0])
        if one_sided:
            messages.append(one_sided)
    hook = ChannelMuting(model, layer, masks, grid)
    run = {"ctx": ctx, "device": device, "probability_dtype": np.float32, "flips": tta_flips}
    labels, probabilities, _confidence, _notes = predict_prepared(model, prepared, feature_hook=hook, **run)
    baseline_probabilities = None
    if baseline_labels is None:
        baseline_labels, baseline_probabilities, _confidence, _notes = predict_prepared(model, prepared, **run)
    selections, slice_selection = _selections_by_slice(masks, grid[0], shape[0])
    lost = lost_target_message(labels, baseline_labels, positives)
    if lost:
        messages.append(lost)
    for message in messages if warn else ():
        warnings.warn(message, TTSWarning, stacklevel=2)
    return TTSResult(
        labels=labels,
        probabilities=probabilities,
        baseline_labels=baseline_labels,
        baseline_probabilities=baseline_probabilities,
        selections=selections,
        slice_selection=slice_selection,
        attention_before=engine.resize_to(hook.attention_before, shape),
        attention_after=engine.resize_to(hook.attention_after, shape),
        layer=layer,
        alpha=float(alpha),
        keep_fraction=float(keep_fraction),
        warnings=tuple(messages),
    )


def _selections_by_slice(
    masks: KeypointMasks, grid_depth: int, depth: int
) -> tuple[list[ChannelSelection], np.ndarray]:
    """The selections in slice order and, per display slice, the index of the one used (-1: unmuted)."""
    if -1 in masks.selections:
        return [masks.selections[-1]], np.zeros(depth, dtype=np.int64)
    keyed = sorted(masks.selections)
    on_grid = np.full(grid_depth, -1, dtype=np.int64)
    on_grid[keyed] = np.arange(len(keyed))
    grid_slice = engine.points_to_grid(np.arange(depth)[:, None], (depth,), (grid_depth,))[:, 0]
    return [masks.selections[z] for z in keyed], on_grid[grid_slice]
