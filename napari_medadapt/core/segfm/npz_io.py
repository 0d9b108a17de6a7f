"""Reading and writing the case files of the CVPR 2025 interactive 3D segmentation challenge ("SegFM").

A case is an ``.npz`` with ``imgs`` (D, H, W), ``spacing``, and the interactions: ``boxes`` (one dict per
class: ``z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max, z_mid_y_max``), ``clicks`` (one
``{"fg": [[z, y, x], ...], "bg": [...]}`` per class), ``clicks_order`` (per class, ``"fg"``/``"bg"``/``None``
per step) and ``prev_pred``. ``boxes``, ``clicks`` and ``clicks_order`` are stored by numpy as pickled object
arrays; they are read here with :class:`RestrictedUnpickler`, which admits only plain containers, strings,
numbers and the exact numpy globals that ``np.save`` writes for numeric scalars and arrays; numpy's own pickle
loading is never switched on.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedAdaptError
from ..interactive.interactions import Box3D

#: The globals a pickled numeric/object ndarray and numpy scalars need (numpy 2 and numpy 1 spellings).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
_PLAIN = (list, dict, tuple, str, int, float, bool, type(None), np.integer, np.floating, np.bool_, np.str_)


class SegFMInputError(MedAdaptError):
    """A case file that cannot be used; the message names the file, the key and the fix."""


class UnsafePickleError(SegFMInputError):
    """A pickled entry asked for something other than plain data."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (by exact module and name); everything else
    (``os.system``, ``builtins.eval``, ...) is refused before it can run."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, refuse all others."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refused the pickled global {module}.{name} (only plain data is accepted)")
        if module.endswith("multiarray"):
            try:  # numpy >= 2; a numpy 1 file's name maps to the same functions
                from numpy._core import multiarray
            except ImportError:  # pragma: no cover - numpy 1
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return getattr(np, name)


def _check_plain(value: Any, where: str) -> None:
    """Only plain containers, strings and numbers (numeric ndarrays allowed) may come out of a pickle."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            for item in value.ravel():
                _check_plain(item, where)
        elif value.dtype.kind not in "biuf":
            raise UnsafePickleError(f"{where}: an array of dtype {value.dtype} is not plain data")
        return
    if not isinstance(value, _PLAIN):
        raise UnsafePickleError(f"{where}: a {type(value).__name__} is not plain data")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, where)
            _check_plain(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)


def read_npy(data: bytes, where: str) -> np.ndarray:
    """Read one ``.npy`` member: numeric arrays as usual, object arrays through the restricted unpickler."""
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as err:
        raise SegFMInputError(f"{where}: not a numpy array ({err}).") from err
    if dtype.hasobject:
        try:
            value = RestrictedUnpickler(handle).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{where}: {err}; this file was not written by the challenge's tools. Refused.") from err
        except Exception as err:  # malformed stream
            raise SegFMInputError(f"{where}: unreadable pickled data ({type(err).__name__}: {err}).") from err
        _check_plain(value, where)
        return np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    handle.seek(0)
    try:
        return np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as err:
        raise SegFMInputError(f"{where}: unreadable array ({err}).") from err


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (numpy's pickle loading stays off); object arrays via the restricted unpickler."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                key = member[:-4]
                out[key] = read_npy(archive.read(member), f"{path.name}: key '{key}'")
    except (zipfile.BadZipFile, OSError) as err:
        raise SegFMInputError(f"{path.name}: not a readable .npz file ({err}).") from err
    return out


@dataclass
class ClassClicks:
    """One class's clicks: ``fg`` and ``bg`` as ``(z, y, x)`` tuples and the order they came in."""

    fg: list[tuple[int, int, int]] = field(default_factory=list)
    bg: list[tuple[int, int, int]] = field(default_factory=list)
    order: list[str | None] = field(default_factory=list)

    def sequence(self) -> list[tuple[tuple[int, int, int], bool]]:
        """Every click in the order given: ``((z, y, x), positive)``."""
        out, nf, nb = [], 0, 0
        for kind in self.order:
            if kind == "fg" and nf < len(self.fg):
                out.append((self.fg[nf], True))
                nf += 1
            elif kind == "bg" and nb < len(self.bg):
                out.append((self.bg[nb], False))
                nb += 1
        out += [(p, True) for p in self.fg[nf:]] + [(p, False) for p in self.bg[nb:]]  # no order recorded
        return out

    @property
    def newest(self) -> tuple[tuple[int, int, int], bool] | None:
        """The click of the last step, or ``None`` when the last step added none for this class."""
        if self.order and self.order[-1] is None:
            return None
        seq = self.sequence()
        return seq[-1] if seq else None


@dataclass
class SegFMCase:
    """One case: image (D, H, W), spacing, per-class boxes and clicks, the previous prediction."""

    name: str
    imgs: np.ndarray
    spacing: tuple[float, float, float]
    boxes: list[Box3D] | None
    clicks: list[ClassClicks] | None
    prev_pred: np.ndarray | None

    @property
    def n_classes(self) -> int:
        """Number of classes (box entries, else click entries)."""
        return len(self.boxes) if self.boxes is not None else len(self.clicks or [])


def _as_int(value: Any, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError) as err:
        raise SegFMInputError(f"{where}: {value!r} is not a number.") from err
    if not np.isfinite(f) or f != int(f):
        raise SegFMInputError(f"{where}: {value!r} is not a whole number.")
    return int(f)


