"""Listing the DICOM series of a folder, file or zip from their headers (pixel data is never read here).

Every image frame becomes a :class:`Frame` (single-frame files: one each; enhanced multi-frame CT/MR: one per
frame, from the functional groups); frames are grouped into :class:`SeriesInfo` by SeriesInstanceUID. A series is
classified as ``image``, ``localizer``, ``derived`` (secondary captures, colour screenshots), ``seg`` (DICOM SEG)
or ``non-image`` (RT structures, structured reports, ...); only ``image`` series are offered as volumes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import VolumeError
from ._sources import DICOMDIR_CLASS, Source, find_sources, split_selection

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "OT-SR"}
#: Volumes the default choice prefers.
_VOLUME_MODALITIES = ("CT", "MR", "PT")


@dataclass
class Frame:
    """One 2D image of a series: where it is (LPS mm), how its values scale, and which file holds it."""

    source: Source
    frame: int | None
    sop_uid: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    rows: int
    columns: int
    stack: tuple[Any, ...]

    @property
    def name(self) -> str:
        """The file (and frame) for messages."""
        return self.source.name if self.frame is None else f"{self.source.name} (frame {self.frame + 1})"


@dataclass
class SeriesInfo:
    """A series found by :func:`list_series`. ``patient`` is for the viewer only, never for logs or records."""

    uid: str
    number: int | None
    modality: str
    description: str
    date: str
    kind: str
    sop_class: str
    frames: list[Frame] = field(default_factory=list)
    datasets: dict[Source, Any] = field(default_factory=dict, repr=False)
    patient: dict[str, str] = field(default_factory=dict, repr=False)
    thickness: float | None = None
    spacing_between: float | None = None
    left_out: int = 0

    @property
    def n_files(self) -> int:
        """How many files hold the series."""
        return len(self.datasets)

    @property
    def n_frames(self) -> int:
        """How many 2D images (slices of every echo / time point)."""
        return len(self.frames)

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """In-plane spacing (rows, columns) in mm of the first frame."""
        return self.frames[0].pixel_spacing if self.frames else None

    def summary(self) -> str:
        """One line for lists and messages (no patient identifiers)."""
        number = "?" if self.number is None else str(self.number)
        spacing = self.pixel_spacing
        size = f"{self.frames[0].rows} x {self.frames[0].columns}" if self.frames else "no image"
        step = f", {spacing[0]:.3g} x {spacing[1]:.3g} mm" if spacing else ""
        thick = f" x {self.thickness:.3g} mm" if spacing and self.thickness else ""
        kind = "" if self.kind == "image" else f" [{self.kind}]"
        description = self.description or "(no description)"
        date = f", {self.date}" if self.date else ""
        images = "1 image" if self.n_frames == 1 else f"{self.n_frames} images"
        return f"#{number} {self.modality} '{description}'{date}: {images} of {size}{step}{thick}{kind}"


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.all(np.isfinite(array)) else None


def _item(ds: Any, sequence: str) -> Any:
    items = ds.get(sequence)
    return items[0] if items else None


def _functional(per_frame: Any, shared: Any, sequence: str) -> Any:
    for group in (per_frame, shared):
        if group is not None and (item := _item(group, sequence)) is not None:
            return item
    return None


def _kind(ds: Any) -> str:
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality").upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if sop_class == SEG_CLASS:
        return "seg"
    if modality in _NON_IMAGE_MODALITIES or "Rows" not in ds:
        return "non-image"
    if "LOCALIZER" in image_type or "SCOUT" in image_type or "TOPOGRAM" in image_type:
        return "localizer"
    if sop_class.startswith(_SECONDARY_CAPTURE) or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "derived"
    return "image"


def _frames_of(ds: Any, source: Source) -> list[Frame]:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    sop_uid = _text(ds, "SOPInstanceUID")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        spacing = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (), 2)
        stack = (ds.get("EchoNumbers"), ds.get("TemporalPositionIdentifier"))
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        position = _floats(ds.get("ImagePositionPatient") or (), 3)
        orientation = _floats(ds.get("ImageOrientationPatient") or (), 6)
        spacing_t = tuple(spacing) if spacing is not None else None
        if n_frames == 1:
            return [Frame(source, None, sop_uid, position, orientation, spacing_t, slope, intercept, rows, columns,
                          stack)]  # fmt: skip
        return [  # legacy multi-frame without positions per frame: not a volume we can place
            Frame(source, f, sop_uid, None, orientation, spacing_t, slope, intercept, rows, columns, stack)
            for f in range(n_frames)
        ]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for index, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = _functional(per_frame, shared, "PlanePositionSequence")
        orientation = _functional(per_frame, shared, "PlaneOrientationSequence")
        measures = _functional(per_frame, shared, "PixelMeasuresSequence")
        scaling = _functional(per_frame, shared, "PixelValueTransformationSequence")
        echo = _functional(per_frame, shared, "MREchoSequence")
        content = _functional(per_frame, shared, "FrameContentSequence")
        spacing = _floats(measures.get("PixelSpacing") or (), 2) if measures is not None else None
        stack = (
            echo.get("EffectiveEchoTime") if echo is not None else None,
            content.get("TemporalPositionIndex") if content is not None else None,
        )
        frames.append(Frame(
            source, index, sop_uid,
            _floats(position.get("ImagePositionPatient") or (), 3) if position is not None else None,
            _floats(orientation.get("ImageOrientationPatient") or (), 6) if orientation is not None else None,
            tuple(spacing) if spacing is not None else None,
            float(scaling.get("RescaleSlope", 1) or 1) if scaling is not None else 1.0,
            float(scaling.get("RescaleIntercept", 0) or 0) if scaling is not None else 0.0,
            rows, columns, stack,
        ))  # fmt: skip
    return frames


def read_header(source: Source) -> Any | None:
    """The header of one file (no pixel data), or ``None`` for a file that is not DICOM after all.

    Raises
    ------
    VolumeError
        A DICOM file whose header cannot be read (truncated, corrupt), naming it and the fix.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with source.open() as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(handle, stop_before_pixels=True)
            except InvalidDicomError:
                handle.seek(0)
                if not source.name.lower().endswith((".dcm", ".dicom", ".ima")):
                    return None
                return pydicom.dcmread(handle, stop_before_pixels=True, force=True)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise VolumeError(
            f"{source.name} is a damaged DICOM file ({type(err).__name__}: {err}); it is probably truncated or "
            "corrupt. Remove it from the folder, or export the series again from the PACS."
        ) from err


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """Every series in a DICOM folder (recursively, DICOMDIR and files without extension included), file or zip.

    Only headers are read (``stop_before_pixels``). Series come sorted by series number, then description.

    Raises
    ------
    VolumeError
        Nothing DICOM there, or a damaged file (naming it and the fix).
    """
    path = split_selection(path)[0]
    series: dict[str, SeriesInfo] = {}
    kinds: dict[int, str] = {}
    for source in find_sources(path):
        ds = read_header(source)
        if ds is None:
            continue
        if _text(ds, "SOPClassUID") == DICOMDIR_CLASS or _text(ds.get("file_meta", {}), "MediaStorageSOPClassUID") == DICOMDIR_CLASS:
            continue
        if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
            raise VolumeError(
                f"{source.name} is a damaged DICOM file: its header has no "
                f"{'SOPClassUID' if 'SOPClassUID' not in ds else 'SeriesInstanceUID'} (the file is probably truncated). "
                "Remove it from the folder, or export the series again from the PACS."
            )
        uid = _text(ds, "SeriesInstanceUID") or f"(no series UID: {source.name})"
        info = series.get(uid)
        if info is None:
            number = ds.get("SeriesNumber")
            info = series[uid] = SeriesInfo(
                uid=uid,
                number=int(number) if number not in (None, "") else None,
                modality=_text(ds, "Modality") or "OT",
                description=_text(ds, "SeriesDescription") or _text(ds, "ProtocolName"),
                date=_text(ds, "SeriesDate") or _text(ds, "StudyDate") or _text(ds, "AcquisitionDate"),
                kind=_kind(ds),
                sop_class=_text(ds, "SOPClassUID"),
                patient={"name": _text(ds, "PatientName"), "id": _text(ds, "PatientID"),
                         "birth_date": _text(ds, "PatientBirthDate")},  # fmt: skip
                thickness=float(ds.SliceThickness) if ds.get("SliceThickness") not in (None, "") else None,
                spacing_between=float(ds.SpacingBetweenSlices) if ds.get("SpacingBetweenSlices") not in (None, "") else None,
            )
        kind = _kind(ds)
        if info.kind != "image" and kind == "image":
            info.kind = "image"
        info.datasets[source] = ds
        if kind in ("image", "localizer", "derived"):
            frames = _frames_of(ds, source)
            kinds.update({id(frame): kind for frame in frames})
            info.frames.extend(frames)
    if not series:
        raise VolumeError(f"{path} holds no DICOM images. Give the folder, file or zip the PACS export wrote.")
    for info in series.values():  # a scout or screenshot filed in an image series is left out of its volume
        if info.kind == "image":
            kept = [frame for frame in info.frames if kinds[id(frame)] == "image"]
            info.left_out, info.frames = len(info.frames) - len(kept), kept
    return sorted(series.values(), key=lambda s: (s.number is None, s.number or 0, s.description, s.uid))


