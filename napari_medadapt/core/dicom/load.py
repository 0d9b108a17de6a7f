"""A DICOM series -> :class:`~napari_medadapt.core.volume.Volume` with its exact geometry.

Frames are ordered by their position along the slice normal (never by file name or InstanceNumber); the affine
comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing (LPS, turned into the RAS of NIfTI), so
:class:`~napari_medadapt.core.geometry.Geometry` and everything downstream work unchanged. Rescale slope and
intercept are applied. Several echoes or time points become separate volumes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import VolumeError
from ..geometry import Geometry
from ..volume import Volume, VolumeWarning, canonical_modality
from ._sources import Source, split_selection
from .series import Frame, SeriesInfo, choose_series, list_series

#: mm: two frames closer than this along the normal share a position.
POSITION_ATOL = 1e-3
#: Relative tolerance on the gaps between slices (more: missing slices or uneven spacing).
GAP_RTOL = 0.05
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomVolume:
    """One volume of a DICOM series: the volume, its series, its frames in slice order (k = 0, 1, ...)."""

    volume: Volume
    series: SeriesInfo
    frames: list[Frame]
    notes: list[str] = field(default_factory=list)
    label: str = ""


def _fail(series: SeriesInfo, message: str) -> VolumeError:
    return VolumeError(f"Series {series.summary()}: {message}")


def _stacks(series: SeriesInfo) -> dict[tuple[Any, ...], list[Frame]]:
    """The frames of each echo / time point, in echo then time order (numerically)."""
    stacks: dict[tuple[Any, ...], list[Frame]] = {}
    for frame in series.frames:
        key = tuple("" if v is None else str(v) for v in frame.stack)
        stacks.setdefault(key, []).append(frame)

    def order(key: tuple[str, ...]) -> tuple[tuple[float, str], ...]:
        return tuple((float(v), v) if v.replace(".", "", 1).lstrip("-").isdigit() else (float("inf"), v) for v in key)

    return {key: stacks[key] for key in sorted(stacks, key=order)}


def _check_frames(series: SeriesInfo, frames: list[Frame]) -> None:
    first = frames[0]
    for frame in frames:
        if frame.orientation is None or frame.position is None:
            missing = "ImageOrientationPatient" if frame.orientation is None else "ImagePositionPatient"
            raise _fail(series, f"{frame.name} has no {missing}, so its slices cannot be placed in the patient. "
                                "Export the series again with its full header (not anonymised to the point of "
                                "removing the geometry).")  # fmt: skip
        if frame.pixel_spacing is None:
            raise _fail(series, f"{frame.name} has no PixelSpacing; export the series again with its full header.")
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise _fail(series, f"{first.name} is {first.rows} x {first.columns} but {frame.name} is {frame.rows} x "
                                f"{frame.columns}: two acquisitions are mixed in one series. Export them as separate "
                                "series, or remove the files that do not belong.")  # fmt: skip
        if not np.allclose(frame.orientation, first.orientation, atol=1e-4):
            raise _fail(series, f"mixed slice orientations ({first.name}: {np.round(first.orientation, 4).tolist()}, "
                                f"{frame.name}: {np.round(frame.orientation, 4).tolist()}): two acquisitions are mixed "
                                "in one series. Export them as separate series, or remove the files that do not "
                                "belong.")  # fmt: skip
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise _fail(series, f"{first.name} and {frame.name} have different pixel spacings; two acquisitions are "
                                "mixed in one series. Remove the files that do not belong.")  # fmt: skip


def order_frames(series: SeriesInfo, frames: list[Frame]) -> tuple[list[Frame], np.ndarray, list[str]]:
    """Frames sorted along the slice normal, the LPS affine ``(i = column, j = row, k = slice) -> mm`` and notes.

    Raises
    ------
    VolumeError
        Missing geometry, mixed orientations or sizes, duplicated positions, missing slices (uneven gaps).
    """
    _check_frames(series, frames)
    orientation = frames[0].orientation
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    depth = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(depth, kind="stable")
    frames = [frames[i] for i in order]
    depth = depth[order]
    notes: list[str] = []
    gaps = np.diff(depth)
    for index in np.flatnonzero(gaps < POSITION_ATOL):
        raise _fail(series, f"{frames[index].name} and {frames[index + 1].name} are at the same position "
                            f"({np.round(frames[index].position, 3).tolist()} mm): duplicated slices. Remove the "
                            "duplicates, or export the series again.")  # fmt: skip
    spacing_rows, spacing_columns = frames[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * spacing_columns
    affine[:3, 1] = column_cosine * spacing_rows
    affine[:3, 3] = frames[0].position
    if len(frames) == 1:
        thickness = series.spacing_between or series.thickness or 1.0
        affine[:3, 2] = normal * thickness
        return frames, affine, notes
    step = float(np.median(gaps))
    uneven = np.abs(gaps - step) > GAP_RTOL * step + POSITION_ATOL
    if uneven.any():
        index = int(np.flatnonzero(uneven)[0])
        missing = int(round(gaps[index] / step)) - 1
        what = f"{missing} slice(s) seem to be missing" if missing >= 1 else "the slices are unevenly spaced"
        raise _fail(series, f"{what} between {frames[index].name} and {frames[index + 1].name} (gap "
                            f"{gaps[index]:.3g} mm, elsewhere {step:.3g} mm). Export the complete series again "
                            "from the PACS.")  # fmt: skip
    stack_step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    affine[:3, 2] = stack_step
    off_normal = np.linalg.norm(stack_step - (stack_step @ normal) * normal)
    if off_normal > 1e-3 * max(abs(step), 1e-6):
        tilt = float(np.degrees(np.arctan2(off_normal, abs(stack_step @ normal))))
        notes.append(f"Series {series.summary()} was acquired with a gantry tilt of {tilt:.1f} degrees: its voxels "
                     "are placed exactly (a sheared grid); the view shows the slices without the shear.")  # fmt: skip
    return frames, affine, notes


def _decode(source: Source) -> np.ndarray:
    """The stored pixel values of a file, ``(frames, rows, columns)``, with pydicom, else SimpleITK/GDCM."""
    import pydicom

    with source.open() as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(handle, force=True)
        except Exception as err:  # noqa: BLE001 - any parser failure is a damaged file
            raise VolumeError(f"{source.name} cannot be read ({type(err).__name__}: {err}); the file is truncated or "
                              "corrupt. Remove it, or export the series again.") from err  # fmt: skip
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise VolumeError(f"{source.name} holds no pixel data (a header without its image). Remove it, or export "
                          "the series again from the PACS.")  # fmt: skip
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, TypeError) as err:
        known = syntax is not None and syntax.is_transfer_syntax
        if isinstance(err, ValueError) and known and not syntax.is_compressed and "less than expected" in str(err):
            raise VolumeError(f"{source.name} is truncated: its pixel data is shorter than its header declares "
                              f"({err}). Export the series again.") from err  # fmt: skip
        array = _decode_gdcm(source)
        if array is None:
            name = getattr(syntax, "name", str(syntax))
            raise VolumeError(
                f"{source.name} uses the transfer syntax {name} ({syntax}), which neither pydicom nor GDCM can decode "
                "here. Export the series uncompressed (Explicit VR Little Endian) from the PACS, or install "
                "pylibjpeg[all] for JPEG-family compression."
            ) from err
        return array.reshape((-1,) + array.shape[-2:])
    return array.reshape((-1,) + array.shape[-2:])


class _Rescaled(np.ndarray):
    """Pixel values SimpleITK/GDCM decoded (it applies the rescale itself)."""


def _decode_gdcm(source: Source) -> np.ndarray | None:
    """GDCM (inside SimpleITK) decodes what pydicom's installed handlers cannot; ``None`` when it cannot either."""
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="medadapt-dicom-") as folder:
        path = source.path
        if not source.on_disk:  # a zip member: GDCM reads files only
            path = Path(folder) / "member.dcm"
            with source.open() as handle:
                path.write_bytes(handle.read())
        try:
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(str(path))
            array = sitk.GetArrayFromImage(reader.Execute())
        except RuntimeError:
            return None
    return array.view(_Rescaled)


