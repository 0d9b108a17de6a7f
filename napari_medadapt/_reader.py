"""napari reader: NIfTI files (``.nii``, ``.nii.gz``) and case folders of NIfTI files.

Each modality becomes an Image layer (``scale`` = voxel spacing in mm, gray colormap, contrast limits from
robust percentiles or, for CT, the soft-tissue window); each label map becomes a Labels layer. Every layer
carries ``metadata["medadapt"] = {"geometry": Geometry, "modality": str, "source_path": str}`` so labels
drawn on it can be saved back on the exact source grid. This module never imports napari or torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.core.cases import case_files, load_case, nifti_files
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
    and a :class:`~napari_medadapt.core.volume.VolumeWarning` says to prepare them (Prepare scans dock).
    """
    modalities, label_paths = case_files(folder)
    geometries = {m: read_geometry(p) for m, p in modalities.items()}
    first = next(iter(geometries.values()))
    if not all(g.matches(first) for g in geometries.values()):
        warnings.warn(
            f"The sequences of {Path(folder).name} are on different grids (scans as exported): each opens as a "
            "layer of its own. Co-register them with Plugins > MedAdapt > Prepare scans before segmenting.",
            VolumeWarning,
            stacklevel=2,
        )
        layers = [layer for m, p in modalities.items() for layer in image_layer_data(load_volume(p, name=m))]
        for index, (_data, kwargs, _kind) in enumerate(layers):
            kwargs["visible"] = index == 0  # one sequence shown at a time, as for a case on one grid
        return layers + [layer for p in label_paths.values() for layer in read_file_layers(p)]
    volume, labels = load_case(folder)
    # each layer carries its own file's grid, so labels saved from it get that file's affine and codes
    layers = image_layer_data(volume, [read_geometry(path) for path in volume.source_paths])
    for name, array in labels.items():
        path = label_paths[name]
        layers.append(labels_layer_data(array, read_geometry(path), name, str(path), label_class_names(path)))
    return layers


def read_file_layers(path: str | os.PathLike) -> list[LayerData]:
    """Layers of one NIfTI file: a Labels layer for a label map (by header or name), Image layers otherwise."""
    if is_label_file(path):
        geometry = read_geometry(path)
        labels = load_labels(path, geometry)
        return [labels_layer_data(labels, geometry, nifti_stem(path), str(path), label_class_names(path))]
    return image_layer_data(load_volume(path))


def read_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read a NIfTI file, a case folder, or a list of them into napari layer-data tuples."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    layers: list[LayerData] = []
    for path in paths:
        layers.extend(read_case_layers(path) if Path(path).is_dir() else read_file_layers(path))
    return layers


def _holds_nifti(folder: Path) -> bool:
    return bool(nifti_files(folder))


def _readable(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_dir():  # a folder of case folders is taken too, to say which case folder to open
        return _holds_nifti(path) or any(p.is_dir() and _holds_nifti(p) for p in path.iterdir())
    return is_nifti_path(path)


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_paths` when every path is a NIfTI file or a folder holding NIfTI files (directly,
    or in sub-folders: reading such a folder explains which case folder to open)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(_readable(p) for p in paths):
        return read_paths
    return None
