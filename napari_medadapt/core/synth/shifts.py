"""Simulated acquisition shifts of MRI volumes (what changes between scanners and institutions).

Every shift takes a float array ``(C, *spatial)`` (channels = modalities, spatial = ``(Z, Y, X)`` or
``(Y, X)``) or a single-channel ``(*spatial)`` array and returns a new float32 array of the same shape.
The brain mask (``mask``; by default the voxels where any channel is nonzero) is kept: voxels outside it
are zero after every shift, as in skull-stripped data, so a consumer's nonzero mask is still the brain.

Kinds (``severity`` scales the default strength; explicit keyword parameters override it):

- ``intensity_scale``: per-channel gain ``factor`` (default: random in ``2**[-severity, severity]``).
- ``gamma``: ``x -> p99.5 * (x / p99.5) ** gamma`` inside the mask (default ``gamma = 1 + 0.5 * severity``).
- ``bias_field``: smooth multiplicative field ``exp(f)``, ``f`` a random low-order field with
  ``|f| <= strength`` (default ``strength = 0.35 * severity``), one field per channel.
- ``noise``: Rician noise of standard deviation ``sigma_fraction`` times the channel's 99th percentile
  in the mask (default ``0.05 * severity``).
- ``blur``: Gaussian blur of ``sigma`` voxels (default ``1.5 * severity``).
- ``low_resolution``: anti-aliased down-sampling by ``through_plane`` along axis 0 (3D only) and
  ``in_plane`` along the last two axes, then linear up-sampling back to the grid (defaults
  ``1 + 3 * severity`` and ``1 + 0.5 * severity``).
- ``normalization``: data delivered already normalised differently: ``method="zscore"`` (z-score in the
  mask), ``"uint8"`` (window to the 99th percentile, quantised to 0..255) or ``"minmax"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from ..volume import Volume

KINDS: tuple[str, ...] = (
    "intensity_scale",
    "gamma",
    "bias_field",
    "noise",
    "blur",
    "low_resolution",
    "normalization",
)

# (name, kind, params) used by the engine and test-time-adaptation benchmarks; apply with
# ``apply_shift(array, kind, seed=seed, mask=mask, **params)``.
STANDARD_SHIFTS: list[tuple[str, str, dict]] = [
    ("intensity x0.5..x2 per modality", "intensity_scale", {"severity": 1.0}),
    ("gamma 1.5", "gamma", {"gamma": 1.5}),
    ("gamma 0.6", "gamma", {"gamma": 0.6}),
    ("bias field +-35%", "bias_field", {"strength": 0.35}),
    ("bias field +-60%", "bias_field", {"strength": 0.6}),
    ("Rician noise 5%", "noise", {"sigma_fraction": 0.05}),
    ("Rician noise 12%", "noise", {"sigma_fraction": 0.12}),
    ("blur sigma 1.5 vox", "blur", {"sigma": 1.5}),
    ("5 mm slices", "low_resolution", {"through_plane": 5.0, "in_plane": 1.0}),
    ("2 mm in-plane", "low_resolution", {"through_plane": 1.0, "in_plane": 2.0}),
    ("z-scored delivery", "normalization", {"method": "zscore"}),
    ("8-bit windowed delivery", "normalization", {"method": "uint8"}),
]


def default_mask(array: np.ndarray) -> np.ndarray:
    """Brain mask of a ``(C, *spatial)`` array: voxels where any channel is nonzero."""
    return np.any(array != 0, axis=0)


def _percentile_in_mask(channel: np.ndarray, mask: np.ndarray, q: float) -> float:
    values = channel[mask]
    if values.size == 0:
        return 1.0
    value = float(np.percentile(values, q))
    return value if value > 0 else float(np.max(np.abs(values)) or 1.0)


def smooth_random_field(shape: tuple[int, ...], rng: np.random.Generator, n_terms: int = 6) -> np.ndarray:
    """Smooth random field in [-1, 1] over ``shape``: a sum of low-frequency cosines, scaled to max 1."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(n_terms):
        phase = rng.uniform(0, 2 * np.pi)
        arg = np.float32(phase)
        for grid in grids:
            arg = arg + np.float32(rng.uniform(-1.6, 1.6)) * grid
        field += np.float32(rng.normal()) * np.cos(arg)
    peak = float(np.max(np.abs(field)))
    return field / peak if peak > 0 else field


def _intensity_scale(array, mask, rng, severity, factor=None):
    if factor is None:
        factor = 2.0 ** rng.uniform(-severity, severity, size=array.shape[0])
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float32), (array.shape[0],))
    return array * factor.reshape((-1,) + (1,) * (array.ndim - 1))


def _gamma(array, mask, rng, severity, gamma=None):
    gamma = 1.0 + 0.5 * severity if gamma is None else gamma
    gammas = np.broadcast_to(np.asarray(gamma, dtype=np.float32), (array.shape[0],))
    out = np.empty_like(array)
    for c in range(array.shape[0]):
        ref = _percentile_in_mask(array[c], mask, 99.5)
        out[c] = ref * np.clip(array[c] / ref, 0, None) ** gammas[c]
    return out


def _bias_field(array, mask, rng, severity, strength=None):
    strength = 0.35 * severity if strength is None else strength
    out = np.empty_like(array)
    for c in range(array.shape[0]):
        out[c] = array[c] * np.exp(np.float32(strength) * smooth_random_field(array.shape[1:], rng, n_terms=4))
    return out


