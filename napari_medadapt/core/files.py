"""Writing output files without losing anything: checks before a run, atomic writes.

Every file napari-medadapt writes (label maps, JSON reports, model cards) goes through here:

- :func:`check_output_path` runs *before* any long computation, so a user learns that ``--out`` cannot be
  written in a second, not after the model ran. It refuses to replace an input, a read-only (protected)
  file or a folder, and a destination whose folder is missing or read-only.
- :func:`atomic_write` writes to a hidden temporary file in the destination folder and renames it into
  place, so an interrupted write (an error, Ctrl+C, or SIGTERM in the command line, which raises
  ``SystemExit``) never leaves a partial file or the temporary file behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import MedAdaptError


class OutputError(MedAdaptError):
    """An output path that cannot (or must not) be written."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _read_only(mode: int) -> bool:
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def check_output_path(
    path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), what: str = "output"
) -> Path:
    """Check that ``path`` can be written and that writing it loses nothing; returns it as a :class:`Path`.

    Parameters
    ----------
    path
        The destination file.
    inputs
        Files the computation reads; the destination must not be one of them.
    what
        How the message names the destination (e.g. ``"--out"``).

    Raises
    ------
    OutputError
        Naming the path and the fix: it is an input, a folder, a read-only file, or its folder is missing,
        not a folder or not writable.
    """
    path = Path(path).expanduser()
    for source in inputs:
        if source and _same_file(path, Path(source).expanduser()):
            raise OutputError(
                f"{what} {path} is also an input; writing it would replace that scan. Choose another file name."
            )
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name inside it.")
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"{what} {path}: the folder {folder} does not exist. Create it or choose another folder.")
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is a file, not a folder.")
    if path.exists() and _read_only(path.stat().st_mode):
        raise OutputError(
            f"{what} {path} exists and is read-only; napari-medadapt does not replace protected files. "
            "Choose another file name, or make the file writable first."
        )
    if _read_only(folder.stat().st_mode):
        raise OutputError(f"{what} {path}: the folder {folder} is read-only. Choose a writable folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medadapt-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot write into {folder} ({err.strerror or err}).") from err
    return path


def _new_file_mode() -> int:
    """Permission bits a new file gets under the process's umask (patient data: often 077)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS, Windows): read the umask by setting it, then restore it
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(temporary_path)``, then move the temporary file onto ``path`` in one rename.

    The temporary file is hidden, lives in the destination folder and is removed when ``write`` fails or
    the process is interrupted; an existing destination keeps its permission bits, a new one gets those the
    user's umask allows.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name)
        os.chmod(tmp_name, path.stat().st_mode & 0o777 if path.exists() else _new_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, what: str = "output") -> Path:
    """Check ``path`` (:func:`check_output_path`) and write ``text`` (UTF-8) to it atomically."""
    path = check_output_path(path, what=what)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    try:
        return atomic_write(path, write)
    except OSError as err:
        raise OutputError(f"{what} {path} could not be written ({err.strerror or err}).") from err
