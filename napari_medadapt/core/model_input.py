"""Input preparation: from a :class:`~napari_medadapt.core.volume.Volume` to the network input of a model.

Channels are matched to the model's modalities by name (``t1ce`` counts as ``t1c``; an explicit ``modalities``
mapping overrides) and checked against the card's supported subsets; non-finite voxels become 0 (reported);
each channel is normalised as the card says (``intensity.method``: ``percentile``, ``zscore``, ``ct_window``,
``none``; the windows and percentiles of :mod:`.intensity`); missing optional modalities become zeros after
normalisation; when the card's ``voxel_size`` differs from the volume's spacing by more than 2 %, the channels
are resampled (trilinear) to it. Every method (plain inference, TTS, adaptation) prepares its input here. For a
model trained on skull-stripped MRI (card ``skull_stripped``), an input that is not skull-stripped is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError, VolumeError
from .intensity import ct_window, robust_scale, zscore
from .volume import Volume, canonical_modality

if TYPE_CHECKING:
    from .models import ModelCard, SegModel

#: Relative spacing difference above which the volume is resampled to the model's voxel size.
SPACING_TOLERANCE = 0.02


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


def resize_channels(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
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
    if card.skull_stripped and present:
        from .preprocess.brain import unstripped_note

        note = unstripped_note(card.name, mapping[present[0]], volume.channel(mapping[present[0]]), spacing)
        if note:
            notes.append(note)
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
        data = resize_channels(data, new_shape)
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