def _noise(array, mask, rng, severity, sigma_fraction=None):
    sigma_fraction = 0.05 * severity if sigma_fraction is None else sigma_fraction
    out = np.empty_like(array)
    for c in range(array.shape[0]):
        sigma = sigma_fraction * _percentile_in_mask(array[c], mask, 99.0)
        real = array[c] + rng.normal(0, sigma, size=array.shape[1:]).astype(np.float32)
        imag = rng.normal(0, sigma, size=array.shape[1:]).astype(np.float32)
        out[c] = np.sqrt(real * real + imag * imag)
    return out


def _blur(array, mask, rng, severity, sigma=None):
    sigma = 1.5 * severity if sigma is None else sigma
    return np.stack([ndimage.gaussian_filter(ch, sigma) for ch in array]).astype(np.float32)


def _resample_axis(channel: np.ndarray, axis: int, factor: float) -> np.ndarray:
    if factor <= 1.0:
        return channel
    n = channel.shape[axis]
    sigma = [0.0] * channel.ndim
    sigma[axis] = 0.5 * factor
    smooth = ndimage.gaussian_filter(channel, sigma)
    coarse_n = max(2, int(round(n / factor)))
    coarse_pos = np.linspace(0, n - 1, coarse_n)
    coarse = np.take(smooth, np.round(coarse_pos).astype(int), axis=axis)
    fine_pos = np.arange(n, dtype=np.float64)
    idx = np.interp(fine_pos, coarse_pos, np.arange(coarse_n))
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, coarse_n - 1)
    w_shape = [1] * channel.ndim
    w_shape[axis] = n
    w = (idx - lo).astype(np.float32).reshape(w_shape)
    return np.take(coarse, lo, axis=axis) * (1 - w) + np.take(coarse, hi, axis=axis) * w


def _low_resolution(array, mask, rng, severity, through_plane=None, in_plane=None):
    through_plane = 1.0 + 3.0 * severity if through_plane is None else through_plane
    in_plane = 1.0 + 0.5 * severity if in_plane is None else in_plane
    spatial = array.ndim - 1
    out = np.empty_like(array)
    for c in range(array.shape[0]):
        channel = array[c]
        if spatial == 3:
            channel = _resample_axis(channel, 0, through_plane)
        channel = _resample_axis(channel, spatial - 2, in_plane)
        channel = _resample_axis(channel, spatial - 1, in_plane)
        out[c] = channel
    return out


def _normalization(array, mask, rng, severity, method="zscore"):
    out = np.zeros_like(array)
    for c in range(array.shape[0]):
        values = array[c][mask]
        if values.size == 0:
            continue
        if method == "zscore":
            out[c] = (array[c] - values.mean()) / (values.std() + 1e-6)
        elif method == "uint8":
            top = _percentile_in_mask(array[c], mask, 99.0)
            out[c] = np.round(np.clip(array[c] / top, 0, 1) * 255.0)
        elif method == "minmax":
            lo, hi = float(values.min()), float(values.max())
            out[c] = (array[c] - lo) / (hi - lo + 1e-6)
        else:
            raise ValueError(f"unknown normalization method {method!r}; use 'zscore', 'uint8' or 'minmax'")
    return out


_SHIFT_FUNCTIONS = {
    "intensity_scale": _intensity_scale,
    "gamma": _gamma,
    "bias_field": _bias_field,
    "noise": _noise,
    "blur": _blur,
    "low_resolution": _low_resolution,
    "normalization": _normalization,
}


def apply_shift(
    volume_array: np.ndarray,
    kind: str,
    severity: float = 1.0,
    seed: int = 0,
    mask: np.ndarray | None = None,
    **params: object,
) -> np.ndarray:
    """Apply one simulated acquisition shift.

    Parameters
    ----------
    volume_array
        ``(C, *spatial)`` or ``(*spatial)`` intensities (2D or 3D spatial); not modified.
    kind
        One of :data:`KINDS`.
    severity
        Scales the kind's default strength (1.0 = the documented default); ignored for parameters
        given explicitly in ``params``.
    seed
        Seed of the random parts (noise, bias field, random gains).
    mask
        Spatial brain mask; voxels outside it are zero in the result. Default: any channel nonzero.
    **params
        Kind-specific parameters (see the module docstring), e.g. ``gamma=1.5`` or ``sigma=2.0``.

    Returns
    -------
    np.ndarray
        float32 array of the input's shape.
    """
    if kind not in _SHIFT_FUNCTIONS:
        raise ValueError(f"unknown shift kind {kind!r}; choose one of {', '.join(KINDS)}")
    array = np.asarray(volume_array, dtype=np.float32)
    single = array.ndim in (2, 3) and (mask is not None and mask.shape == array.shape)
    if single or array.ndim == 2:
        array = array[None]
    if mask is None:
        mask = default_mask(array)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != array.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match the spatial shape {array.shape[1:]}")
    rng = np.random.default_rng(seed)
    out = _SHIFT_FUNCTIONS[kind](array, mask, rng, float(severity), **params).astype(np.float32)
    out[:, ~mask] = 0.0
    return out[0] if (single or np.asarray(volume_array).ndim == 2) else out


def shift_volume(volume: Volume, kind: str, severity: float = 1.0, seed: int = 0, **params: object) -> Volume:
    """:func:`apply_shift` on all channels of a :class:`~napari_medadapt.core.volume.Volume` (brain mask:
    voxels where any channel is nonzero); returns a new Volume on the same grid."""
    from ..volume import Volume as _Volume

    data = apply_shift(volume.data, kind, severity, seed, mask=default_mask(volume.data), **params)
    return _Volume(data, volume.geometry, volume.channels, volume.source_paths)