def describe_series(series: list[SeriesInfo]) -> str:
    """One line per series (for messages and ``--series`` help)."""
    return "\n".join(f"  {s.summary()}" for s in series)


def _matches(info: SeriesInfo, wanted: str) -> bool:
    wanted = wanted.strip()
    if wanted == info.uid or (wanted.lstrip("#").isdigit() and info.number == int(wanted.lstrip("#"))):
        return True
    return bool(wanted) and not wanted.lstrip("#").isdigit() and wanted.lower() in info.description.lower()


def choose_series(series: list[SeriesInfo], selection: str | None = None, where: str = "") -> tuple[list[SeriesInfo], list[str]]:
    """The series to open and notes about the choice.

    Parameters
    ----------
    series
        From :func:`list_series`.
    selection
        ``None`` (the largest CT/MR series, with a note when there are others), or comma-separated series
        numbers, SeriesInstanceUIDs or words of descriptions.
    where
        The folder, for messages.

    Raises
    ------
    VolumeError
        No series matches (listing those there), or only localisers, derived images or non-image objects.
    """
    notes = []
    images = [s for s in series if s.kind == "image"]
    skipped = [s for s in series if s.kind in ("localizer", "derived", "non-image")]
    if selection:
        chosen = []
        for wanted in selection.split(","):
            found = [s for s in series if _matches(s, wanted)]
            if not found:
                raise VolumeError(f"No series {wanted.strip()!r} in {where}; it holds:\n{describe_series(series)}\n"
                                  "Give a series number, a SeriesInstanceUID or words of the description.")  # fmt: skip
            chosen.extend(s for s in found if s not in chosen)
        for info in chosen:
            if info.kind in ("non-image", "localizer", "derived"):
                raise VolumeError(f"Series {info.summary()} in {where} is {_what(info)}, not a volume; choose an image "
                                  f"series:\n{describe_series(images) or '  (none)'}")  # fmt: skip
        return chosen, notes
    if not images:
        what = "; ".join(f"{s.summary()} is {_what(s)}" for s in series)
        raise VolumeError(
            f"{where} holds no image volume ({what}). Export the CT or MR series itself from the PACS (a localiser, "
            "a screenshot or a report cannot be segmented)."
        )
    for info in skipped:
        notes.append(f"{info.summary()} was skipped: it is {_what(info)}.")
    preferred = [s for s in images if s.modality.upper() in _VOLUME_MODALITIES] or images
    best = max(preferred, key=lambda s: s.n_frames)
    others = [s for s in images if s is not best]
    if others:
        notes.append(
            f"{where} holds {len(images)} image series; the largest {best.modality} series {best.summary()} is opened. "
            f"Others: {'; '.join(s.summary() for s in others)}. Choose with --series NUMBER (command line) or in the "
            "dialog."
        )
    return [best], notes


def _what(info: SeriesInfo) -> str:
    return {
        "localizer": "a localiser (scout) image",
        "derived": "a derived secondary capture (screenshot)",
        "non-image": f"a non-image object ({info.modality})",
        "seg": "a DICOM SEG (labels)",
    }.get(info.kind, "an image series")
