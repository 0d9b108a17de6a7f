"""Case folders: the modality files of one patient (one multi-channel volume) plus their label maps.

A case is a folder of NIfTI files, or a mapping ``{name: path}``. Label maps are recognised by
:func:`~napari_medadapt.core.labelmaps.is_label_file` (header intent or name); other files are modalities
named by :data:`~napari_medadapt.core.volume.MODALITY_ALIASES` (unrecognised names keep their file stem).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import VolumeError
from .labelmaps import is_label_file, load_labels
from .volume import (
    CANONICAL_MODALITIES,
    Volume,
    VolumeWarning,
    canonical_modality,
    is_nifti_path,
    load_volume,
    nifti_stem,
)

__all__ = ["case_files", "load_case", "nifti_files", "warn_skipped"]


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of a folder, sorted; hidden files (``.x``, and macOS ``._x`` copies that USB drives
    carry beside every file) are not scans."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and is_nifti_path(p) and not p.name.startswith(".")]


def _no_files_message(folder: Path) -> str:
    nested = [p for p in sorted(folder.iterdir()) if p.is_dir() and nifti_files(p)]
    if nested:
        names = ", ".join(p.name for p in nested[:5]) + (" ..." if len(nested) > 5 else "")
        return (
            f"{folder} holds no .nii or .nii.gz files itself, but its sub-folder(s) {names} do. Open one of "
            "them: a case folder holds the files of one patient directly."
        )
    return f"{folder} contains no .nii or .nii.gz files."


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
        entries = [(nifti_stem(p), p) for p in nifti_files(folder)]
        if not entries:
            raise VolumeError(_no_files_message(folder))
    for key, path in entries:
        try:
            label = is_label_file(path)
        except VolumeError:  # unreadable: taken by its name; reading it says what is wrong (or skips it)
            label = False
        if label:
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


def _load_image(path: Path, name: str) -> Volume:
    """A modality file, or a DICOM series (folder, zip, ``.dcm``; ``FOLDER#SERIES``) with its notes as warnings."""
    from .dicom import is_dicom_source, load_dicom

    if not is_dicom_source(path):
        return load_volume(path, name=name)

    volume, notes = load_dicom(path, name=name)
    for note in notes:
        warnings.warn(note, VolumeWarning, stacklevel=3)
    return volume


def warn_skipped(path: str | os.PathLike, err: VolumeError) -> None:
    """The warning for a file of a case that cannot be read and is left out (the rest of the case opens)."""
    warnings.warn(f"{Path(path).name} was not opened ({err}) The rest of the case is opened.", VolumeWarning,
                  stacklevel=3)  # fmt: skip


def load_case(
    source: str | os.PathLike | Mapping[str, str | os.PathLike], *, skip_unreadable: bool = False,
) -> tuple[Volume, dict[str, np.ndarray]]:
    """Read a case: modality files as one multi-channel :class:`Volume` plus its label maps.

    Parameters
    ----------
    source
        A folder of NIfTI files, or a mapping ``{modality: path}`` (module docstring; a path may be a DICOM series:
        a folder, zip or ``.dcm`` file, ``FOLDER#SERIES`` to pick one). Channels come in
        :data:`~napari_medadapt.core.volume.CANONICAL_MODALITIES` order, others after.
    skip_unreadable
        A file that cannot be read (a damaged scan, a mask that is not a label map) is left out with a
        :class:`~napari_medadapt.core.volume.VolumeWarning` naming it, instead of refusing the whole case (as
        long as one image remains).

    Returns
    -------
    (Volume, dict)
        The volume (geometry of the first channel's file) and ``{label name: (Z, Y, X) int array}``.
    """
    modalities, label_paths = case_files(source)
    where = "the given mapping" if isinstance(source, Mapping) else str(source)
    order = [m for m in CANONICAL_MODALITIES if m in modalities]
    order += sorted(m for m in modalities if m not in CANONICAL_MODALITIES)
    volumes, loaded = [], []
    for index, modality in enumerate(order):
        try:
            volumes.append(_load_image(modalities[modality], modality))
            loaded.append(modality)
        except VolumeError as err:
            if not skip_unreadable or (index == len(order) - 1 and not volumes):
                raise
            warn_skipped(modalities[modality], err)
    order = loaded
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
    labels = {}
    for name, path in label_paths.items():
        try:
            labels[name] = load_labels(path, reference)
        except VolumeError as err:
            if not skip_unreadable:
                raise
            warn_skipped(path, err)
    return volume, labels
