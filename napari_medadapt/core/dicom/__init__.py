"""DICOM in and out: series listing and loading (pydicom, SimpleITK/GDCM for compressed pixel data), DICOM SEG
writing and reading (highdicom).

Nothing here imports pydicom or highdicom at import time; see ``docs/dicom.md``.
"""

from ._sources import find_sources, is_dicom_file, is_dicom_source, split_selection
from .load import DicomVolume, geometry_from_affine, load_dicom, load_dicom_volume, load_series, order_frames
from .privacy import provenance_entry, uid_hash
from .series import SeriesInfo, choose_series, describe_series, list_series

__all__ = [
    "DicomVolume", "SeriesInfo", "choose_series", "describe_series", "find_sources", "geometry_from_affine",
    "is_dicom_file", "is_dicom_source", "list_series", "load_dicom", "load_dicom_volume", "load_series",
    "order_frames", "provenance_entry", "split_selection", "uid_hash",
]  # fmt: skip
