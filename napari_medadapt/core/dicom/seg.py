"""DICOM SEG out and in (highdicom): label maps on the grid of a DICOM series.

:func:`write_seg` writes one segment per label value (numbered 1, 2, ... in label-value order, the value kept as
the segment's tracking id), with its name, SNOMED CT category and type (:mod:`.codes`) and the algorithm that
made it, referencing the source series and each of its frames, so 3D Slicer and OHIF place it on the images. The
source files are only read. :func:`read_seg` reads a SEG back as a label map with its segment names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeError
from ..files import OutputError, atomic_write, check_output_path
from ..geometry import Geometry
from ._sources import split_selection
from .load import geometry_from_affine, order_frames
from .series import SEG_CLASS, Frame, SeriesInfo, choose_series, list_series

_TRACKING_PREFIX = "label value "


def is_seg_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a DICOM output (``.dcm``)."""
    return str(path).lower().endswith(".dcm")


@dataclass
class ReferenceGrid:
    """A series' frames in slice order for one echo / time point, and their grid."""

    series: SeriesInfo
    frames: list[Frame]
    geometry: Geometry


def reference_grids(series: SeriesInfo) -> list[ReferenceGrid]:
    """The grids of an image series (one per echo / time point), each with its frames in slice order."""
    from .load import _stacks

    grids = []
    for frames in _stacks(series).values():
        ordered, affine, _notes = order_frames(series, frames)
        shape = (ordered[0].columns, ordered[0].rows, len(ordered))
        grids.append(ReferenceGrid(series, ordered, geometry_from_affine(affine, shape)))
    return grids


def find_reference(reference: str | os.PathLike | SeriesInfo, geometry: Geometry) -> ReferenceGrid:
    """The grid of ``reference`` (a DICOM folder/file/zip, ``FOLDER#SERIES``, or a listed series) that is
    ``geometry``'s grid.

    Raises
    ------
    VolumeError
        No series of the reference is on that grid (saying what the grids are).
    """
    if isinstance(reference, SeriesInfo):
        candidates = [reference]
        where = reference.summary()
    else:
        path, selection = split_selection(reference)
        listed = [s for s in list_series(path) if s.kind == "image"]
        candidates = choose_series(listed, selection, where=str(path))[0] if selection else listed
        where = str(reference)
    for series in candidates:
        for grid in reference_grids(series):
            if grid.geometry.matches(geometry, atol=1e-3):
                return grid
    grids = "; ".join(s.summary() for s in candidates)
    raise VolumeError(
        f"The labels ({geometry.describe()}) are not on the grid of any series of {where} ({grids}). Give the DICOM "
        "series the labels were made on as the reference."
    )


def _segment_descriptions(values: list[int], class_names: Mapping[int, str], algorithm: tuple[str, str]) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .codes import coded

    identification = hd.AlgorithmIdentificationSequence(
        name=(algorithm[0] or "napari-medadapt")[:64], version=(algorithm[1] or "unknown")[:64],
        family=codes.cid7162.ArtificialIntelligence,
    )  # fmt: skip
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = str(class_names.get(value) or f"label {value}")
        category, kind = coded(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification, tracking_uid=hd.UID(),
            tracking_id=f"{_TRACKING_PREFIX}{value}",
        ))  # fmt: skip
    return descriptions


