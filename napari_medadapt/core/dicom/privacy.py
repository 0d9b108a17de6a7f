"""What of a DICOM input may be recorded: never a patient identifier.

Patient name, ID and birth date are shown in the viewer (the series dialog, a layer's metadata) where a clinician
expects them; logs, provenance records and reports get only :func:`provenance_entry` (the SeriesInstanceUID's
sha256, the modality, the series number and the frame count).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ._sources import split_selection


def uid_hash(uid: str) -> str:
    """sha256 of a UID (hex)."""
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()


def series_entry(series: Any, path: str | os.PathLike) -> dict[str, Any]:
    """A provenance input entry for a listed series."""
    return {
        "path": str(path),
        "sha256": None,
        "dicom_series_uid_sha256": uid_hash(series.uid),
        "modality": series.modality,
        "series_number": series.number,
        "frames": series.n_frames,
    }


def provenance_entry(spec: str | os.PathLike) -> dict[str, Any]:
    """A provenance input entry for a DICOM ``--image`` (``FOLDER`` or ``FOLDER#SERIES``): the series chosen as
    :func:`~napari_medadapt.core.dicom.load_dicom` chooses it, without patient identifiers."""
    from .series import choose_series, list_series

    path, selection = split_selection(spec)
    chosen, _notes = choose_series(list_series(path), selection, where=str(path))
    return series_entry(chosen[0], path)

