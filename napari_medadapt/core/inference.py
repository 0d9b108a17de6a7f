"""Whole-volume inference: from a :class:`~napari_medadapt.core.volume.Volume` to labels and probabilities.

Pipeline (:func:`prepare_model_input` / :func:`prepare_input`, then :func:`predict_volume`):

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
7. The card's ``postprocess`` steps run on the labels (:mod:`.postprocess`; ``largest_component``: only the
   largest connected component of the whole foreground is kept), unless the caller switches them off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError, VolumeError
from .intensity import ct_window, robust_scale, zscore
from .jobs import JobContext, ensure_context
from .metrics import label_volumes_ml
from .postprocess import postprocess_labels
from .volume import Geometry, Volume, canonical_modality

if TYPE_CHECKING:
    import torch

    from .models import ModelCard, SegModel

#: Relative spacing difference above which the volume is resampled to the model's voxel size.
SPACING_TOLERANCE = 0.02
#: Voxels kept around the non-zero input when ``crop_to_input`` (receptive-field context).
CROP_MARGIN = 16
#: Default 3D sliding-window size (clipped to the volume); a card may set ``architecture.roi_size``.
DEFAULT_ROI_3D = (96, 96, 96)


@dataclass
class ModelInput:
    """A volume prepared for a model.

    Attributes
    ----------
    data
        float32 ``(C, Z, Y, X)`` normalised channels in the model's modality order, on the model grid.
    present, missing
        Model modalities that were supplied / filled with zeros.
    spacing
        ``(z, y, x)`` mm of ``data``.
    source_shape
        ``(Z, Y, X)`` of the volume's own display grid (equal to ``data.shape[1:]`` unless resampled).
    notes
        Human-readable remarks (NaNs replaced, resampling, filled modalities).
    """

    data: np.ndarray
    present: tuple[str, ...]
    missing: tuple[str, ...]
    spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def resampled(self) -> bool:
        """Whether ``data`` is on another grid than the source volume."""
        return tuple(self.data.shape[1:]) != tuple(self.source_shape)


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


# ---------------------------------------------------------------------------------------------- input
def match_modalities(
    card: ModelCard, channels: tuple[str, ...], modalities: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    """Model modality -> volume channel name (``None`` when absent).

    Parameters
    ----------
    card
        The model card.
    channels
        The volume's channel names.
    modalities
        Explicit ``{model modality: channel name or None}`` entries; the rest are matched by name.
    """
    explicit = {str(k).lower(): v for k, v in (modalities or {}).items()}
    unknown = sorted(set(explicit) - set(card.modalities))
    if unknown:
        raise ModelError(
            f"model {card.name!r} has no input {', '.join(unknown)}; its inputs are {', '.join(card.modalities)}."
        )
    mapping: dict[str, str | None] = {}
    for modality in card.modalities:
        if modality in explicit:
            channel = explicit[modality]
            if channel is not None and channel not in channels:
                raise VolumeError(
                    f"channel {channel!r} assigned to {modality} is not in the volume ({', '.join(channels)})."
                )
            mapping[modality] = channel
            continue
        found = [c for c in channels if c.lower() == modality]
        found = found or [c for c in channels if canonical_modality(c) == modality]
        mapping[modality] = found[0] if found else None
    return mapping


def normalise_channel(image: np.ndarray, spec: Mapping[str, object]) -> np.ndarray:
    """Apply a card's intensity spec to one channel (float32 result)."""
    method = str(spec.get("method", "percentile")).lower()
    nonzero = bool(spec.get("nonzero", True))
    mask = None if nonzero else np.ones(image.shape, dtype=bool)
    if method == "percentile":
        return robust_scale(
            image,
            lower=float(spec.get("lower", 0.5)),
            upper=float(spec.get("upper", 99.5)),
            mask=mask,
            clip=bool(spec.get("clip", True)),
            outside=0.0 if nonzero else None,
        )
    if method == "zscore":
        return zscore(image, mask=mask, outside=0.0 if nonzero else None)
    if method == "ct_window":
        window = spec.get("window", "abdomen")
        return ct_window(image, window if isinstance(window, str) else tuple(window))
    if method == "none":
        return np.asarray(image, dtype=np.float32)
    raise ModelError(f"unknown intensity method {method!r} in the model card; use percentile, zscore, ct_window or none.")