def _source_datasets(grid: ReferenceGrid, array: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """The source datasets highdicom references and the ``(frames, rows, columns)`` array in their frame order."""
    sources = {frame.source for frame in grid.frames}
    if all(frame.frame is None for frame in grid.frames):
        return [grid.series.datasets[frame.source] for frame in grid.frames], array
    if len(sources) != 1 or len(grid.frames) != int(grid.series.datasets[grid.frames[0].source].get("NumberOfFrames", 0)):
        raise VolumeError(f"Series {grid.series.summary()} spreads one volume over several multi-frame files; a SEG "
                          "for it cannot be written. Convert the labels to NIfTI instead.")  # fmt: skip
    reordered = np.zeros_like(array)
    for k, frame in enumerate(grid.frames):
        reordered[frame.frame] = array[k]
    return [grid.series.datasets[grid.frames[0].source]], reordered


def write_seg(
    labels_zyx: np.ndarray,
    geometry: Geometry,
    reference: str | os.PathLike | SeriesInfo,
    path: str | os.PathLike,
    *,
    class_names: Mapping[int, str] | None = None,
    algorithm: tuple[str, str] = ("napari-medadapt", ""),
    inputs: Iterable[str | os.PathLike] = (),
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a display-grid label map as a DICOM SEG referencing the series it was made on, atomically.

    Parameters
    ----------
    labels_zyx
        Integer labels of shape ``geometry.display_shape`` (0 = background).
    geometry
        Their grid: the grid of one series of ``reference``.
    reference
        The source DICOM folder, file or zip (``FOLDER#SERIES`` picks a series), or a listed series.
    path
        Destination ``.dcm`` (never an input, never a read-only file).
    class_names
        ``{label value: name}``; a value without a name is called ``label N``.
    algorithm
        ``(model name, version)`` of the algorithm identification.
    inputs
        Files that must not be replaced.
    provenance
        A provenance record, written beside the file (``<name>.provenance.json``).

    Raises
    ------
    VolumeError
        Labels not on the reference's grid, no labels at all, or not integers; OutputError for the destination.
    """
    import highdicom as hd

    from ..labelmaps import _check_sidecar, _integer_labels
    from ..provenance import package_version

    if not is_seg_path(path):
        raise VolumeError(f"Cannot write a DICOM SEG to {path}: the file name must end in .dcm.")
    path = check_output_path(path, inputs=inputs, what="DICOM SEG file")
    labels = _integer_labels(np.asarray(labels_zyx), "The label array")
    if labels.shape != geometry.display_shape:
        raise VolumeError(f"The labels have shape {labels.shape}, their grid {geometry.display_shape}.")
    grid = find_reference(reference, geometry)
    values = [int(v) for v in np.unique(labels) if v > 0]
    if not values:
        raise VolumeError(f"The label map for {path} is empty (only background); a DICOM SEG needs at least one "
                          "segment. Nothing was written; save empty labels as .nii.gz if they are wanted.")  # fmt: skip
    source_ijk = grid.geometry.to_source(labels)  # (columns, rows, slices) of the reference
    numbered = np.zeros(source_ijk.shape, dtype=np.uint16 if len(values) > 255 else np.uint8)
    for number, value in enumerate(values, start=1):
        numbered[source_ijk == value] = number
    frames = np.ascontiguousarray(numbered.transpose(2, 1, 0))
    datasets, frames = _source_datasets(grid, frames)
    version = package_version("napari-medadapt") or "unknown"
    source_number = grid.series.number or 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(values, class_names or {}, algorithm),
            series_instance_uid=hd.UID(), series_number=min(source_number + 1000, 99999), sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="napari-medadapt", manufacturer_model_name=algorithm[0] or "napari-medadapt",
            software_versions=f"napari-medadapt {version}", device_serial_number="none",
            content_label="MEDADAPT", content_description=f"Labels by {algorithm[0] or 'napari-medadapt'}"[:64],
            series_description=f"SEG {algorithm[0] or 'napari-medadapt'}"[:64],
        )  # fmt: skip
    sidecar = _check_sidecar(path, inputs) if provenance else None
    try:
        atomic_write(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True), suffix=".dcm")
    except OSError as exc:
        raise OutputError(f"Cannot write {path} ({exc.strerror or exc}); check the folder has space.") from exc
    if sidecar is not None:
        import json

        from ..files import write_text_atomic

        write_text_atomic(sidecar, json.dumps(dict(provenance), indent=2) + "\n", what="Provenance file")
    return path


def is_seg_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM SEG file (header only)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not a readable DICOM file: not a SEG
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_CLASS


def _open_seg(path: str | os.PathLike) -> Any:
    import highdicom as hd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hd.seg.segread(path)
    except Exception as err:  # noqa: BLE001 - highdicom raises many kinds for a damaged or foreign file
        raise VolumeError(f"{path} cannot be read as a DICOM SEG ({type(err).__name__}: {err}). Export it again, "
                          "or open its labels as NIfTI.") from err  # fmt: skip


def seg_segments(seg: Any) -> dict[int, tuple[int, str]]:
    """``{segment number: (label value, name)}``: the value our SEGs keep as tracking id, else the number."""
    segments = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        tracking = str(getattr(description, "tracking_id", "") or "")
        value = int(tracking[len(_TRACKING_PREFIX):]) if tracking.startswith(_TRACKING_PREFIX) and tracking[len(
            _TRACKING_PREFIX):].isdigit() else int(number)  # fmt: skip
        segments[int(number)] = (value, str(description.segment_label))
    return segments


def read_seg(
    path: str | os.PathLike, reference: str | os.PathLike | SeriesInfo | None = None
) -> tuple[np.ndarray, Geometry, dict[int, str]]:
    """A DICOM SEG as ``(labels (Z, Y, X), geometry, {label value: segment name})``.

    With the source series (``reference``, or found beside the SEG) the labels are on its exact grid; without it,
    on the grid the SEG's frames span.
    """
    seg = _open_seg(path)
    segments = seg_segments(seg)
    referenced = {str(item.SeriesInstanceUID) for study in seg.get("ReferencedSeriesSequence", []) for item in [study]}
    grid = _reference_grid_for(seg, path, reference, referenced)
    names = {value: name for value, name in segments.values()}
    if grid is not None:
        uids = [frame.sop_uid for frame in grid.frames]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if all(frame.frame is None for frame in grid.frames):
                numbered = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True,
                                                             assert_missing_frames_are_empty=True)
            else:
                numbered = seg.get_pixels_by_source_frame(
                    grid.frames[0].sop_uid, [f.frame + 1 for f in grid.frames], combine_segments=True,
                    skip_overlap_checks=True, assert_missing_frames_are_empty=True,
                )  # fmt: skip
        labels_ijk = _relabel(numbered, segments).transpose(2, 1, 0)
        return grid.geometry.to_display(labels_ijk), grid.geometry, names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
        except Exception as err:  # noqa: BLE001
            raise VolumeError(f"{path}: its frames do not form a regular volume ({err}); open it with the series it "
                              "was made on (in the same folder).") from err  # fmt: skip
    affine_hd = np.asarray(volume.affine, dtype=np.float64)  # (slice, row, column) -> LPS
    affine = affine_hd[:, [2, 1, 0, 3]]
    labels_ijk = _relabel(np.asarray(volume.array), segments).transpose(2, 1, 0)
    geometry = geometry_from_affine(affine, labels_ijk.shape)
    return geometry.to_display(labels_ijk), geometry, names


def _relabel(numbered: np.ndarray, segments: dict[int, tuple[int, str]]) -> np.ndarray:
    top = max([0, *(value for value, _name in segments.values())])
    out = np.zeros(numbered.shape, dtype=np.uint8 if top <= 255 else np.int32)
    for number, (value, _name) in segments.items():
        out[numbered == number] = value
    return out


def _reference_grid_for(seg: Any, path: str | os.PathLike, reference: Any, referenced: set[str]) -> ReferenceGrid | None:
    candidates: list[SeriesInfo] = []
    if isinstance(reference, SeriesInfo):
        candidates = [reference]
    elif reference is not None:
        candidates = [s for s in list_series(split_selection(reference)[0]) if s.kind == "image"]
    else:
        try:
            candidates = [s for s in list_series(Path(path).parent) if s.kind == "image"]
        except VolumeError:
            candidates = []
    wanted = {str(uid) for uid in _source_instances(seg)}
    for series in candidates:
        if referenced and series.uid not in referenced:
            continue
        for grid in reference_grids(series):
            if wanted <= {frame.sop_uid for frame in grid.frames}:
                return grid
    if reference is not None:
        raise VolumeError(f"{path} does not reference the series given as reference ({reference}); give the series "
                          "it was made on.")  # fmt: skip
    return None


def _source_instances(seg: Any) -> list[str]:
    uids = []
    for item in seg.get("ReferencedSeriesSequence", []):
        uids.extend(str(ref.ReferencedSOPInstanceUID) for ref in item.get("ReferencedInstanceSequence", []))
    return uids