def _pixels(frames: list[Frame], cache: dict[Source, np.ndarray]) -> np.ndarray:
    first = frames[0]
    stack = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for k, frame in enumerate(frames):
        if frame.source not in cache:
            cache[frame.source] = _decode(frame.source)
        raw = cache[frame.source]
        index = frame.frame or 0
        if raw.shape[1:] != (first.rows, first.columns) or index >= raw.shape[0]:
            raise VolumeError(f"{frame.name}: its pixel data ({raw.shape}) does not match its header ({first.rows} "
                              f"x {first.columns}); the file is damaged. Export the series again.")  # fmt: skip
        stack[k] = raw[index]
        if frame.frame is None:  # a single-frame file is used once: free its pixels now
            del cache[frame.source]
        if not isinstance(raw, _Rescaled) and (frame.slope != 1.0 or frame.intercept != 0.0):
            stack[k] *= np.float32(frame.slope)
            stack[k] += np.float32(frame.intercept)
    return stack


def geometry_from_affine(affine_lps: np.ndarray, shape_ijk: tuple[int, int, int]) -> Geometry:
    """A :class:`Geometry` (NIfTI-style RAS affine, scanner qform/sform) for an LPS voxel -> mm affine."""
    affine = _LPS_TO_RAS @ affine_lps
    header = nib.Nifti1Header()
    header.set_data_shape(shape_ijk)
    header.set_data_dtype(np.float32)
    header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return Geometry(affine, shape_ijk, header)


