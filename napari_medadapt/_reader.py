"""napari reader: NIfTI files (``.nii``, ``.nii.gz``) and case folders of NIfTI files.

Each modality becomes an Image layer (``scale`` = voxel spacing in mm, gray colormap, contrast limits from
robust percentiles or, for CT, the soft-tissue window); each label map becomes a Labels layer. Every layer
carries ``metadata["medadapt"] = {"geometry": Geometry, "modality": str, "source_path": str}`` so labels
drawn on it can be saved back on the exact source grid. This module never imports napari or torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.core.intensity import CT_WINDOWS, percentile_range
from napari_medadapt.core.volume import (
    Geometry,
    Volume,
    case_files,
    is_label_name,
    is_nifti_path,
    load_case,
    load_labels,
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


def image_layer_data(volume: Volume) -> list[LayerData]:
    """One Image layer per channel of ``volume`` (only the first channel is visible)."""
    layers = []
    for index, (name, path) in enumerate(zip(volume.channels, volume.source_paths, strict=True)):
        data = volume.data[index]
        limits = CT_WINDOWS["abdomen"] if name == "ct" else percentile_range(data, 0.5, 99.5)
        kwargs = {
            "name": name,
            "scale": volume.geometry.spacing,
            "colormap": "gray",
            "contrast_limits": limits,
            "visible": index == 0,
            "metadata": medadapt_metadata(volume.geometry, name, path),
        }
        layers.append((data, kwargs, "image"))
    return layers


def labels_layer_data(labels: np.ndarray, geometry: Geometry, name: str, source_path: str = "") -> LayerData:
    """A Labels layer tuple for a ``(Z, Y, X)`` label map on ``geometry``."""
    kwargs = {
        "name": name,
        "scale": geometry.spacing,
        "opacity": 0.6,
        "metadata": medadapt_metadata(geometry, LABELS_MODALITY, source_path),
    }
    return labels, kwargs, "labels"


def read_case_layers(folder: str | os.PathLike) -> list[LayerData]:
    """Image layers for every modality of a case folder, then Labels layers for its label maps."""
    volume, labels = load_case(folder)
    _modalities, label_paths = case_files(folder)
    layers = image_layer_data(volume)
    for name, array in labels.items():
        layers.append(labels_layer_data(array, volume.geometry, name, str(label_paths[name])))
    return layers


def read_file_layers(path: str | os.PathLike) -> list[LayerData]:
    """Layers of one NIfTI file: a Labels layer for label-named files, Image layers otherwise."""
    if is_label_name(path):
        geometry = read_geometry(path)
        return [labels_layer_data(load_labels(path, geometry), geometry, nifti_stem(path), str(path))]
    return image_layer_data(load_volume(path))


def read_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read a NIfTI file, a case folder, or a list of them into napari layer-data tuples."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    layers: list[LayerData] = []
    for path in paths:
        layers.extend(read_case_layers(path) if Path(path).is_dir() else read_file_layers(path))
    return layers


def _readable(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_dir():
        return any(p.is_file() and is_nifti_path(p) for p in path.iterdir())
    return is_nifti_path(path)


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_paths` when every path is a NIfTI file or a folder holding NIfTI files."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(_readable(p) for p in paths):
        return read_paths
    return None
