"""Whole-volume inference: from a :class:`~napari_medadapt.core.volume.Volume` to labels and probabilities.

Pipeline (:func:`~.model_input.prepare_model_input`, then :func:`predict_volume`):

1. Channels are matched to the model's modalities by name (``t1ce`` counts as ``t1c``; an explicit
   ``modalities`` mapping overrides) and checked against the card's supported subsets; a missing required
   modality raises a :class:`ModelError` naming it.
2. Non-finite voxels (NaN/Inf) are set to 0 and reported in :attr:`Prediction.notes`.
3. Each channel is normalised as the card says (``intensity.method``: ``percentile`` with ``lower``,
   ``upper``, ``nonzero``, ``clip``; ``zscore`` with ``nonzero``; ``ct_window`` with ``window``; ``none``).
   Missing optional modalities become zeros after normalisation.
4. When the card has a ``voxel_size`` that differs from the volume's spacing by more than 2 %, the channels
   are resampled (trilinear) to it; probabilities are resampled back to the source grid (trilinear) before the
   argmax, so labels always lie on the volume's own grid.
5. With ``crop_to_input`` (default) the network runs only on the bounding box of the non-zero input plus a
   margin (the air around a skull-stripped brain is labelled background with confidence 1 directly).
6. 2D models run on batches of axial slices (axis 0 of the LPS display array); 3D models run with MONAI
   sliding-window inference (Gaussian blending). Progress is reported per batch and cancellation honoured.
   A :class:`FeatureHook` changes one feature map of every batch (the methods that act on features: TTS
   channel muting, adapters) and ``flips`` averages test-time flip replicas; nothing else changes, so every
   method honours the same preparation, cropping, resampling and post-processing.
7. The card's ``postprocess`` steps run on the labels (:mod:`.postprocess`; ``largest_component``: only the
   largest connected component of the whole foreground is kept), unless the caller switches them off.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import ModelError
from .jobs import JobContext, ensure_context
from .metrics import label_volumes_ml
from .model_input import ModelInput, prepare_model_input, resize_channels
from .postprocess import postprocess_labels
from .volume import Geometry, Volume

if TYPE_CHECKING:
    import torch

    from .models import SegModel

#: Voxels kept around the non-zero input when ``crop_to_input`` (receptive-field context).
CROP_MARGIN = 16
#: Default 3D sliding-window size (clipped to the volume); a card may set ``architecture.roi_size``.
DEFAULT_ROI_3D = (96, 96, 96)


@dataclass
class Prediction:
    """Result of :func:`predict_volume`, on the source volume's display grid.

    Attributes
    ----------
    labels
        uint8 ``(Z, Y, X)`` label ids (``card.labels`` of the argmax class).
    probabilities
        ``(K, Z, Y, X)`` class probabilities (float16 by default), or ``None`` when not requested.
    confidence
        float32 ``(Z, Y, X)`` maximum class probability.
    volumes_ml
        mL per non-background label id.
    class_names
        label id -> class name.
    geometry
        The volume's geometry (write labels with ``save_labels(labels, geometry, path)``).
    notes
        Remarks from input preparation.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    confidence: np.ndarray
    volumes_ml: dict[int, float]
    class_names: dict[int, str]
    geometry: Geometry
    present: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def volume_rows(self) -> list[tuple[int, str, float]]:
        """``(label id, name, mL)`` for every non-background class, in label order."""
        return [(i, self.class_names.get(i, str(i)), ml) for i, ml in self.volumes_ml.items()]

    def format_volumes(self) -> str:
        """Text table of per-class volumes in mL."""
        lines = [f"{'label':>5}  {'class':<20} {'volume mL':>10}"]
        lines += [f"{i:>5}  {name:<20} {ml:>10.2f}" for i, name, ml in self.volume_rows()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class BatchPlace:
    """Where the batch a :class:`FeatureHook` sees lies on the model grid.

    Attributes
    ----------
    slices
        2D models: the model-grid slice index (axis 0) of each sample; ``None`` for 3D windows.
    regions
        Per sample, the input's spatial region on the model grid: ``(y, x)`` slices for 2D models, ``(z, y, x)``
        for 3D windows. The features a hook sees cover it (padded to the network's stride at the far ends).
    flips
        Tensor axes of the (flipped) input of this test-time flip replica; ``()`` for the unflipped input.
    """

    slices: np.ndarray | None
    regions: list[tuple[slice, ...]]
    flips: tuple[int, ...] = ()


class FeatureHook(Protocol):
    """A change of one feature map during inference: ``tap`` names the map (:meth:`SegModel.forward_with`);
    calling the hook returns the changed features of a batch (TTS channel muting, an adapter, ...)."""

    tap: str

    def __call__(self, features: torch.Tensor, place: BatchPlace) -> torch.Tensor:
        """The features to use instead of ``features`` for the batch at ``place``."""


def flip_sets(spatial_dims: int, enabled: bool) -> list[tuple[int, ...]]:
    """Test-time flip replicas of a batch tensor ``(B, C, *spatial)``: the identity first, then every
    combination of spatial-axis flips."""
    if not enabled:
        return [()]
    axes = tuple(range(2, 2 + spatial_dims))
    return [combo for n in range(spatial_dims + 1) for combo in itertools.combinations(axes, n)]


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def _probabilities(
    model: SegModel, x: torch.Tensor, hook: FeatureHook | None, places: list[BatchPlace]
) -> torch.Tensor:
    """Class probabilities of a batch, averaged over the flip replicas in ``places``."""
    import torch

    total = None
    for place in places:
        flipped = _flip(x, place.flips)
        if hook is None:
            logits = model(flipped)
        else:
            logits = model.forward_with(flipped, hook.tap, lambda features, place=place: hook(features, place))
        probs = _flip(torch.softmax(logits.float(), dim=1), place.flips)
        total = probs if total is None else total + probs
    return total / len(places)


def _predict_2d(
    model: SegModel,
    data: np.ndarray,
    device: torch.device,
    batch_size: int,
    ctx: JobContext,
    probs_dtype: np.dtype | None,
    hook: FeatureHook | None,
    origin: tuple[int, int, int],
    flips: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class index, confidence and (when ``probs_dtype``) probabilities, slice batch by slice batch.

    Only what is asked for is kept, so memory stays at a few bytes per voxel plus one batch. ``origin`` is
    where ``data`` (the cropped input) starts on the model grid.
    """
    import torch

    depth = data.shape[1]
    index = np.empty(data.shape[1:], dtype=np.uint8)
    confidence = np.empty(data.shape[1:], dtype=np.float32)
    probs = None if probs_dtype is None else np.empty((model.num_classes, *data.shape[1:]), dtype=probs_dtype)
    region = (slice(origin[1], origin[1] + data.shape[2]), slice(origin[2], origin[2] + data.shape[3]))
    total = math.ceil(depth / batch_size)
    for step, start in enumerate(range(0, depth, batch_size)):
        stop = min(start + batch_size, depth)
        batch = torch.from_numpy(np.ascontiguousarray(data[:, start:stop].transpose(1, 0, 2, 3))).to(device)
        slices = origin[0] + np.arange(start, stop)
        places = [BatchPlace(slices, [region] * (stop - start), dims) for dims in flip_sets(2, flips)]
        out = _probabilities(model, batch, hook, places)
        best, arg = out.max(dim=1)
        confidence[start:stop] = best.cpu().numpy()
        index[start:stop] = arg.to(torch.uint8).cpu().numpy()
        if probs is not None:
            probs[:, start:stop] = out.permute(1, 0, 2, 3).cpu().numpy()
        ctx.progress(step + 1, total, f"segmenting slices {start + 1}-{stop} of {depth}")
    return index, confidence, probs


def _windows(size: int, roi: int, overlap: float) -> int:
    if size <= roi:
        return 1
    interval = max(int(roi * (1 - overlap)), 1)
    return math.ceil((size - roi) / interval) + 1


def _predict_3d(
    model: SegModel,
    data: np.ndarray,
    device: torch.device,
    batch_size: int,
    ctx: JobContext,
    overlap: float,
    hook: FeatureHook | None,
    origin: tuple[int, int, int],
    flips: bool,
) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    roi_cfg = model.card.architecture.get("roi_size", DEFAULT_ROI_3D)
    roi = tuple(min(int(r), int(n)) for r, n in zip(roi_cfg, data.shape[1:], strict=True))
    total = math.ceil(math.prod(_windows(n, r, overlap) for n, r in zip(data.shape[1:], roi, strict=True)) / batch_size)
    calls = [0]

    def predictor(window: torch.Tensor, location: list[list[slice]]) -> torch.Tensor:
        regions = [
            tuple(slice(o + s.start, o + s.stop) for o, s in zip(origin, entry[2:], strict=True)) for entry in location
        ]
        out = _probabilities(model, window, hook, [BatchPlace(None, regions, d) for d in flip_sets(3, flips)])
        calls[0] += 1
        ctx.progress(min(calls[0], total), total, f"segmenting window batch {calls[0]} of {total}")
        return out

    inputs = torch.from_numpy(np.ascontiguousarray(data))[None]
    probs = sliding_window_inference(
        inputs,
        roi_size=roi,
        sw_batch_size=batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device=torch.device("cpu"),
        with_coord=True,
    )
    return np.asarray(probs[0].float().numpy(), dtype=np.float32)


def input_box(data: np.ndarray, spatial_dims: int, divisor: tuple[int, ...]) -> tuple[slice, slice, slice] | None:
    """Bounding box (+ margin) of the voxels where any channel is non-zero; None when it is the whole grid.

    Box starts are multiples of the network's total stride so the crop sees the same stride grid.
    """
    nonzero = np.any(data != 0, axis=0)
    if not nonzero.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(nonzero.any(axis=other))
        if spatial_dims == 2 and axis == 0:
            margin, step = 0, 1
        else:
            margin, step = CROP_MARGIN, divisor[axis - 3 + spatial_dims] if axis >= 3 - spatial_dims else 1
        start = max(int(idx[0]) - margin, 0) // step * step
        box.append(slice(start, min(int(idx[-1]) + 1 + margin, nonzero.shape[axis])))
    if all(b.stop - b.start == n for b, n in zip(box, nonzero.shape, strict=True)):
        return None
    return tuple(box)  # type: ignore[return-value]


def _uncrop(
    box: tuple[slice, slice, slice],
    shape: tuple[int, ...],
    num_classes: int,
    index: np.ndarray | None,
    confidence: np.ndarray | None,
    probs: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Place cropped results in full-grid arrays; outside the box: class 0 with probability 1."""
    full_index = full_conf = full_probs = None
    if index is not None:
        full_index = np.zeros(shape, dtype=index.dtype)
        full_index[box] = index
    if confidence is not None:
        full_conf = np.ones(shape, dtype=np.float32)
        full_conf[box] = confidence
    if probs is not None:
        full_probs = np.zeros((num_classes, *shape), dtype=probs.dtype)
        full_probs[0] = 1
        full_probs[(slice(None), *box)] = probs
    return full_index, full_conf, full_probs


def predict_volume(
    model: SegModel,
    volume: Volume,
    *,
    ctx: JobContext | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    modalities: Mapping[str, str | None] | None = None,
    return_probabilities: bool = True,
    probability_dtype: type | np.dtype = np.float16,
    overlap: float = 0.25,
    crop_to_input: bool = True,
    largest_component: bool | None = None,
    feature_hook: FeatureHook | None = None,
    flips: bool = False,
) -> Prediction:
    """Segment a whole volume.

    Parameters
    ----------
    model
        A :class:`~napari_medadapt.core.models.SegModel` (2D models run slice by slice, 3D by sliding window).
    volume
        The input channels; labels are returned on its display grid.
    ctx
        Progress (one step per batch) and cancellation.
    device
        Torch device name or object; default :func:`napari_medadapt.core.device.select_device`. The model is
        moved there.
    batch_size
        Slices per batch (2D) or windows per batch (3D).
    modalities
        Explicit ``{model modality: volume channel or None}`` assignments (others are matched by name).
    return_probabilities
        Keep the ``(K, Z, Y, X)`` probabilities (memory: K x voxels x 2 bytes in float16).
    probability_dtype
        dtype of the returned probabilities (float16 or float32).
    overlap
        Sliding-window overlap (3D).
    crop_to_input
        Run the network only on the bounding box of the non-zero network input plus a margin of
        :data:`CROP_MARGIN` voxels; everything outside (all-zero input, e.g. the air around a skull-stripped
        brain) is background (class 0) with confidence 1. Set False to run on the whole grid.
    largest_component
        Keep only the largest 3D connected component of the foreground; ``None`` follows the card's
        ``postprocess`` (the bundled brain-tumour model switches it on).
    feature_hook
        Changes one feature map of every batch (a method acting on features: TTS channel muting, an adapter);
        everything else (input preparation, cropping, resampling, post-processing) is as without it.
    flips
        Test-time flips: average the probabilities over every combination of spatial-axis flips (in-plane for
        2D models, all three axes for 3D); a hook sees each replica (``place.flips``).

    Raises
    ------
    ModelError
        Missing required modality, bad intensity spec.
    JobCancelled
        When ``ctx`` was cancelled.
    """
    if batch_size < 1:
        raise ModelError(f"batch_size must be at least 1, got {batch_size}.")
    prepared = prepare_model_input(model, volume, modalities)
    labels, probs, confidence, notes = predict_prepared(
        model, prepared, ctx=ctx, device=device, batch_size=batch_size, return_probabilities=return_probabilities,
        probability_dtype=probability_dtype, overlap=overlap, crop_to_input=crop_to_input,
        largest_component=largest_component, feature_hook=feature_hook, flips=flips,
    )
    ids = [i for i in model.card.labels if i != 0]
    return Prediction(
        labels=labels,
        probabilities=probs,
        confidence=confidence,
        volumes_ml=label_volumes_ml(labels, volume.geometry.spacing, ids),
        class_names=dict(zip(model.card.labels, model.card.class_names, strict=True)),
        geometry=volume.geometry,
        present=prepared.present,
        missing=prepared.missing,
        notes=notes,
    )


def crop_box(model: SegModel, data: np.ndarray, crop_to_input: bool = True) -> tuple[slice, slice, slice] | None:
    """The region of the prepared input ``data`` the network runs on (:func:`input_box`; ``None``: all of it).

    Methods that compute features themselves (TTS scoring) use the same region as :func:`predict_volume`.
    """
    if not crop_to_input or model.card.labels[0] != 0:
        return None
    return input_box(data, model.spatial_dims, model.size_divisor)


def predict_prepared(
    model: SegModel,
    prepared: ModelInput,
    *,
    ctx: JobContext | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    return_probabilities: bool = True,
    probability_dtype: type | np.dtype = np.float16,
    overlap: float = 0.25,
    crop_to_input: bool = True,
    largest_component: bool | None = None,
    feature_hook: FeatureHook | None = None,
    flips: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """:func:`predict_volume` on an already prepared input; returns ``(labels, probabilities, confidence,
    notes)`` on the input's source grid (for methods that prepare their input themselves)."""
    import torch

    from .device import select_device

    ctx = ensure_context(ctx)
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    was_training = model.training
    model.to(torch_device)
    model.eval()
    box = crop_box(model, prepared.data, crop_to_input)
    data = prepared.data if box is None else np.ascontiguousarray(prepared.data[(slice(None), *box)])
    origin = (0, 0, 0) if box is None else tuple(b.start for b in box)
    # Without resampling a 2D model needs no full float32 probability volume: index and confidence are
    # reduced per batch. Resampling back (and 3D stitching) work on float32 probabilities.
    keep_dtype = np.dtype(probability_dtype) if return_probabilities else None
    try:
        with torch.inference_mode():
            if model.spatial_dims == 2:
                index, confidence, probs = _predict_2d(
                    model, data, torch_device, batch_size, ctx,
                    np.dtype(np.float32) if prepared.resampled else keep_dtype, feature_hook, origin, flips,
                )
            else:
                index = confidence = None
                probs = _predict_3d(model, data, torch_device, batch_size, ctx, overlap, feature_hook, origin, flips)
    finally:
        model.train(was_training)
    if box is not None:
        index, confidence, probs = _uncrop(box, prepared.data.shape[1:], model.num_classes, index, confidence, probs)
    if prepared.resampled or model.spatial_dims == 3:
        if prepared.resampled:
            probs = resize_channels(probs, prepared.source_shape)
            probs /= np.maximum(probs.sum(axis=0, keepdims=True), 1e-8)
        index = np.argmax(probs, axis=0)
        confidence = probs.max(axis=0).astype(np.float32)
        probs = probs.astype(keep_dtype, copy=False) if keep_dtype is not None else None
    labels, postprocess_notes = postprocess_labels(
        np.asarray(model.card.labels, dtype=np.uint8)[index], model.card, largest_component
    )
    return labels, probs, confidence, list(prepared.notes) + postprocess_notes
