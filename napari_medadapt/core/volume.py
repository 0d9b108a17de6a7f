"""NIfTI volumes with exact geometry: file and modality names, reading intensity volumes.

Every volume is reoriented at load to LPS ``(Z, Y, X)`` (see :mod:`.geometry`). Label maps are read and
written by :mod:`.labelmaps`, case folders by :mod:`.cases`. A damaged header (negative or huge sizes, an
unknown data type, a non-finite affine) is reported with the file's name and the fix, before any voxel is read.

File layouts (``.nii``/``.nii.gz``, NIfTI-1 or -2; trailing singleton axes beyond the third dropped):
``(X, Y)`` one slice; ``(X, Y, Z)``; ``(X, Y, 1, C)`` and ``(X, Y, Z, 1, C)`` (NIfTI vector convention)
with C channels; ``(X, Y, Z, T)`` with Z > 1 is a time series whose first volume is used (with a
:class:`VolumeWarning`). Anything else (5D with dim 4 > 1, 6D+, zero-size axes, complex or RGB voxels)
raises :class:`~napari_medadapt.core.errors.VolumeError`.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from .errors import VolumeError
from .files import OutputError, atomic_write, check_output_path
from .geometry import Geometry

__all__ = [
    "CANONICAL_MODALITIES", "MODALITY_ALIASES", "Geometry", "Volume", "VolumeWarning", "canonical_modality",
    "is_nifti_path", "load_volume", "nifti_stem", "read_geometry",
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
#: Channel order of :func:`~napari_medadapt.core.cases.load_case`; unrecognised image names follow, sorted.
CANONICAL_MODALITIES: tuple[str, ...] = tuple(MODALITY_ALIASES)

_ALIAS_TO_MODALITY = {alias: mod for mod, aliases in MODALITY_ALIASES.items() for alias in aliases}
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


def name_tokens(name: str | os.PathLike) -> list[str]:
    """Lower-case alphanumeric tokens of a file or layer name (``BraTS20_001_t1ce.nii.gz`` -> brats20, 001, t1ce)."""
    return [t for t in re.split(r"[^a-z0-9]+", nifti_stem(name).lower()) if t]


def canonical_modality(name: str | os.PathLike) -> str | None:
    """Canonical modality of a file or layer name, or ``None`` when none is recognised.

    The name is split into lower-case alphanumeric tokens (``BraTS20_001_t1ce.nii.gz`` ->
    ``brats20, 001, t1ce``). Pairs of adjacent tokens are tried first (``T2-FLAIR`` -> ``t2flair`` ->
    flair, ``t1_gd`` -> t1c), then single tokens; the last match wins (modality suffix convention).
    """
    tokens = name_tokens(name)
    pairs = [a + b for a, b in zip(tokens, tokens[1:], strict=False)]
    for candidates in (pairs, tokens):
        matches = [_ALIAS_TO_MODALITY[t] for t in candidates if t in _ALIAS_TO_MODALITY]
        if matches:
            return matches[-1]
    return None


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


_DAMAGED = "the header is damaged or the file truncated; export it again from the scanner or PACS."


def open_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI file (header only) after checking its name and that its header is usable.

    Raises
    ------
    VolumeError
        Missing file, folder, other format, damaged header, or more voxel data declared than the file holds
        (or memory can take), each naming the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"File not found: {path}. Check the path.")
    if path.is_dir():
        raise VolumeError(f"{path} is a folder; open it as a case folder (load_case) or pick a .nii/.nii.gz file.")
    if not is_nifti_path(path):
        raise VolumeError(f"{path} is not a NIfTI file name; napari-medadapt reads .nii and .nii.gz files.")
    try:
        image = nib.load(str(path))
    except HeaderDataError as exc:
        raise VolumeError(f"{path} has an unusable NIfTI header ({exc}): {_DAMAGED}") from exc
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(
            f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc}). The file may be truncated, "
            "corrupt, or another format with a NIfTI name; export it again as NIfTI."
        ) from exc
    if not isinstance(image, nib.Nifti1Image):
        raise VolumeError(f"{path} is a {type(image).__name__}, not a single-file NIfTI image.")
    _check_data_size(image, path)
    return image


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_data_size(image: nib.Nifti1Image, path: Path) -> None:
    """Refuse a header that declares more voxel data than the file holds or than memory can take."""
    shape = tuple(int(s) for s in image.shape)
    if any(s < 0 for s in shape):
        raise VolumeError(f"{path} declares a negative size (shape {shape}): {_DAMAGED}")
    voxels = math.prod(shape)
    stored = voxels * image.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):  # compressed sizes are only known after decompressing
        held = path.stat().st_size - int(image.header.get_data_offset())
        if stored > held:
            raise VolumeError(
                f"{path} declares {shape} voxels of {image.get_data_dtype()} ({_size(stored)}) but holds only "
                f"{_size(max(held, 0))} of voxel data: {_DAMAGED}"
            )
    memory = _physical_memory()
    needed = 2 * 4 * voxels  # float32 data and its reoriented copy
    if memory is not None and needed > memory:
        raise VolumeError(
            f"{path} declares {shape} voxels: reading it needs {_size(needed)}, more than this machine's "
            f"{_size(memory)} of memory. If the scan is not that large, {_DAMAGED}"
        )


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""


def file_geometry(image: nib.Nifti1Image, spatial: tuple[int, int, int], path: str | os.PathLike) -> Geometry:
    """The file's :class:`Geometry`; errors name the file and the fix."""
    try:
        return Geometry.from_image(image, spatial)
    except VolumeError as exc:
        raise VolumeError(f"{path}: {exc} Fix the header (qform/sform, pixdim) or export the file again.") from exc


