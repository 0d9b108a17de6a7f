"""Intensity normalisation: MRI robust percentile scaling, z-scoring, CT windows in HU.

MRI intensities have no absolute unit, so they are normalised per scan from statistics of the
foreground (by default the nonzero voxels, which is the brain in a skull-stripped scan). CT is in
Hounsfield units, so fixed windows are used.
"""

from __future__ import annotations

import numpy as np

from .errors import VolumeError

__all__ = [
    "CT_WINDOWS",
    "MRI_PERCENTILES",
    "ct_window",
    "display_window",
    "background_value",
    "foreground_mask",
    "percentile_range",
    "resolve_ct_window",
    "robust_scale",
    "window_to_uint8",
    "zscore",
]

#: The one table of CT windows, (low, high) in HU, used by segmentation cards (``ct_window``), the Segment
#: Anything dock (as ``ct-NAME``), training and the reader's display. Width / level:
#: soft-tissue 400/40 (LiteMedSAM's CT preprocessing), abdomen 400/50, mediastinum 350/50, liver 150/30,
#: brain 80/40, subdural 215/75, lung 1500/-600, bone 1500/300.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (-160.0, 240.0),
    "abdomen": (-150.0, 250.0),
    "mediastinum": (-125.0, 225.0),
    "liver": (-45.0, 105.0),
    "brain": (0.0, 80.0),
    "subdural": (-32.5, 182.5),
    "lung": (-1350.0, 150.0),
    "bone": (-450.0, 1050.0),
}
#: MRI has no absolute unit: scans are scaled between these percentiles of their non-zero voxels.
MRI_PERCENTILES: tuple[float, float] = (0.5, 99.5)


#: Share of a volume's outer faces that must hold one exact value for it to be the background value.
BACKGROUND_BORDER_SHARE = 0.5


def background_value(image: np.ndarray) -> float:
    """The constant value outside the object: 0 in most skull-stripped scans, -3.2 in a z-scored one (BraTS-style
    normalisation moves the zeros), whatever it is. It is the value that at least
    :data:`BACKGROUND_BORDER_SHARE` of the voxels on the volume's outer faces hold exactly; 0 when there is none
    (a raw scan's noise floor)."""
    image = np.asarray(image)
    if image.ndim < 2 or image.size == 0:
        return 0.0
    faces = np.concatenate([np.moveaxis(image, axis, 0)[[0, -1]].ravel() for axis in range(image.ndim)])
    faces = faces[np.isfinite(faces)]
    if faces.size == 0:
        return 0.0
    values, counts = np.unique(faces, return_counts=True)
    best = int(np.argmax(counts))
    candidate = float(values[best])
    if counts[best] >= BACKGROUND_BORDER_SHARE * faces.size:
        return candidate
    return 0.0


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Voxels that differ from the background value (:func:`background_value`) and are finite: the brain in a
    skull-stripped MRI, whether its background is 0 or a z-scored constant."""
    image = np.asarray(image)
    return (image != background_value(image)) & np.isfinite(image)


def _statistics_voxels(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    image = np.asarray(image)
    if mask is None:
        mask = foreground_mask(image)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise VolumeError(f"The mask has shape {mask.shape} but the image has shape {image.shape}.")
        mask = mask & np.isfinite(image)
    values = image[mask]
    if values.size == 0:
        values = image[np.isfinite(image)]
    return values


def display_window(modality: str, image: np.ndarray) -> tuple[float, float]:
    """The window an image layer opens with: the abdomen CT window for ``ct``, else the 0.5-99.5 percentiles of
    the non-zero voxels. The reader's contrast limits, hence the Segment Anything dock's default window (and the
    window ``medadapt batch embed`` embeds with, so that the dock finds those embeddings)."""
    return CT_WINDOWS["abdomen"] if modality == "ct" else percentile_range(image, 0.5, 99.5)


def percentile_range(
    image: np.ndarray, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """Intensities at the ``lower`` and ``upper`` percentiles within ``mask`` (default: nonzero voxels).

    Falls back to all finite voxels when the mask is empty; returns ``(0.0, 1.0)`` for an image without
    finite voxels and widens a zero-width range to ``(low, low + 1)``.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise VolumeError(f"Percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
    values = _statistics_voxels(image, mask)
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [lower, upper]))
    if high <= low:
        high = low + 1.0
    return low, high


def robust_scale(
    image: np.ndarray,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: np.ndarray | None = None,
    clip: bool = True,
    outside: float | None = 0.0,
) -> np.ndarray:
    """Scale an MRI so the ``lower``/``upper`` percentiles of the foreground map to 0 and 1 (float32).

    Parameters
    ----------
    image
        Intensity array of any shape.
    lower, upper
        Percentiles (0-100) computed within ``mask``.
    mask
        Boolean array of the image's shape; default: nonzero voxels.
    clip
        Clip the result to [0, 1].
    outside
        Value given to voxels outside the foreground (``None`` keeps their scaled values). The background
        of a skull-stripped scan must stay at 0 even when the brain's lower percentile is negative
        (interpolation undershoot); scaling would otherwise lift it to a grey level the model never saw.
    """
    image = np.asarray(image)
    foreground = foreground_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    low, high = percentile_range(image, lower, upper, foreground)
    scaled = (image.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0)
    if clip:
        scaled = np.clip(scaled, 0.0, 1.0)
    if outside is not None:
        scaled[~foreground] = outside
    return scaled


def zscore(image: np.ndarray, mask: np.ndarray | None = None, outside: float | None = 0.0) -> np.ndarray:
    """Z-score an image with the mean and standard deviation of the foreground (float32).

    Parameters
    ----------
    image
        Intensity array of any shape.
    mask
        Boolean foreground of the image's shape; default: nonzero voxels.
    outside
        Value given to voxels outside the foreground (``None`` keeps their z-scores).
    """
    image = np.asarray(image, dtype=np.float32)
    foreground = foreground_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    values = _statistics_voxels(image, foreground)
    if values.size == 0:
        return np.zeros_like(image)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    result = (image - np.float32(mean)) / np.float32(max(std, 1e-8))
    result = np.nan_to_num(result, nan=0.0, posinf=0.0, neginf=0.0)
    if outside is not None:
        result[~foreground] = outside
    return result


def resolve_ct_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """(low, high) HU of a preset name from :data:`CT_WINDOWS` (``soft tissue``, ``Soft_Tissue`` and
    ``ct-soft-tissue`` all work) or an explicit pair."""
    if isinstance(window, str):
        key = window.lower().replace(" ", "-").replace("_", "-").removeprefix("ct-")
        if key not in CT_WINDOWS:
            raise VolumeError(f"Unknown CT window {window!r}; choose one of {', '.join(CT_WINDOWS)}.")
        return CT_WINDOWS[key]
    low, high = (float(v) for v in window)
    if not high > low:
        raise VolumeError(f"A CT window needs high > low, got ({low}, {high}).")
    return low, high


def ct_window(image_hu: np.ndarray, window: str | tuple[float, float] = "abdomen") -> np.ndarray:
    """Clip a CT in HU to a window and scale it to [0, 1] (float32); NaN becomes 0."""
    low, high = resolve_ct_window(window)
    scaled = (np.asarray(image_hu, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def window_to_uint8(image_slice: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map intensities in [low, high] to 0..255 (uint8), clipping outside; NaN becomes 0."""
    if not high > low:
        raise VolumeError(f"The display window needs high > low, got ({low}, {high}).")
    scaled = (np.asarray(image_slice, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)
    return np.rint(scaled).astype(np.uint8)
