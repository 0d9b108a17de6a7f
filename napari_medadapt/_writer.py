"""napari writer: a Labels layer -> NIfTI (``.nii.gz``/``.nii``) on the exact grid of its source image, or -> DICOM SEG
(``.dcm``) referencing the DICOM series its image came from.

The geometry comes from the layer's ``metadata["medadapt"]["geometry"]``; a Labels layer without one
(e.g. created with "New labels layer") uses the geometry of the image layer(s) of the same shape in the
current viewer (the selected one when several differ).

Nothing is lost by saving: the writer refuses every file the labels were computed from (the inputs of the
layer's provenance, even when their layers are closed) and every scan open in the viewer; an existing file that is
not a label map written by napari-medadapt (a scan, another tool's segmentation) is replaced only when the user
confirms it in a dialog, and never without a dialog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.files import OutputError, check_output_path
from napari_medadapt.core.labelmaps import save_labels, written_by_medadapt
from napari_medadapt.core.volume import Geometry, is_nifti_path


def _metadata_geometry(metadata: dict[str, Any] | None) -> Geometry | None:
    geometry = ((metadata or {}).get("medadapt") or {}).get("geometry")
    return geometry if isinstance(geometry, Geometry) else None


def geometry_from_viewer(shape: tuple[int, ...], viewer: Any) -> Geometry:
    """Geometry of the image layer in ``viewer`` whose display shape is ``shape``.

    Several image layers of that shape must share one grid; otherwise the selected ones, then the
    visible ones, are used when they share one.
    """
    from napari.layers import Image

    candidates = []
    for layer in getattr(viewer, "layers", ()):
        geometry = _metadata_geometry(layer.metadata) if isinstance(layer, Image) else None
        if geometry is not None and geometry.display_shape == tuple(shape):
            candidates.append((layer, geometry))
    if not candidates:
        raise VolumeError(
            f"No image layer of shape {tuple(shape)} opened from a NIfTI file is in the viewer, so the "
            "labels' voxel grid is unknown. Open the image the labels belong to (File > Open) and save again."
        )
    first = candidates[0][1]
    if all(geometry.matches(first) for _layer, geometry in candidates):
        return first
    for preferred in (
        [g for layer, g in candidates if layer in viewer.layers.selection],
        [g for layer, g in candidates if layer.visible],
    ):
        if preferred and all(g.matches(preferred[0]) for g in preferred):
            return preferred[0]
    names = ", ".join(layer.name for layer, _g in candidates)
    raise VolumeError(
        f"Image layers {names} have shape {tuple(shape)} but different voxel grids; hide the images the "
        "labels do not belong to (keep only the right one visible) and save again."
    )


def _class_names(features: Any) -> dict[int, str]:
    """``{label id: name}`` from a Labels layer's features table (``index`` and ``class`` columns)."""
    try:
        return {int(i): str(n) for i, n in zip(features["index"], features["class"], strict=True)}
    except (KeyError, TypeError, ValueError):
        return {}


def _open_image_files(viewer: Any) -> list[str]:
    """Source files of the image layers open in ``viewer`` (a labels file must never replace one)."""
    from napari.layers import Image

    return [
        ((layer.metadata or {}).get("medadapt") or {}).get("source_path", "")
        for layer in getattr(viewer, "layers", ())
        if isinstance(layer, Image)
    ]


def _provenance_inputs(attributes: dict[str, Any]) -> list[str]:
    """The files the layer was computed from, as its provenance draft lists them (their layers may be closed)."""
    draft = ((attributes.get("metadata") or {}).get("medadapt") or {}).get("provenance")
    inputs = (draft or {}).get("inputs") if isinstance(draft, dict) else None
    return [str(path) for path in (inputs or {}).values() if isinstance(path, (str, Path)) and str(path)]


