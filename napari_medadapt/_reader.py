"""napari reader: NIfTI files (``.nii``, ``.nii.gz``), case folders of NIfTI files, and DICOM (folders, ``.dcm`` files,
zips, DICOM SEG; :mod:`napari_medadapt._dicom_layers`).

Each modality becomes an Image layer (``scale`` = voxel spacing in mm, gray colormap, contrast limits from
robust percentiles or, for CT, the soft-tissue window); each label map becomes a Labels layer. Every layer
carries ``metadata["medadapt"] = {"geometry": Geometry, "modality": str, "source_path": str}`` so labels
drawn on it can be saved back on the exact source grid. Scans on different grids (as the scanner exported them)
are placed in scanner space, so they overlay before they are prepared. This module never imports torch, nor napari
unless napari is already running.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.core.cases import case_files, load_case, nifti_files, warn_skipped
from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.intensity import display_window
from napari_medadapt.core.labelmaps import is_label_file, label_class_names, load_labels
from napari_medadapt.core.volume import (
    Geometry,
    Volume,
    VolumeWarning,
    is_nifti_path,
    load_volume,
    nifti_stem,
    read_geometry,
)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

#: ``metadata["medadapt"]["modality"]`` of label layers.
LABELS_MODALITY = "labels"


def medadapt_metadata(geometry: Geometry, modality: str, source_path: str | os.PathLike = "") -> dict[str, Any]:
    """The ``layer.metadata`` dict napari-medadapt layers carry."""
    return {"medadapt": {"geometry": geometry, "modality": modality, "source_path": str(source_path)}}


def image_layer_data(volume: Volume, geometries: Sequence[Geometry] | None = None) -> list[LayerData]:
    """One Image layer per channel of ``volume`` (only the first channel is visible).

    ``geometries`` gives each channel the exact grid of its own file (members of a case may differ within
    the grid tolerance, and in qform/sform codes); by default every channel carries ``volume.geometry``.
    """
    layers = []
    geometries = list(geometries) if geometries is not None else [volume.geometry] * len(volume.channels)
    for index, (name, path) in enumerate(zip(volume.channels, volume.source_paths, strict=True)):
        data = volume.data[index]
        limits = display_window(name, data)
        kwargs = {
            "name": name,
            "scale": geometries[index].spacing,
            "colormap": "gray",
            "contrast_limits": limits,
            "visible": index == 0,
            "metadata": medadapt_metadata(geometries[index], name, path),
        }
        layers.append((data, kwargs, "image"))
    return layers


def class_features(class_names: Mapping[int, str]) -> dict[str, list[Any]]:
    """A Labels layer's ``features`` table naming its classes: hovering a voxel shows ``class: edema``."""
    ids = sorted(int(i) for i in class_names)
    return {"index": ids, "class": [str(class_names[i]) for i in ids]}


def labels_layer_data(
    labels: np.ndarray,
    geometry: Geometry,
    name: str,
    source_path: str = "",
    class_names: Mapping[int, str] | None = None,
) -> LayerData:
    """A Labels layer tuple for a ``(Z, Y, X)`` label map on ``geometry`` (class names shown on hover)."""
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": geometry.spacing,
        "opacity": 0.6,
        "metadata": medadapt_metadata(geometry, LABELS_MODALITY, source_path),
    }
    if class_names:
        kwargs["features"] = class_features(class_names)
    return labels, kwargs, "labels"


def read_case_layers(folder: str | os.PathLike) -> list[LayerData]:
    """Image layers for every modality of a case folder, then Labels layers for its label maps.

    When the modality files are not on one grid (raw scanner exports), each file becomes a layer on its own grid
    (placed in scanner space by :func:`read_paths`). A file that cannot be read is left out with a
    :class:`~napari_medadapt.core.volume.VolumeWarning` naming it; the rest of the case opens.
    """
    modalities, label_paths = case_files(folder)
    geometries = {}
    for modality, path in modalities.items():
        try:
            geometries[modality] = read_geometry(path)
        except VolumeError as err:
            if len(geometries) + 1 == len(modalities) and not geometries:
                raise
            warn_skipped(path, err)
    first = next(iter(geometries.values()))
    if not all(g.matches(first) for g in geometries.values()):
        layers = []
        for modality in geometries:
            layers.extend(_or_skip(lambda m=modality: image_layer_data(load_volume(modalities[m], name=m)),
                                   modalities[modality]))  # fmt: skip
        if not layers:
            raise VolumeError(f"No scan of {Path(folder).name} could be read; the warnings name each file and why.")
        for index, (_data, kwargs, _kind) in enumerate(layers):
            kwargs["visible"] = index == 0  # one sequence shown at a time, as for a case on one grid
        return layers + [layer for p in label_paths.values() for layer in _or_skip(lambda p=p: read_file_layers(p), p)]
    volume, labels = load_case({m: modalities[m] for m in geometries} | label_paths, skip_unreadable=True)
    # each layer carries its own file's grid, so labels saved from it get that file's affine and codes
    layers = image_layer_data(volume, [read_geometry(path) for path in volume.source_paths])
    for name, array in labels.items():
        path = label_paths[name]
        layers.append(labels_layer_data(array, read_geometry(path), name, str(path), label_class_names(path)))
    return layers


def _or_skip(read: Callable[[], list[LayerData]], path: str | os.PathLike) -> list[LayerData]:
    """``read()``, or no layer and a warning naming ``path`` and why (one damaged file never blocks a case)."""
    try:
        return read()
    except VolumeError as err:
        warn_skipped(path, err)
        return []


