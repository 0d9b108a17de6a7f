"""NIfTI volumes with exact geometry: reading, display orientation and atomic label writing.

Orientation convention: every volume is reoriented at load (axis permutation and flips only, never
resampling) to LPS and its array is transposed to ``(Z, Y, X)`` = (S, P, L). Axis 0 runs inferior ->
superior; in napari's default axial view anterior is at the top and the patient's right on the screen's
left (radiological convention). Oblique affines are shown in the nearest LPS orientation; the exact source
affine and header are kept in :class:`Geometry`, so :func:`save_labels` writes label maps back on the
source grid with the same shape, affine and qform/sform codes.

File layouts (``.nii``/``.nii.gz``, NIfTI-1 or -2; trailing singleton axes beyond the third dropped):
``(X, Y)`` one slice; ``(X, Y, Z)``; ``(X, Y, 1, C)`` and ``(X, Y, Z, 1, C)`` (NIfTI vector convention)
with C channels; ``(X, Y, Z, T)`` with Z > 1 is a time series whose first volume is used (with a
:class:`VolumeWarning`). Anything else (5D with dim 4 > 1, 6D+, zero-size axes, complex or RGB voxels)
raises :class:`~napari_medadapt.core.errors.VolumeError`.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import nibabel.orientations as orientations
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .errors import VolumeError

__all__ = [
    "CANONICAL_MODALITIES", "LABEL_KEYWORDS", "MODALITY_ALIASES", "Geometry", "Volume", "VolumeWarning",
    "canonical_modality", "case_files", "is_label_name", "is_nifti_path", "load_case", "load_labels",
    "load_volume", "nifti_stem", "read_geometry", "save_labels",
]  # fmt: skip

#: Canonical modality name -> names recognised in file names and layer names (case-insensitive tokens).
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w", "t1n", "t1native", "mprage"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1wce", "t1post", "t1contrast"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "fla", "t2flair", "t2f"),
    "pd": ("pd", "pdw"),
    "dwi": ("dwi",),
    "adc": ("adc",),
    "ct": ("ct", "cect", "ncct"),
    "pet": ("pet",),
}
#: Channel order of :func:`load_case`; unrecognised image names follow, sorted.
CANONICAL_MODALITIES: tuple[str, ...] = tuple(MODALITY_ALIASES)
#: A file or layer whose name contains one of these is a label map.
LABEL_KEYWORDS: tuple[str, ...] = ("seg", "label", "mask")

_ALIAS_TO_MODALITY = {alias: mod for mod, aliases in MODALITY_ALIASES.items() for alias in aliases}
_LPS = orientations.axcodes2ornt(("L", "P", "S"))
_GRID_ATOL = 1e-4  # mm; header affines are stored as float32
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class VolumeWarning(UserWarning):
    """A volume was loaded with a documented simplification (first frame of a series, NaN replaced)."""


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a NIfTI file name (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without its ``.nii`` / ``.nii.gz`` suffix."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", nifti_stem(name).lower()) if t]


def is_label_name(name: str | os.PathLike) -> bool:
    """Whether a file or layer name denotes a label map (contains seg, label or mask)."""
    return any(key in token for token in _tokens(str(name)) for key in LABEL_KEYWORDS)


def canonical_modality(name: str | os.PathLike) -> str | None:
    """Canonical modality of a file or layer name, or ``None`` when none is recognised.

    The name is split into lower-case alphanumeric tokens (``BraTS20_001_t1ce.nii.gz`` ->
    ``brats20, 001, t1ce``). Pairs of adjacent tokens are tried first (``T2-FLAIR`` -> ``t2flair`` ->
    flair, ``t1_gd`` -> t1c), then single tokens; the last match wins (modality suffix convention).
    """
    tokens = _tokens(str(name))
    pairs = [a + b for a, b in zip(tokens, tokens[1:], strict=False)]
    for candidates in (pairs, tokens):
        matches = [_ALIAS_TO_MODALITY[t] for t in candidates if t in _ALIAS_TO_MODALITY]
        if matches:
            return matches[-1]
    return None


def _fmt_affine(affine: np.ndarray) -> str:
    return np.array2string(np.asarray(affine)[:3], precision=3, suppress_small=True).replace("\n", "")


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid of a NIfTI file and its mapping to the LPS ``(Z, Y, X)`` display array.

    Parameters
    ----------
    source_affine
        (4, 4) affine of the file as on disk (voxel ``(i, j, k)`` -> world RAS mm).
    source_shape
        Spatial shape ``(i, j, k)`` of the file as on disk.
    source_header
        The file's header (qform/sform codes, units, description), reused when writing labels.
    """

    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_header: nib.Nifti1Header

    def __post_init__(self) -> None:
        affine = np.array(self.source_affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VolumeError(f"The affine must be a finite 4x4 matrix, got {affine.tolist()}.")
        shape = tuple(int(s) for s in self.source_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise VolumeError(f"A volume needs 3 spatial axes of size >= 1, got shape {shape}.")
        if np.isnan(orientations.io_orientation(affine)).any():
            raise VolumeError(
                f"The affine {_fmt_affine(affine)} is degenerate (an axis has zero length or two axes "
                "point the same way); fix the file's header (qform/sform) in the scanner export."
            )
        affine.setflags(write=False)
        object.__setattr__(self, "source_affine", affine)
        object.__setattr__(self, "source_shape", shape)
        object.__setattr__(self, "source_header", self.source_header.copy())

    @classmethod
    def from_image(cls, image: nib.Nifti1Image, source_shape: Sequence[int]) -> Geometry:
        """Geometry of a loaded NIfTI image whose spatial shape is ``source_shape``."""
        return cls(image.affine, tuple(source_shape), image.header)

    @classmethod
    def from_display_grid(
        cls,
        display_shape: Sequence[int],
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Geometry:
        """An LPS-stored grid whose display array has ``display_shape`` (Z, Y, X) and ``spacing`` (mm).

        ``origin`` is the world (RAS, mm) position of display voxel (0, 0, 0). Use it for arrays that
        do not come from a file (synthetic volumes); labels saved against it are LPS-oriented NIfTI.
        """
        sz, sy, sx = (float(s) for s in spacing)
        affine = np.diag([-sx, -sy, sz, 1.0])
        affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        header = nib.Nifti1Header()
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm")
        return cls(affine, tuple(int(s) for s in display_shape)[::-1], header)

    @cached_property
    def _to_lps(self) -> np.ndarray:
        return orientations.ornt_transform(orientations.io_orientation(self.source_affine), _LPS)

    @cached_property
    def _from_lps(self) -> np.ndarray:
        return orientations.ornt_transform(_LPS, orientations.io_orientation(self.source_affine))

    @cached_property
    def _lps_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, (target, _flip) in enumerate(self._to_lps):
            shape[int(target)] = self.source_shape[axis]
        return tuple(shape)

    @property
    def source_axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the file's axes, e.g. ``("L", "P", "S")`` or ``("R", "A", "S")``."""
        return tuple(orientations.aff2axcodes(self.source_affine))

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """Shape ``(Z, Y, X)`` of the display array."""
        return self._lps_shape[::-1]

    @cached_property
    def display_affine(self) -> np.ndarray:
        """(4, 4) affine mapping display index ``(z, y, x, 1)`` to world RAS mm."""
        lps_affine = self.source_affine @ orientations.inv_ornt_aff(self._to_lps, self.source_shape)
        zyx_to_xyz = np.zeros((4, 4))
        zyx_to_xyz[0, 2] = zyx_to_xyz[1, 1] = zyx_to_xyz[2, 0] = zyx_to_xyz[3, 3] = 1.0
        affine = lps_affine @ zyx_to_xyz
        affine.setflags(write=False)
        return affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(z, y, x)`` in mm of the display array (use it as a napari layer's scale)."""
        return tuple(float(s) for s in np.linalg.norm(self.display_affine[:3, :3], axis=0))

    def to_display(self, array_ijk: np.ndarray) -> np.ndarray:
        """Reorient a source-ordered array ``(..., i, j, k)`` to the display order ``(..., Z, Y, X)``."""
        array_ijk = np.asanyarray(array_ijk)
        if array_ijk.shape[-3:] != self.source_shape:
            raise VolumeError(
                f"Array of shape {array_ijk.shape} does not end with the source shape {self.source_shape}."
            )
        lps = orientations.apply_orientation(np.moveaxis(array_ijk, (-3, -2, -1), (0, 1, 2)), self._to_lps)
        return np.ascontiguousarray(np.moveaxis(lps, (0, 1, 2), (-1, -2, -3)))

    def to_source(self, array_zyx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_display`: ``(..., Z, Y, X)`` -> ``(..., i, j, k)`` as on disk."""
        array_zyx = np.asanyarray(array_zyx)
        if array_zyx.shape[-3:] != self.display_shape:
            raise VolumeError(
                f"Array of shape {array_zyx.shape} does not end with the display shape {self.display_shape}."
            )
        src = orientations.apply_orientation(np.moveaxis(array_zyx, (-1, -2, -3), (0, 1, 2)), self._from_lps)
        return np.ascontiguousarray(np.moveaxis(src, (0, 1, 2), (-3, -2, -1)))

    def source_index_to_display(self, ijk: np.ndarray) -> np.ndarray:
        """Map source voxel indices ``(N, 3)`` ``(i, j, k)`` to display indices ``(N, 3)`` ``(z, y, x)``."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        lps = np.empty_like(ijk)
        for axis, (target, flip) in enumerate(self._to_lps):
            values = ijk[:, axis]
            lps[:, int(target)] = values if flip > 0 else self.source_shape[axis] - 1 - values
        return lps[:, ::-1].copy()

    def display_index_to_source(self, zyx: np.ndarray) -> np.ndarray:
        """Map display indices ``(N, 3)`` ``(z, y, x)`` to source voxel indices ``(N, 3)`` ``(i, j, k)``."""
        lps = np.asarray(zyx, dtype=np.int64).reshape(-1, 3)[:, ::-1]
        ijk = np.empty_like(lps)
        for axis, (target, flip) in enumerate(self._to_lps):
            values = lps[:, int(target)]
            ijk[:, axis] = values if flip > 0 else self.source_shape[axis] - 1 - values
        return ijk

    def matches(self, other: Geometry, atol: float = _GRID_ATOL) -> bool:
        """Whether ``other`` has the same display grid (shape, and affine within ``atol`` mm)."""
        return self.display_shape == other.display_shape and np.allclose(
            self.display_affine, other.display_affine, atol=atol
        )

    def describe(self) -> str:
        """One-line description: source shape, orientation, spacing and affine."""
        return (
            f"shape {self.source_shape} ({''.join(self.source_axcodes)}), spacing (z, y, x) "
            f"{tuple(round(s, 4) for s in self.spacing)} mm, affine {_fmt_affine(self.source_affine)}"
        )

    def __repr__(self) -> str:
        return f"Geometry({self.describe()})"


@dataclass
class Volume:
    """Intensity channels on one display grid.

    Attributes
    ----------
    data
        float32 array ``(C, Z, Y, X)``.
    geometry
        Grid of the display array and its source file.
    channels
        Channel (modality) names, e.g. ``("t1", "t1c", "t2", "flair")`` or ``("ct",)``.
    source_paths
        File each channel came from (empty strings for arrays not read from a file).
    """

    data: np.ndarray
    geometry: Geometry
    channels: tuple[str, ...]
    source_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        self.channels = tuple(self.channels)
        if not self.source_paths:
            self.source_paths = ("",) * len(self.channels)
        self.source_paths = tuple(str(p) for p in self.source_paths)
        if self.data.ndim != 4 or self.data.shape[1:] != self.geometry.display_shape:
            raise VolumeError(
                f"Volume data must be (C, Z, Y, X) with (Z, Y, X) = {self.geometry.display_shape}, "
                f"got {self.data.shape}."
            )
        if not len(self.channels) == len(self.source_paths) == self.data.shape[0]:
            raise VolumeError(
                f"{self.data.shape[0]} channels in the data but names {self.channels} and "
                f"{len(self.source_paths)} source paths."
            )

    def _index(self, name: str) -> int:
        for candidate in (name, canonical_modality(name)):
            if candidate in self.channels:
                return self.channels.index(candidate)
        raise VolumeError(f"This volume has no channel {name!r}; it has {', '.join(self.channels)}.")

    def channel(self, name: str) -> np.ndarray:
        """The ``(Z, Y, X)`` array of channel ``name`` (an alias such as ``t1ce`` also works)."""
        return self.data[self._index(name)]

    def subset(self, names: Sequence[str]) -> Volume:
        """A volume with only the channels ``names`` (aliases allowed), in that order."""
        indices = [self._index(n) for n in names]
        return Volume(
            self.data[indices],
            self.geometry,
            tuple(self.channels[i] for i in indices),
            tuple(self.source_paths[i] for i in indices),
        )


def _open_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"File not found: {path}. Check the path.")
    if path.is_dir():
        raise VolumeError(f"{path} is a folder; open it as a case folder (load_case) or pick a .nii/.nii.gz file.")
    if not is_nifti_path(path):
        raise VolumeError(f"{path} is not a NIfTI file name; napari-medadapt reads .nii and .nii.gz files.")
    try:
        image = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(
            f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc}). The file may be truncated, "
            "corrupt, or another format with a NIfTI name; export it again as NIfTI."
        ) from exc
    if not isinstance(image, nib.Nifti1Image):
        raise VolumeError(f"{path} is a {type(image).__name__}, not a single-file NIfTI image.")
    return image


def _layout(image: nib.Nifti1Image, path: str | os.PathLike) -> tuple[tuple[int, int, int], str, int]:
    """Spatial shape, layout kind ("volume", "channels", "series") and channel count of a file."""
    shape = tuple(int(s) for s in image.shape)
    if not shape or min(shape) == 0:
        raise VolumeError(f"{path} has an empty axis (shape {shape}); the file holds no voxels.")
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise VolumeError(f"{path} stores {dtype} voxels (RGB or complex); only scalar intensities are supported.")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        return (shape[0], shape[1], 1), "volume", 1
    if len(shape) == 3:
        return shape, "volume", 1
    if len(shape) == 4 and shape[2] == 1:
        return shape[:3], "channels", shape[3]
    if len(shape) == 4:
        return shape[:3], "series", 1
    if len(shape) == 5 and shape[3] == 1:
        return shape[:3], "channels", shape[4]
    raise VolumeError(
        f"{path} has shape {image.shape}: {len(shape)}D data is not supported. Use a 3D volume, a 4D time "
        "series (first volume is used), or (X, Y, 1, C) / (X, Y, Z, 1, C) for channels."
    )


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry of a NIfTI file from its header only (no voxel data is read)."""
    image = _open_nifti(path)
    spatial, _kind, _channels = _layout(image, path)
    return Geometry.from_image(image, spatial)


def _read_voxels(image: nib.Nifti1Image, path: str | os.PathLike, kind: str, spatial: tuple) -> np.ndarray:
    """Scaled voxel data as float32 ``(C, i, j, k)`` (scl_slope/scl_inter applied)."""
    try:
        index = (slice(None),) * 3 + (0,) * (len(image.shape) - 3) if kind == "series" else ()
        data = np.asarray(image.dataobj[index] if index else image.dataobj, dtype=np.float32)
    except (OSError, EOFError, zlib.error, ValueError, gzip.BadGzipFile) as exc:
        raise VolumeError(
            f"The voxel data of {path} cannot be read ({type(exc).__name__}: {exc}); the file is probably "
            "truncated or corrupt. Copy or export it again."
        ) from exc
    if kind == "channels":
        return np.moveaxis(data.reshape(spatial + (-1,)), -1, 0)
    return data.reshape((1,) + spatial)


def _replace_non_finite(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    finite = np.isfinite(data)
    if not finite.all():
        count = int(data.size - np.count_nonzero(finite))
        warnings.warn(f"{path}: {count} NaN/Inf voxels were replaced by 0.", VolumeWarning, stacklevel=3)
        data[~finite] = 0.0
    return data


def load_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read one NIfTI file as a :class:`Volume` in the LPS ``(Z, Y, X)`` display orientation.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file (layouts in the module docstring).
    name
        Channel name; by default the modality recognised in the file name, else the file's stem.
        Files with C > 1 channels get names ``name_0 .. name_{C-1}``.

    Returns
    -------
    Volume
        float32 intensities with scaling applied; NaN/Inf replaced by 0 (with a :class:`VolumeWarning`).
    """
    image = _open_nifti(path)
    spatial, kind, n_channels = _layout(image, path)
    if kind == "series":
        warnings.warn(
            f"{path} is a time series of {image.shape[3]} volumes; only the first volume is used.",
            VolumeWarning,
            stacklevel=2,
        )
    geometry = Geometry.from_image(image, spatial)
    data = _replace_non_finite(_read_voxels(image, path, kind, spatial), path)
    base = name or canonical_modality(path) or nifti_stem(path)
    channels = (base,) if n_channels == 1 else tuple(f"{base}_{c}" for c in range(n_channels))
    return Volume(geometry.to_display(data), geometry, channels, (str(path),) * n_channels)


def _integer_labels(data: np.ndarray, what: str) -> np.ndarray:
    """Check labels are finite integers and cast them to the smallest fitting integer dtype."""
    data = np.asarray(data)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise VolumeError(f"{what} contains NaN or Inf; labels must be finite integers.")
        if not np.array_equal(data, np.round(data)):
            raise VolumeError(f"{what} has non-integer values; labels must be integers (0 = background).")
    elif data.dtype.kind not in "iu":
        raise VolumeError(f"{what} has dtype {data.dtype}; labels must be integers.")
    if data.size == 0:
        raise VolumeError(f"{what} is empty.")
    low, high = data.min(), data.max()
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.astype(dtype, copy=False)
    raise VolumeError(f"{what} has label values outside the int32 range ({low}..{high}).")


def load_labels(path: str | os.PathLike, geometry: Geometry) -> np.ndarray:
    """Read a label map as a ``(Z, Y, X)`` integer array on ``geometry``'s display grid.

    The file must describe the same grid (shape and world affine); it may be stored in another axis
    order. Values must be finite integers (scaling is applied first). The dtype is uint8 when the values
    fit 0..255, else int16 or int32.
    """
    image = _open_nifti(path)
    spatial, kind, _channels = _layout(image, path)
    if kind != "volume":
        raise VolumeError(f"{path} has shape {image.shape}; a label map must be a single 3D volume.")
    own = Geometry.from_image(image, spatial)
    if not own.matches(geometry):
        raise VolumeError(
            f"The label map {path} is not on the image grid: labels {own.describe()}; image "
            f"{geometry.describe()}. Use labels made for this image (or resample them onto it)."
        )
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(f"The voxel data of {path} cannot be read ({exc}); the file may be truncated.") from exc
    labels = _integer_labels(data.reshape(spatial), f"Label map {path}")
    return own.to_display(labels)


def _atomic_save(image: nib.Nifti1Image, path: Path) -> None:
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp_name)
        os.chmod(tmp_name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_labels(labels_zyx: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write a display-grid label map as NIfTI on the source grid of ``geometry``, atomically.

    The file gets the source's spatial shape, affine, qform/sform codes and units; scaling is reset
    (slope 1, intercept 0) and the dtype is the smallest integer type holding the labels. The data go to
    a temporary file in the destination folder, which then replaces ``path``, so a failure never leaves a
    partial file.

    Parameters
    ----------
    labels_zyx
        Integer (or bool / integer-valued float) array of shape ``geometry.display_shape``.
    geometry
        Grid of the image the labels were drawn on.
    path
        Destination ending in ``.nii.gz`` or ``.nii``.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise VolumeError(f"Cannot save labels to {path}: the file name must end in .nii.gz or .nii.")
    if not path.parent.is_dir():
        raise VolumeError(f"Cannot save labels to {path}: the folder {path.parent} does not exist.")
    labels_zyx = np.asarray(labels_zyx)
    if labels_zyx.shape != geometry.display_shape:
        raise VolumeError(
            f"The labels have shape {labels_zyx.shape} but the image grid they are saved against has "
            f"display shape {geometry.display_shape} (source shape {geometry.source_shape}); save labels "
            "drawn on this image."
        )
    labels = geometry.to_source(_integer_labels(labels_zyx, "The label array"))
    header = geometry.source_header.copy()
    header.set_data_dtype(labels.dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(labels, None, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    image.header.set_intent("none")
    try:
        _atomic_save(image, path)
    except OSError as exc:
        raise VolumeError(f"Cannot write {path} ({exc}); check the folder is writable and has space.") from exc
    return path


def case_files(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Split a case folder or a ``{name: path}`` mapping into modality files and label files.

    Returns
    -------
    (dict, dict)
        ``{modality: path}`` (canonical names, or the stem of unrecognised names) and
        ``{label name: path}``.
    """
    modalities: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    if isinstance(source, Mapping):
        where = "the given mapping"
        entries = [(str(key), Path(p)) for key, p in source.items()]
    else:
        folder = Path(source)
        where = str(folder)
        if not folder.is_dir():
            raise VolumeError(f"Case folder not found: {folder}. Give a folder of NIfTI files.")
        entries = [(nifti_stem(p), p) for p in sorted(folder.iterdir()) if p.is_file() and is_nifti_path(p)]
        if not entries:
            raise VolumeError(f"{folder} contains no .nii or .nii.gz files.")
    for key, path in entries:
        if is_label_name(key):
            target, name = labels, nifti_stem(key)
        else:
            target, name = modalities, canonical_modality(key) or nifti_stem(key)
        if name in target:
            raise VolumeError(
                f"Both {target[name].name} and {path.name} in {where} are read as {name!r}; keep one of "
                "them or rename it (recognised names are listed in the user guide)."
            )
        target[name] = path
    if not modalities:
        raise VolumeError(f"{where} has label files ({', '.join(labels)}) but no image file.")
    return modalities, labels


def load_case(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
) -> tuple[Volume, dict[str, np.ndarray]]:
    """Read a case: modality files as one multi-channel :class:`Volume` plus its label maps.

    Parameters
    ----------
    source
        A folder of NIfTI files, or a mapping ``{modality: path}``. Names containing seg, label or mask
        are label maps; others are modalities recognised by :data:`MODALITY_ALIASES` (unrecognised
        names keep their file stem). Channels come in :data:`CANONICAL_MODALITIES` order, others after.

    Returns
    -------
    (Volume, dict)
        The volume (geometry of the first channel's file) and ``{label name: (Z, Y, X) int array}``.
    """
    modalities, label_paths = case_files(source)
    where = "the given mapping" if isinstance(source, Mapping) else str(source)
    order = [m for m in CANONICAL_MODALITIES if m in modalities]
    order += sorted(m for m in modalities if m not in CANONICAL_MODALITIES)
    volumes = [load_volume(modalities[m], name=m) for m in order]
    reference = volumes[0].geometry
    if not all(v.geometry.matches(reference) for v in volumes[1:]):
        grids = "; ".join(f"{modalities[m].name}: {v.geometry.describe()}" for m, v in zip(order, volumes, strict=True))
        raise VolumeError(
            f"The modality files of {where} are not on one voxel grid ({grids}). Register and resample "
            "them to a common grid before opening them as one case."
        )
    volume = Volume(
        np.concatenate([v.data for v in volumes]),
        reference,
        tuple(c for v in volumes for c in v.channels),
        tuple(p for v in volumes for p in v.source_paths),
    )
    labels = {name: load_labels(p, reference) for name, p in label_paths.items()}
    return volume, labels