def _points(value: Any, where: str, shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    if value is None:
        return []
    out = []
    for k, p in enumerate(list(value)):
        coords = np.asarray(p, dtype=object).ravel()
        if coords.size != 3:
            raise SegFMInputError(f"{where}[{k}]: a click is [z, y, x]; got {p!r}.")
        zyx = tuple(_as_int(v, f"{where}[{k}]") for v in coords)
        if any(not 0 <= v < n for v, n in zip(zyx, shape, strict=True)):
            raise SegFMInputError(
                f"{where}[{k}]: the click {list(zyx)} lies outside the image {list(shape)} (z, y, x). "
                "Give clicks inside the volume."
            )
        out.append(zyx)
    return out


def load_case(path: str | Path) -> SegFMCase:
    """Read and check one case file; raises :class:`SegFMInputError` naming the file and key."""
    path = Path(path)
    data = read_npz(path)
    name = path.name
    if "imgs" not in data:
        raise SegFMInputError(f"{name}: no 'imgs' key; a case holds the image as imgs (D, H, W).")
    imgs = data["imgs"]
    if imgs.ndim != 3 or imgs.dtype.kind not in "biuf" or min(imgs.shape) < 1:
        raise SegFMInputError(
            f"{name}: key 'imgs' has shape {imgs.shape} ({imgs.dtype}); a case needs one 3D image (D, H, W) of "
            "numbers (uint8 in the challenge)."
        )
    shape = tuple(int(s) for s in imgs.shape)
    spacing = (1.0, 1.0, 1.0)
    if "spacing" in data:
        sp = np.asarray(data["spacing"], dtype=np.float64).ravel()
        if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise SegFMInputError(f"{name}: key 'spacing' must hold 3 positive numbers; got {sp.tolist()}.")
        spacing = tuple(float(v) for v in sp)
    boxes = None
    if "boxes" in data:
        boxes = []
        for k, d in enumerate(list(np.asarray(data["boxes"], dtype=object).ravel())):
            where = f"{name}: key 'boxes'[{k}]"
            if not isinstance(d, dict) or any(key not in d for key in BOX_KEYS):
                raise SegFMInputError(f"{where}: a box is a dict with {', '.join(BOX_KEYS)}; got {d!r}.")
            vals = {key: _as_int(d[key], f"{where}['{key}']") for key in BOX_KEYS}
            box = Box3D.from_dict(vals)
            r0, c0, r1, c1 = box.rect
            if not box.z_min <= box.z_mid <= box.z_max:
                raise SegFMInputError(f"{where}: needs z_min <= z_mid <= z_max; got {box.z_min}, {box.z_mid}, {box.z_max}.")
            if box.z_min < 0 or box.z_max >= shape[0] or r0 < 0 or c0 < 0 or r1 >= shape[1] or c1 >= shape[2]:
                raise SegFMInputError(f"{where}: {vals} lies outside the image {list(shape)} (z, y, x).")
            if r0 > r1 or c0 > c1:
                raise SegFMInputError(f"{where}: needs x_min <= x_max and y_min <= y_max; got {vals}.")
            boxes.append(box)
    clicks = None
    if "clicks" in data:
        raw = list(np.asarray(data["clicks"], dtype=object).ravel())
        orders = list(np.asarray(data["clicks_order"], dtype=object)) if "clicks_order" in data else []
        clicks = []
        for k, d in enumerate(raw):
            where = f"{name}: key 'clicks'[{k}]"
            if not isinstance(d, dict):
                raise SegFMInputError(f"{where}: a class's clicks are a dict {{'fg': [...], 'bg': [...]}}; got {d!r}.")
            order_k = [None if o is None else str(o) for o in np.asarray(orders[k], dtype=object).ravel()] if k < len(orders) else []
            if any(o not in ("fg", "bg", None) for o in order_k):
                raise SegFMInputError(f"{name}: key 'clicks_order'[{k}] may hold only 'fg', 'bg' or None; got {order_k}.")
            clicks.append(ClassClicks(_points(d.get("fg"), f"{where}['fg']", shape),
                                      _points(d.get("bg"), f"{where}['bg']", shape), order_k))
        if boxes is not None and len(clicks) > len(boxes):
            raise SegFMInputError(
                f"{name}: key 'boxes' has {len(boxes)} entries but 'clicks' has {len(clicks)}; every class needs a "
                "box when the case has boxes."
            )
    if boxes is None and not any(c.sequence() for c in clicks or []):
        raise SegFMInputError(f"{name}: neither 'boxes' nor any 'clicks'; a case needs one of them per class.")
    if clicks is not None:
        for k, c in enumerate(clicks):
            if boxes is None and c.order and not c.sequence():
                raise SegFMInputError(f"{name}: key 'clicks'[{k}]: a class without a box needs a click.")
    prev = None
    if "prev_pred" in data:
        prev = data["prev_pred"]
        if prev.shape != imgs.shape or prev.dtype.kind not in "biu":
            raise SegFMInputError(
                f"{name}: key 'prev_pred' has shape {prev.shape} ({prev.dtype}); it must be an integer label map "
                f"of the image's shape {list(shape)}."
            )
    return SegFMCase(name, imgs, spacing, boxes, clicks, prev)


def save_case(path: str | Path, **arrays: Any) -> Path:
    """``np.savez_compressed`` to ``path`` atomically (a temporary file in the same folder, then one rename)."""
    from ..files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(Path(path), write, suffix=".npz")