def confirm_replace(path: Path, reason: str) -> bool:
    """Ask the user whether ``path`` (which ``reason`` describes) may be replaced; ``False`` without a window.

    The dialog's default answer is No.
    """
    from qtpy.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance()
    if app is None:
        return False
    answer = QMessageBox.question(
        app.activeWindow(),
        "Replace a file?",
        f"{path} {reason}\n\nReplace it with these labels? It cannot be brought back.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def _refuse_inside_inputs(target: Path, protected: list[str]) -> None:
    """A file inside an input folder (a DICOM series) is part of that input: never replaced."""
    for source in protected:
        folder = Path(source.split("#")[0]).expanduser()
        if folder.is_dir() and target.expanduser().resolve().is_relative_to(folder.resolve()):
            raise OutputError(
                f"{target} is inside {folder}, a series the labels were computed from; writing there would change "
                "that input. Choose a file outside it."
            )


def _check_replacement(target: Path) -> None:
    """An existing ``target`` that is not a label map written by napari-medadapt needs the user's yes."""
    if not target.exists() or target.is_dir():
        return
    try:
        ours = written_by_medadapt(target)
    except VolumeError:
        ours = False
    if ours:
        return
    reason = "exists and is not a label map saved by napari-medadapt (it may be a scan or another tool's labels)."
    if not confirm_replace(target, reason):
        raise OutputError(
            f"{target} {reason} It was left as it is. Save the labels under another name, or confirm replacing "
            "it in the dialog."
        )


def _provenance(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The full record of a layer a dock made (its draft in the metadata, the inputs hashed now), or ``None``."""
    from napari_medadapt.core.provenance import provenance_record

    draft = ((attributes.get("metadata") or {}).get("medadapt") or {}).get("provenance")
    if not isinstance(draft, dict):
        return None
    draft = {**draft, "settings": {**(draft.get("settings") or {}), "napari_layer": attributes.get("name")}}
    if draft.get("device") is None:  # the dock ran on the session's default: the best available device
        from napari_medadapt.core.device import select_device

        draft["device"] = str(select_device())
    return provenance_record(**draft)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer's data with :func:`~napari_medadapt.core.labelmaps.save_labels`.

    The file is marked as a label map (NIfTI intent) and carries the layer's class names, so it reopens as
    labels whatever its name. It never replaces a scan open in the viewer or a read-only file.

    Parameters
    ----------
    path
        Destination; ``.nii.gz`` is appended when it has no NIfTI suffix.
    data
        The layer's ``(Z, Y, X)`` label array.
    attributes
        The layer's state (napari passes ``metadata``, ``name``, ``features``, ...).

    Returns
    -------
    list of str
        The written file.
    """
    import napari

    if str(path).lower().endswith(".dcm"):
        return write_labels_dicom(path, data, attributes)
    array = np.asarray(data)
    viewer = napari.current_viewer()
    geometry = _metadata_geometry(attributes.get("metadata"))
    if geometry is None:
        geometry = geometry_from_viewer(array.shape, viewer)
    target = Path(path) if is_nifti_path(path) else Path(f"{path}.nii.gz")
    protected = [*_provenance_inputs(attributes), *(_open_image_files(viewer) if viewer is not None else ())]
    _refuse_inside_inputs(target, protected)
    check_output_path(target, inputs=protected, what="Labels file")
    _check_replacement(target)
    written = save_labels(
        array,
        geometry,
        target,
        class_names=_class_names(attributes.get("features")),
        inputs=protected,
        provenance=_series_inputs(_provenance(attributes), attributes, geometry, viewer),
    )
    return [str(written)]


def _dicom_source(attributes: dict[str, Any], geometry: Geometry, viewer: Any, required: bool = True) -> dict[str, Any]:
    """The DICOM series the labels belong to: the layer's own, else that of an open image layer on the same grid
    (``{}`` when there is none and it is not ``required``)."""
    own = ((attributes.get("metadata") or {}).get("medadapt") or {}).get("dicom")
    if isinstance(own, dict) and own.get("source"):
        return own
    from napari.layers import Image

    for layer in getattr(viewer, "layers", ()):
        medadapt = (layer.metadata or {}).get("medadapt") or {}
        grid = medadapt.get("geometry")
        if isinstance(layer, Image) and medadapt.get("dicom") and isinstance(grid, Geometry) and grid.matches(geometry):
            return medadapt["dicom"]
    if not required:
        return {}
    raise VolumeError(
        "These labels are not on the grid of a DICOM series open in the viewer, so a DICOM SEG cannot reference "
        "their images. Open the DICOM series they were drawn on (File > Open Folder), or save them as .nii.gz."
    )


def _our_seg(target: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(target, stop_before_pixels=True, specific_tags=["SOPClassUID", "Manufacturer"])
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    return str(ds.get("Manufacturer", "")) == "napari-medadapt" and str(ds.get("SOPClassUID", "")).endswith(".66.4")


def write_labels_dicom(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a DICOM SEG referencing the DICOM series its image came from (never changed).

    Parameters
    ----------
    path
        Destination; ``.dcm`` is appended when missing.
    data
        The layer's ``(Z, Y, X)`` label array.
    attributes
        The layer's state (``metadata``, ``name``, ``features``, ...).

    Returns
    -------
    list of str
        The written file.
    """
    import napari

    from napari_medadapt.core.dicom.seg import find_reference, write_seg

    array = np.asarray(data)
    viewer = napari.current_viewer()
    geometry = _metadata_geometry(attributes.get("metadata")) or geometry_from_viewer(array.shape, viewer)
    target = Path(path) if str(path).lower().endswith(".dcm") else Path(f"{path}.dcm")
    protected = [*_provenance_inputs(attributes), *(_open_image_files(viewer) if viewer is not None else ())]
    _refuse_inside_inputs(target, protected)
    check_output_path(target, inputs=protected, what="DICOM SEG file")
    if target.exists() and not _our_seg(target):
        reason = "exists and is not a DICOM SEG saved by napari-medadapt (it may be a scan or another tool's labels)."
        if not confirm_replace(target, reason):
            raise OutputError(f"{target} {reason} It was left as it is. Save the labels under another name.")
    source = _dicom_source(attributes, geometry, viewer)
    grid = find_reference(f"{source['source']}#{source['series_uid']}", geometry)
    record = _series_inputs(_provenance(attributes), attributes, geometry, viewer, grid.series)
    model = (record or {}).get("model") or {}
    written = write_seg(
        array, geometry, grid.series, target, class_names=_class_names(attributes.get("features")),
        algorithm=(str(model.get("name") or "manual (napari)"), str(model.get("sha256") or "unknown")),
        inputs=protected, provenance=record,
    )  # fmt: skip
    return [str(written)]


def _series_inputs(
    record: dict[str, Any] | None, attributes: dict[str, Any], geometry: Geometry, viewer: Any, series: Any = None
) -> dict[str, Any] | None:
    """``record`` with its DICOM input described by the series (the SeriesInstanceUID's sha256, modality, number),
    not a checksum of its folder, and never a patient identifier."""
    if record is None:
        return None
    source = _dicom_source(attributes, geometry, viewer, required=False)
    if not source:
        return record
    from napari_medadapt.core.dicom import choose_series, list_series
    from napari_medadapt.core.dicom.privacy import series_entry

    if series is None:
        series = choose_series(list_series(source["source"]), source["series_uid"])[0][0]
    for name, entry in record.get("inputs", {}).items():
        if isinstance(entry, dict) and str(entry.get("path")) == str(Path(source["source"]).resolve()):
            record["inputs"][name] = series_entry(series, source["source"])
    return record