def _channel_name(series: SeriesInfo, name: str | None) -> str:
    if name:
        return name
    guess = canonical_modality(series.description) if series.description else None
    return guess or series.modality.lower() or "image"


def load_series(series: SeriesInfo, source_path: str | os.PathLike = "", name: str | None = None) -> list[DicomVolume]:
    """Every volume of an image series (one per echo / time point), with exact geometry.

    Parameters
    ----------
    series
        From :func:`~napari_medadapt.core.dicom.series.list_series`.
    source_path
        What the user gave (folder, file or zip): the volumes' ``source_paths``.
    name
        Channel name; default: the modality the description names (``flair``), else ``ct``/``mr``.
    """
    if series.kind != "image":
        raise VolumeError(f"Series {series.summary()} is not an image volume; choose an image series.")
    stacks = _stacks(series)
    cache: dict[Source, np.ndarray] = {}
    results = []
    base = _channel_name(series, name)
    for index, (key, frames) in enumerate(stacks.items()):
        frames, affine_lps, notes = order_frames(series, frames)
        if series.left_out:
            notes.append(f"Series {series.summary()}: {series.left_out} localiser or derived image(s) filed in it were "
                         "left out of the volume.")  # fmt: skip
        pixels = _pixels(frames, cache)  # (k, j = row, i = column)
        shape_ijk = (frames[0].columns, frames[0].rows, len(frames))
        geometry = geometry_from_affine(affine_lps, shape_ijk)
        data_ijk = pixels.transpose(2, 1, 0)  # a view: to_display copies only when the display order differs
        label = ""
        if len(stacks) > 1:
            echo, time = key
            label = f"echo {echo}" if echo and len({k[0] for k in stacks}) > 1 else f"time {time or index + 1}"
        channel = f"{base} {label}" if label else base
        volume = Volume(geometry.to_display(data_ijk[None]), geometry, (channel,), (str(source_path),))
        results.append(DicomVolume(volume, series, frames, notes, label))
    return results


def load_dicom(spec: str | os.PathLike, name: str | None = None, series: str | None = None) -> tuple[Volume, list[str]]:
    """One volume from a DICOM folder, file or zip (``FOLDER#SERIES`` chooses a series), and notes.

    The default series is the largest CT/MR one; a series of several echoes / time points gives its first, with
    a note.
    """
    path, selected = split_selection(spec)
    chosen, notes = choose_series(list_series(path), series or selected, where=str(path))
    if len(chosen) > 1:
        raise VolumeError(f"{spec}: {len(chosen)} series were chosen; one input takes one series. Give one.")
    volumes = load_series(chosen[0], path, name)
    for item in volumes:
        notes.extend(item.notes)
    if len(volumes) > 1:
        notes.append(f"Series {chosen[0].summary()} holds {len(volumes)} volumes ({', '.join(v.label for v in volumes)});"
                     f" the first ({volumes[0].label}) is used.")  # fmt: skip
    return volumes[0].volume, notes


def load_dicom_volume(spec: str | os.PathLike, name: str | None = None, series: str | None = None) -> Volume:
    """:func:`load_dicom` with its notes issued as :class:`~napari_medadapt.core.volume.VolumeWarning`."""
    volume, notes = load_dicom(spec, name, series)
    for note in notes:
        warnings.warn(note, VolumeWarning, stacklevel=2)
    return volume
