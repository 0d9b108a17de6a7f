"""Shared helpers of the bad-input corpus tests: a valid small NIfTI file, byte edits of its header,
and the "clear message, no traceback" checks."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (10, 12, 8)
AFFINE = np.diag([0.9, 0.9, 2.0, 1.0])


def valid_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 500, SHAPE).astype(np.int16) if data is None else data
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def edit_header(path: Path, edit: Callable[[bytearray], None]) -> Path:
    """Apply a byte edit to a valid uncompressed NIfTI-1 file (header fields at their standard offsets)."""
    valid_nifti(path)
    raw = bytearray(path.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    return path


def pack(fmt: str, offset: int, *values: float) -> Callable[[bytearray], None]:
    return lambda raw: struct.pack_into(fmt, raw, offset, *values)


def both(*edits: Callable[[bytearray], None]) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        for one in edits:
            one(raw)

    return edit


# name -> header edit; dim at 40 (8 int16), datatype 70, bitpix 72, pixdim 76 (8 float32), vox_offset 108,
# scl_slope 112, qform_code 252, sform_code 254, quatern/offsets 256.., srow 280.., magic 344
def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def assert_clear(err: BaseException | str, *words: str) -> None:
    message = str(err)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
