"""napari layers from DICOM: image series (a folder, nested folders, DICOMDIR, a ``.dcm`` file or a zip) and DICOM
SEG files (a Labels layer with its segment names).

Every layer carries ``metadata["medadapt"]`` as the NIfTI layers do (so the docks, the writer and the CLI work
unchanged) plus ``"dicom"``: the source path, the SeriesInstanceUID, the series number and the patient's name and ID
(shown in the viewer, never logged). When a folder holds several image series, :func:`choose_for_viewer` asks which
to open in a dialog (inside napari), else opens the largest CT/MR series with a note. This module imports no Qt at
import time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_medadapt.core.volume import VolumeWarning


def _dicom_metadata(series: Any, source: str, label: str = "") -> dict[str, Any]:
    return {
        "source": str(source),
        "series_uid": series.uid,
        "series_number": series.number,
        "series_description": series.description,
        "modality": series.modality,
        "volume": label,
        "patient": dict(series.patient),
    }


def choose_for_viewer(series: list[Any], where: str) -> tuple[list[Any], list[str]]:
    """The series to open: the user's choice in a dialog when napari runs and several image series are there, else
    the default of :func:`~napari_medadapt.core.dicom.choose_series` (with its note)."""
    from napari_medadapt.core.dicom import choose_series

    images = [s for s in series if s.kind == "image"]
    default, notes = choose_series(series, None, where=where)
    if len(images) < 2:
        return default, notes
    from napari_medadapt._series_dialog import ask_series

    chosen = ask_series(images, default)
    if chosen is None:  # no window (headless) or cancelled: the default, with its note
        return default, notes
    return list(chosen), [n for n in notes if "was skipped" in n]


def read_dicom_layers(
    path: str | os.PathLike, image_layer_data: Callable[..., list[Any]], labels_layer_data: Callable[..., Any]
) -> list[tuple[Any, dict[str, Any], str]]:
    """Layers of a DICOM source: every chosen image series (one layer per echo / time point), then the DICOM SEGs
    found with them (on their exact grid), or the SEG itself when ``path`` is one. The reader passes its layer
    builders (``image_layer_data``, ``labels_layer_data``), so both make the same layers."""
    from napari_medadapt.core.dicom import list_series, load_series, split_selection
    from napari_medadapt.core.dicom.seg import read_seg
    from napari_medadapt.core.errors import VolumeError

    path, selection = split_selection(path)
    if Path(path).is_file() and _is_seg(path):
        return [_seg_layer(path, labels_layer_data)]
    series = list_series(path)
    if selection:
        from napari_medadapt.core.dicom import choose_series

        chosen, notes = choose_series(series, selection, where=str(path))
    else:
        chosen, notes = choose_for_viewer(series, str(path))
    layers = []
    for info in chosen:
        for item in load_series(info, path):
            notes.extend(item.notes)
            for data, kwargs, kind in image_layer_data(item.volume):
                if len(chosen) > 1:  # several series: the layer names say which
                    kwargs["name"] = f"{kwargs['name']} #{info.number}"
                kwargs["visible"] = not layers
                kwargs["metadata"]["medadapt"]["dicom"] = _dicom_metadata(info, path, item.label)
                layers.append((data, kwargs, kind))
    for seg in [s for s in series if s.kind == "seg"]:
        for source in seg.datasets:
            if source.member is not None:
                continue
            for info in chosen:
                try:
                    labels, geometry, names = read_seg(source.path, info)
                except VolumeError:  # a SEG of another series: not shown with this one
                    continue
                except (ValueError, KeyError, AttributeError, IndexError, TypeError) as err:
                    notes.append(f"The DICOM SEG {source.name} was not opened ({type(err).__name__}: {err}).")
                    break
                layer = labels_layer_data(labels, geometry, f"{seg.description or 'SEG'}", str(source.path), names)
                layer[1]["metadata"]["medadapt"]["dicom"] = _dicom_metadata(info, path)
                layers.append(layer)
                break
    for note in notes:
        warnings.warn(note, VolumeWarning, stacklevel=2)
    return layers


def _is_seg(path: str | os.PathLike) -> bool:
    from napari_medadapt.core.dicom.seg import is_seg_file

    return is_seg_file(path)


def _open_series() -> list[dict[str, Any]]:
    """The DICOM series of the image layers open in the current napari viewer (none outside napari)."""
    import sys

    if "napari" not in sys.modules:
        return []
    import napari

    found = []
    for layer in getattr(napari.current_viewer(), "layers", ()):
        dicom = ((layer.metadata or {}).get("medadapt") or {}).get("dicom")
        if isinstance(dicom, dict) and dicom.get("series_uid") and dicom not in found:
            found.append(dicom)
    return found


def _seg_layer(path: str | os.PathLike, labels_layer_data: Callable[..., Any]) -> tuple[Any, dict[str, Any], str]:
    """A DICOM SEG as a Labels layer: on the exact grid of its series when that series is open in the viewer or
    lies beside the SEG, else on the grid its frames span."""
    from napari_medadapt.core.dicom.seg import read_seg
    from napari_medadapt.core.errors import VolumeError

    for dicom in _open_series():
        try:
            labels, geometry, names = read_seg(path, f"{dicom['source']}#{dicom['series_uid']}")
        except VolumeError:
            continue
        layer = labels_layer_data(labels, geometry, Path(path).stem, str(path), names)
        layer[1]["metadata"]["medadapt"]["dicom"] = dict(dicom)
        return layer
    labels, geometry, names = read_seg(path)
    return labels_layer_data(labels, geometry, Path(path).stem, str(path), names)
