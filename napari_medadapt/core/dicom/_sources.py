"""Where DICOM files come from: a folder (nested, DICOMDIR, files without extension), one file, or a zip.

Each file is a :class:`Source`: a display name (relative to what the user gave) and a way to open it (a path on
disk or a member of a zip, read into memory). Files that are not DICOM (no ``DICM`` preamble and no ``.dcm``
name) are passed over; a folder is never scanned by loading pixel data.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import VolumeError

#: Suffixes of DICOM files that lack the 128-byte preamble and the ``DICM`` mark (read with ``force``).
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Media Storage Directory (DICOMDIR): an index, not an image.
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_IGNORED_NAMES = {"dicomdir", "thumbs.db", ".ds_store"}


@dataclass(frozen=True)
class Source:
    """One DICOM file: ``name`` for messages, ``path`` on disk, or ``member`` of the zip ``path``."""

    name: str
    path: Path
    member: str | None = None

    def open(self) -> io.BufferedIOBase | io.BytesIO:
        """A binary file object positioned at the start of the file."""
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as archive:
            return io.BytesIO(archive.read(self.member))

    @property
    def on_disk(self) -> bool:
        """Whether the file is a plain file (SimpleITK/GDCM can read it by path)."""
        return self.member is None


def _has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _looks_dicom(path: Path) -> bool:
    if path.name.lower() in _IGNORED_NAMES or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return _has_preamble(head) or path.suffix.lower() in DICOM_SUFFIXES


def is_zip(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive (by content, not name)."""
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file (``DICM`` mark after the preamble, or a ``.dcm`` name)."""
    path = Path(path)
    return path.is_file() and (_looks_dicom(path) or path.name.upper() == "DICOMDIR")


def holds_dicom(folder: str | os.PathLike, limit: int = 2000) -> bool:
    """Whether a folder (or its sub-folders) holds a DICOM file; looks at ``limit`` files at most."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if _looks_dicom(Path(root) / name):
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def is_dicom_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` is something :func:`~napari_medadapt.core.dicom.list_series` reads: a folder holding
    DICOM files, a DICOM file, a DICOMDIR or a zip of DICOM files."""
    path = Path(split_selection(path)[0])
    if path.is_dir():
        return holds_dicom(path)
    if is_zip(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(_zip_member_is_dicom(archive, info) for info in archive.infolist()[:200])
        except (OSError, zipfile.BadZipFile):
            return False
    return is_dicom_file(path)


def _zip_member_is_dicom(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    name = Path(info.filename).name
    if info.is_dir() or not name or name.startswith(".") or name.lower() in _IGNORED_NAMES:
        return False
    if Path(name).suffix.lower() in DICOM_SUFFIXES:
        return True
    with archive.open(info) as handle:
        return _has_preamble(handle.read(132))


def split_selection(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"FOLDER#3"`` -> ``("FOLDER", "3")``: a DICOM source and the series chosen in it (number, UID or words of
    its description); a path that exists as given is never split."""
    text = str(spec)
    if "#" not in text or Path(text).exists():
        return text, None
    path, _sep, series = text.rpartition("#")
    return path, series.strip() or None


def find_sources(path: str | os.PathLike) -> list[Source]:
    """Every DICOM file of a folder (recursively), a zip, or one file (a DICOMDIR stands for its folder).

    Raises
    ------
    VolumeError
        The path does not exist, or holds no DICOM file (naming what it holds instead).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"{path} does not exist. Check the path of the DICOM folder, file or zip.")
    if path.is_file() and path.name.upper() == "DICOMDIR":
        path = path.parent
    if path.is_dir():
        sources = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                file = Path(root) / name
                if _looks_dicom(file):
                    sources.append(Source(str(file.relative_to(path)), file))
        if not sources:
            raise VolumeError(
                f"{path} holds no DICOM files (files with the DICM mark or a .dcm name). Give the folder the PACS "
                "export wrote, or a NIfTI file."
            )
        return sources
    if is_zip(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [i for i in archive.infolist() if _zip_member_is_dicom(archive, i)]
        except (OSError, zipfile.BadZipFile) as err:
            raise VolumeError(f"The zip {path} cannot be read ({err}); copy it again.") from err
        if not members:
            raise VolumeError(f"The zip {path} holds no DICOM files; give a zip of a DICOM export.")
        return [Source(f"{path.name}:{m.filename}", path, m.filename) for m in members]
    if path.is_file():
        return [Source(path.name, path)]
    raise VolumeError(f"{path} is neither a file nor a folder.")