def file_layout(image: nib.Nifti1Image, path: str | os.PathLike) -> tuple[tuple[int, int, int], str, int]:
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
    if len(shape) > 5:
        raise VolumeError(
            f"{path} declares {len(shape)} dimensions (dim[0] = {int(image.header['dim'][0])}, shape "
            f"{image.shape}): {len(shape)}D data is not supported (scans have 3, or 4 for a series). If this "
            "is a scan, its header's dim field is damaged: export it again from the scanner or PACS."
        )
    raise VolumeError(
        f"{path} has shape {image.shape}: 5D data with more than one volume per channel is not supported. Use a "
        "3D volume, a 4D time series (first volume is used), or (X, Y, 1, C) / (X, Y, Z, 1, C) for channels."
    )


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry of a NIfTI file from its header only (no voxel data is read)."""
    image = open_nifti(path)
    spatial, _kind, _channels = file_layout(image, path)
    return file_geometry(image, spatial, path)


def _read_voxels(image: nib.Nifti1Image, path: str | os.PathLike, kind: str, spatial: tuple) -> np.ndarray:
    """Scaled voxel data as float32 ``(C, i, j, k)`` (scl_slope/scl_inter applied)."""
    try:
        index = (slice(None),) * 3 + (0,) * (len(image.shape) - 3) if kind == "series" else ()
        data = np.asarray(image.dataobj[index] if index else image.dataobj, dtype=np.float32)
    except MemoryError as exc:
        raise VolumeError(
            f"{path} ({image.shape}) does not fit in the free memory; close other programs or crop the scan."
        ) from exc
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
    image = open_nifti(path)
    spatial, kind, n_channels = file_layout(image, path)
    if kind == "series":
        warnings.warn(
            f"{path} is a time series of {image.shape[3]} volumes; only the first volume is used.",
            VolumeWarning,
            stacklevel=2,
        )
    geometry = file_geometry(image, spatial, path)
    data = _replace_non_finite(_read_voxels(image, path, kind, spatial), path)
    base = name or canonical_modality(path) or nifti_stem(path)
    channels = (base,) if n_channels == 1 else tuple(f"{base}_{c}" for c in range(n_channels))
    return Volume(geometry.to_display(data), geometry, channels, (str(path),) * n_channels)


def source_grid_image(data_ijk: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """A NIfTI image of source-ordered ``data_ijk`` with ``geometry``'s header (shape, affine, qform/sform codes,
    units), its dtype, and scaling reset."""
    header = geometry.source_header.copy()
    header.set_data_dtype(data_ijk.dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data_ijk, None, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    return image


def write_nifti(image: nib.Nifti1Image, path: Path) -> Path:
    """Save ``image`` to a checked ``path`` atomically (a hidden temporary file, then one rename)."""
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    try:
        atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=suffix)
    except OSError as exc:
        raise OutputError(f"Cannot write {path} ({exc.strerror or exc}); check the folder has space.") from exc
    return path


def save_image(
    array_zyx: np.ndarray, geometry: Geometry, path: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()
) -> Path:
    """Write a display-grid image (float32) as NIfTI on the source grid of ``geometry``, atomically.

    The file gets the source's spatial shape, affine, qform/sform codes and units; scaling is reset. ``inputs``
    (the files it was computed from) are never replaced (:func:`~napari_medadapt.core.files.check_output_path`).
    """
    if not is_nifti_path(path):
        raise VolumeError(f"Cannot save an image to {path}: the file name must end in .nii.gz or .nii.")
    path = check_output_path(path, inputs=inputs, what="Image file")
    array_zyx = np.asarray(array_zyx, dtype=np.float32)
    if array_zyx.shape != geometry.display_shape:
        raise VolumeError(f"The image has shape {array_zyx.shape}, its grid {geometry.display_shape}.")
    return write_nifti(source_grid_image(geometry.to_source(array_zyx), geometry), path)