def read_file_layers(path: str | os.PathLike) -> list[LayerData]:
    """Layers of one NIfTI file: a Labels layer for a label map (by header or name), Image layers otherwise."""
    if is_label_file(path):
        geometry = read_geometry(path)
        labels = load_labels(path, geometry)
        return [labels_layer_data(labels, geometry, nifti_stem(path), str(path), label_class_names(path))]
    return image_layer_data(load_volume(path))


def _in_plane(placement: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """``placement`` without the terms that tilt the slices out of their plane (napari slices a volume only along
    its axes: it would show them unapplied, with a warning), keeping the volume's centre where the scanner put it,
    and the tilt removed in degrees."""
    full = np.asarray(placement, dtype=np.float64)
    affine = full.copy()
    slice_axis = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    tilt = float(np.degrees(np.arccos(np.clip(abs(slice_axis[0]), 0.0, 1.0))))
    affine[0, 1:3] = 0.0
    affine[1:3, 0] = 0.0
    affine[0, 0] = np.sign(affine[0, 0]) * np.linalg.norm(full[:3, 0])
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] += (full[:3, :3] - affine[:3, :3]) @ centre  # the centre voxel lands exactly; the rest is tilted
    return affine, tilt


def place_in_scanner_space(layers: list[LayerData], where: str, reference: Geometry | None = None) -> list[LayerData]:
    """Overlay layers on different grids as the scanner placed them: the ``reference`` grid (default: the first
    image layer's) is shown with its scale, every layer on another grid gets the affine onto it
    (:meth:`~napari_medadapt.core.geometry.Geometry.placement_on`, in the slice plane: a tilt between the slice
    planes is named in the warning, not shown). A :class:`~napari_medadapt.core.volume.VolumeWarning` says to
    prepare such scans before segmenting."""
    grids = [kwargs["metadata"]["medadapt"]["geometry"] for _data, kwargs, _kind in layers]
    images = [grid for grid, (_d, _k, kind) in zip(grids, layers, strict=True) if kind == "image"]
    what = f"{where} is not on one grid with the scans already open" if reference is not None else (
        f"The sequences of {where} are not on one grid")  # fmt: skip
    reference = reference or (images[0] if images else None)
    if reference is None or all(grid.matches(reference) for grid in grids):
        return layers
    tilts = []
    for grid, (_data, kwargs, _kind) in zip(grids, layers, strict=True):
        if not grid.matches(reference):
            kwargs.pop("scale", None)
            kwargs["affine"], tilt = _in_plane(grid.placement_on(reference), grid.display_shape)
            tilts.append(tilt)
    described = "; ".join(
        f"{kwargs['name']}: {grid.summary()}" for grid, (_d, kwargs, kind) in zip(grids, layers, strict=True)
        if kind == "image"
    )
    tilted = f" Their slices are tilted by up to {max(tilts):.0f} degrees, which the view does not show." if max(
        tilts) >= 1.0 else ""  # fmt: skip
    warnings.warn(
        f"{what} (scans as exported: {described}): each sequence "
        f"is a layer of its own, placed where the scanner put it.{tilted} Co-register them with Plugins > MedAdapt "
        "> Prepare scans before segmenting.",
        VolumeWarning,
        stacklevel=3,
    )
    return layers


def read_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read a NIfTI file, a case folder, or a list of them into napari layer-data tuples, each on its own grid
    (:func:`read_into_viewer` places them in scanner space)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    layers: list[LayerData] = []
    for path in paths:
        if _is_dicom(path):
            from napari_medadapt._dicom_layers import read_dicom_layers

            layers.extend(read_dicom_layers(path, image_layer_data, labels_layer_data))
            continue
        layers.extend(read_case_layers(path) if Path(path).is_dir() else read_file_layers(path))
    return layers


def _viewer_grid() -> Geometry | None:
    """The grid the current napari viewer shows its scans on (its first image layer opened by us and not placed by
    an affine), so files opened one after another overlay in scanner space; ``None`` outside napari."""
    if "napari" not in sys.modules:
        return None
    import napari
    from napari.layers import Image

    viewer = napari.current_viewer()
    for layer in getattr(viewer, "layers", ()):
        geometry = ((layer.metadata or {}).get("medadapt") or {}).get("geometry")
        if isinstance(layer, Image) and isinstance(geometry, Geometry) and np.allclose(
            layer.affine.affine_matrix, np.eye(layer.ndim + 1)
        ):
            return geometry
    return None


def read_into_viewer(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """:func:`read_paths` for napari: layers on another grid than the scans already open are placed on them in
    scanner space, with the different-grid warning (napari opens several chosen files one call each)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    where = Path(paths[0]).name if len(paths) == 1 else "the opened files"
    return place_in_scanner_space(read_paths(paths), where, _viewer_grid())


def _holds_nifti(folder: Path) -> bool:
    return bool(nifti_files(folder))


def _is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM folder (without NIfTI files: those are case folders), ``.dcm`` file, DICOMDIR or zip of DICOM."""
    from napari_medadapt.core.dicom import is_dicom_source

    path = Path(path)
    return not is_nifti_path(path) and not (path.is_dir() and _holds_nifti(path)) and is_dicom_source(path)


def _readable(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_dir():  # a folder of case folders is taken too, to say which case folder to open
        return _holds_nifti(path) or any(p.is_dir() and _holds_nifti(p) for p in path.iterdir()) or _is_dicom(path)
    return is_nifti_path(path) or _is_dicom(path)


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_paths` when every path is a NIfTI file or a folder holding NIfTI files (directly,
    or in sub-folders: reading such a folder explains which case folder to open)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(_readable(p) for p in paths):
        return read_into_viewer
    return None