def _target_spacing(card: ModelCard, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    if card.voxel_size is None:
        return spacing
    target = []
    for have, want in zip(spacing, card.voxel_size, strict=True):
        if want is None or abs(float(want) - have) <= SPACING_TOLERANCE * float(want):
            target.append(have)
        else:
            target.append(float(want))
    return tuple(target)  # type: ignore[return-value]


def _resize(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resize of ``(C, Z, Y, X)`` float data (channel by channel to bound memory)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for c in range(array.shape[0]):
        t = torch.from_numpy(np.ascontiguousarray(array[c], dtype=np.float32))[None, None]
        out[c] = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    return out


def prepare_model_input(
    model: SegModel | ModelCard,
    volume: Volume,
    modalities: Mapping[str, str | None] | None = None,
    resample: bool = True,
) -> ModelInput:
    """Normalised, modality-ordered input of ``volume`` for ``model``, with what was done (module docstring).

    With ``resample=False`` the data stay on the volume's own grid even when the card asks for another
    voxel size.
    """
    card = model if not hasattr(model, "card") else model.card
    mapping = match_modalities(card, volume.channels, modalities)
    present = tuple(m for m, c in mapping.items() if c is not None)
    card.check_modalities(present)
    missing = tuple(m for m, c in mapping.items() if c is None)
    shape = volume.geometry.display_shape
    spacing = tuple(float(s) for s in volume.geometry.spacing)
    notes: list[str] = []
    data = np.zeros((len(card.modalities), *shape), dtype=np.float32)
    for index, modality in enumerate(card.modalities):
        channel = mapping[modality]
        if channel is None:
            continue
        image = volume.channel(channel)
        finite = np.isfinite(image)
        if not finite.all():
            count = int(image.size - np.count_nonzero(finite))
            notes.append(f"{channel}: {count} NaN/Inf voxels were treated as 0.")
            image = np.where(finite, image, 0.0).astype(np.float32)
        data[index] = normalise_channel(image, card.intensity)
    if missing:
        notes.append(f"missing modalities filled with zeros: {', '.join(missing)}.")
    target = _target_spacing(card, spacing) if resample else spacing
    if target != spacing:
        new_shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))
        notes.append(
            f"resampled from {tuple(round(s, 3) for s in spacing)} mm to the model's "
            f"{tuple(round(t, 3) for t in target)} mm voxels and back."
        )
        data = _resize(data, new_shape)
    return ModelInput(data, present, missing, target, shape, notes)


def prepare_input(
    model: SegModel | ModelCard,
    volume: Volume,
    modalities: Mapping[str, str | None] | None = None,
    resample: bool = True,
) -> np.ndarray:
    """The network input ``(C, Z, Y, X)`` float32 for ``volume``, exactly as :func:`predict_volume` feeds it.

    Channels in the model's modality order, normalised per the card, missing optional ones zero; on the
    model's voxel grid (the volume's own grid unless the card's ``voxel_size`` differs and ``resample``).
    Use :func:`prepare_model_input` to also learn which modalities were missing and whether it was resampled.
    """
    return prepare_model_input(model, volume, modalities, resample).data


# ---------------------------------------------------------------------------------------------- inference
def _windows(size: int, roi: int, overlap: float) -> int:
    if size <= roi:
        return 1
    interval = max(int(roi * (1 - overlap)), 1)
    return math.ceil((size - roi) / interval) + 1


