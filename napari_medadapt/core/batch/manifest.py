"""The manifest of a batch run: one JSON line per case attempt, appended under a file lock.

``OUT/manifest.jsonl`` records for each case: its id, status (``done`` or ``failed``) and error message, the
inputs' sha256, the model's (and adapter's) name and sha256, the method and every setting, versions, device,
timings, the output file and its sha256, and the run that wrote it. A rerun skips a case whose latest record
is ``done`` with the same inputs, model and settings and whose output still exists unchanged; everything else
is done again. Appends take an exclusive lock on ``OUT/.manifest.lock``, so two runs on the same folder (job
array parts, or a user starting one twice) never interleave lines.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..hashing import sha256_file

MANIFEST = "manifest.jsonl"
LOCK = ".manifest.lock"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder``'s manifest (blocking; released on exit). On a file system without locks
    (some NFS/Lustre mounts) the run goes on unlocked: one run per output folder is then the user's to ensure."""
    handle = open(folder / LOCK, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # Windows: msvcrt locks a byte range
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
        except OSError:
            pass
        yield
    finally:
        handle.close()


def append(folder: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of ``folder``'s manifest (locked, flushed to disk)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    path = folder / MANIFEST
    with locked(folder), open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell():  # a line cut short by a killed run is closed first, so this record stays readable
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read(folder: Path) -> list[dict[str, Any]]:
    """Every record of ``folder``'s manifest (a truncated last line, from a killed run, is skipped)."""
    path = folder / MANIFEST
    if not path.is_file():
        return []
    records = []
    with locked(folder):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of every case id."""
    return {r["case_id"]: r for r in records if "case_id" in r}


def is_current(record: dict[str, Any] | None, key: dict[str, Any], folder: Path) -> bool:
    """Whether ``record`` is a finished case whose inputs, model and settings equal ``key`` and whose output is
    still the file it wrote."""
    if record is None or record.get("status") != "done" or record.get("key") != key:
        return False
    output = record.get("output")
    if output is None:
        return True
    path = folder / output
    return path.is_file() and sha256_file(path) == record.get("output_sha256")