def _predict_2d(
    model: SegModel,
    data: np.ndarray,
    device: torch.device,
    batch_size: int,
    ctx: JobContext,
    probs_dtype: np.dtype | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class index, confidence and (when ``probs_dtype``) probabilities, slice batch by slice batch.

    Only what is asked for is kept, so memory stays at a few bytes per voxel plus one batch.
    """
    import torch

    depth = data.shape[1]
    index = np.empty(data.shape[1:], dtype=np.uint8)
    confidence = np.empty(data.shape[1:], dtype=np.float32)
    probs = None if probs_dtype is None else np.empty((model.num_classes, *data.shape[1:]), dtype=probs_dtype)
    total = math.ceil(depth / batch_size)
    for step, start in enumerate(range(0, depth, batch_size)):
        stop = min(start + batch_size, depth)
        batch = torch.from_numpy(np.ascontiguousarray(data[:, start:stop].transpose(1, 0, 2, 3))).to(device)
        out = torch.softmax(model(batch).float(), dim=1)
        best, arg = out.max(dim=1)
        confidence[start:stop] = best.cpu().numpy()
        index[start:stop] = arg.to(torch.uint8).cpu().numpy()
        if probs is not None:
            probs[:, start:stop] = out.permute(1, 0, 2, 3).cpu().numpy()
        ctx.progress(step + 1, total, f"segmenting slices {start + 1}-{stop} of {depth}")
    return index, confidence, probs


def _predict_3d(
    model: SegModel,
    data: np.ndarray,
    device: torch.device,
    batch_size: int,
    ctx: JobContext,
    overlap: float,
) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    roi_cfg = model.card.architecture.get("roi_size", DEFAULT_ROI_3D)
    roi = tuple(min(int(r), int(n)) for r, n in zip(roi_cfg, data.shape[1:], strict=True))
    total = math.ceil(math.prod(_windows(n, r, overlap) for n, r in zip(data.shape[1:], roi, strict=True)) / batch_size)
    calls = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        out = torch.softmax(model(window).float(), dim=1)
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

    Raises
    ------
    ModelError
        Missing required modality, bad intensity spec.
    JobCancelled
        When ``ctx`` was cancelled.
    """
    import torch

    from .device import select_device

    ctx = ensure_context(ctx)
    if batch_size < 1:
        raise ModelError(f"batch_size must be at least 1, got {batch_size}.")
    prepared = prepare_model_input(model, volume, modalities)
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    was_training = model.training
    model.to(torch_device)
    model.eval()
    box = input_box(prepared.data, model.spatial_dims, model.size_divisor) if crop_to_input and model.card.labels[0] == 0 else None
    data = prepared.data if box is None else np.ascontiguousarray(prepared.data[(slice(None), *box)])
    # Without resampling a 2D model needs no full float32 probability volume: index and confidence are
    # reduced per batch. Resampling back (and 3D stitching) work on float32 probabilities.
    keep_dtype = np.dtype(probability_dtype) if return_probabilities else None
    try:
        with torch.inference_mode():
            if model.spatial_dims == 2:
                index, confidence, probs = _predict_2d(
                    model, data, torch_device, batch_size, ctx,
                    np.dtype(np.float32) if prepared.resampled else keep_dtype,
                )
            else:
                index = confidence = None
                probs = _predict_3d(model, data, torch_device, batch_size, ctx, overlap)
    finally:
        model.train(was_training)
    if box is not None:
        index, confidence, probs = _uncrop(box, prepared.data.shape[1:], model.num_classes, index, confidence, probs)
    if prepared.resampled or model.spatial_dims == 3:
        if prepared.resampled:
            probs = _resize(probs, prepared.source_shape)
            probs /= np.maximum(probs.sum(axis=0, keepdims=True), 1e-8)
        index = np.argmax(probs, axis=0)
        confidence = probs.max(axis=0).astype(np.float32)
        probs = probs.astype(keep_dtype, copy=False) if keep_dtype is not None else None
    labels, postprocess_notes = postprocess_labels(
        np.asarray(model.card.labels, dtype=np.uint8)[index], model.card, largest_component
    )
    ids = [i for i in model.card.labels if i != 0]
    notes = list(prepared.notes) + postprocess_notes
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
