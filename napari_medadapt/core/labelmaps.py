"""Label maps in NIfTI files: recognising them, reading them onto an image grid, writing them back.

A file is a label map when its header says so (NIfTI intent code 1002 ``label``, which :func:`save_labels`
always writes), or when its name says so (a token such as ``seg``, ``segmentation``, ``label(s)``,
``labelmap``, ``mask`` or a word ending in ``seg``/``mask``/``label``, e.g. ``aseg``, ``brainmask``) and its
voxels are integers. ``flair_masked`` is an image: "masked" describes an image.

:func:`save_labels` writes atomically on the exact source grid of the image the labels belong to (shape,
affine, qform/sform codes), refuses to replace an input or a read-only file, and stores the class names
(when given) in a NIfTI comment extension that :func:`label_class_names` reads back.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import VolumeError
from .files import OutputError, check_output_path, write_text_atomic
from .geometry import Geometry
from .volume import (
    file_geometry,
    file_layout,
    is_nifti_path,
    name_tokens,
    open_nifti,
    source_grid_image,
    write_nifti,
)

__all__ = [
    "LABEL_INTENT", "is_label_file", "is_label_name", "label_class_names", "load_labels", "save_labels",
    "written_by_medadapt",
]  # fmt: skip

#: NIfTI intent code of a label map ("the value at each voxel is an index into some set of labels").
LABEL_INTENT = "label"
_LABEL_TOKEN = re.compile(r"^(?:seg[a-z]*\d*|labels?\d*|labelmap|masks?\d*|annotations?|[a-z]+(?:seg|mask|labels?))$")
_EXTENSION_KEY = "napari-medadapt"


def is_label_name(name: str | os.PathLike) -> bool:
    """Whether a file or layer name denotes a label map (``seg_fusion``, ``brain_mask``, ``Labels``, ``aseg``).

    Whole tokens count, so ``flair_masked`` or ``t1_segmental`` ... are images unless another token says
    otherwise.
    """
    return any(_LABEL_TOKEN.match(token) for token in name_tokens(name))


def _header_intent(image: nib.Nifti1Image) -> str:
    try:
        return str(image.header.get_intent()[0])
    except (KeyError, ValueError):  # an intent code nibabel does not know: not ours
        return "unknown"


def is_label_file(path: str | os.PathLike) -> bool:
    """Whether a NIfTI file is a label map: its header's intent is ``label``, or its name says so and its
    voxels are integers (a float file named ``*_seg`` with fractional values is an image, e.g. a probability
    map). Reads the voxels only for a label-named file stored as floats."""
    image = open_nifti(path)
    intent = _header_intent(image)
    if intent == LABEL_INTENT:
        return True
    if intent not in ("none", "unknown") or not is_label_name(path):
        return False
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    if image.get_data_dtype().kind in "iub" and _whole(slope) and _whole(intercept):
        return True
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, MemoryError):
        return True  # let load_labels report the unreadable voxels
    return bool(np.all(np.isfinite(data)) and _near_integers(data))


#: Label values stored with a scale factor a hair off 1 (0.99999997, as some converters write) are integers
#: within this distance: they are rounded, anything further is not a label map.
INTEGER_TOLERANCE = 1e-3


def _whole(value: float) -> bool:
    """A scale factor (slope or intercept) that keeps integers integers."""
    return bool(np.isnan(value) or float(value) == round(float(value)))


def _near_integers(data: np.ndarray) -> bool:
    return bool(data.size == 0 or np.max(np.abs(data - np.round(data))) <= INTEGER_TOLERANCE)


def written_by_medadapt(path: str | os.PathLike) -> bool:
    """Whether a NIfTI file is a label map written by :func:`save_labels` (intent ``label`` named ``labels``, or
    the plugin's header document): such a file may be replaced by new labels; any other file is the user's."""
    image = open_nifti(path)
    if _header_intent(image) != LABEL_INTENT:
        return False
    name = image.header.get_intent()[2]
    return name == "labels" or bool(read_medadapt_extension(path))


def read_medadapt_extension(path: str | os.PathLike) -> dict[str, Any]:
    """The plugin's document in a NIfTI file's header (``classes``, ``provenance``), or ``{}``."""
    image = open_nifti(path)
    for extension in image.header.extensions:
        if extension.get_code() != 6:  # comment
            continue
        try:
            document = json.loads(extension.get_content())[_EXTENSION_KEY]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(document, dict):
            return document
    return {}


def sidecar_path(label_path: str | os.PathLike) -> Path:
    """Where a label file's provenance sidecar goes: ``labels.nii.gz`` -> ``labels.provenance.json`` beside it
    (a name of its own: ``labels.json`` may be a model card or another tool's file)."""
    path = Path(label_path)
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem
    return path.with_name(f"{stem}.provenance.json")


def _check_sidecar(path: Path, inputs: Iterable[str | os.PathLike]) -> Path:
    """The sidecar may replace only an earlier provenance record (never an input or another file)."""
    sidecar = check_output_path(sidecar_path(path), inputs=inputs, what="Provenance file")
    if sidecar.exists():
        try:
            ours = json.loads(sidecar.read_text(encoding="utf-8")).get("format", "").startswith("napari-medadapt")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputError(
                f"{sidecar} exists and is not a napari-medadapt provenance record; it is left as it is. Move it, "
                "or save the labels under another name."
            )
    return sidecar


def label_class_names(path: str | os.PathLike) -> dict[int, str]:
    """``{label id: class name}`` stored by :func:`save_labels` in the file, or ``{}``."""
    classes = read_medadapt_extension(path).get("classes")
    try:
        return {int(k): str(v) for k, v in classes.items()} if isinstance(classes, dict) else {}
    except (ValueError, TypeError):
        return {}


def _integer_labels(data: np.ndarray, what: str) -> np.ndarray:
    """Check labels are finite integers and cast them to the smallest fitting integer dtype."""
    data = np.asarray(data)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise VolumeError(f"{what} contains NaN or Inf; labels must be finite integers.")
        if not _near_integers(data):
            raise VolumeError(
                f"{what} has non-integer values; labels must be integers (0 = background). A map of fractions "
                "(a probability or partial-volume map) opens as an image."
            )
        data = np.round(data)  # a scale factor a hair off 1 (0.99999997): the stored values are integers
    elif data.dtype.kind not in "iu":
        raise VolumeError(f"{what} has dtype {data.dtype}; labels must be integers.")
    if data.size == 0:
        raise VolumeError(f"{what} is empty.")
    low, high = data.min(), data.max()
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.astype(dtype, copy=False)
    raise VolumeError(f"{what} has label values outside the int32 range ({low}..{high}).")


def load_labels(path: str | os.PathLike, geometry: Geometry | None = None) -> np.ndarray:
    """Read a label map as a ``(Z, Y, X)`` integer array on ``geometry``'s display grid.

    The file must describe the same grid (shape and world affine) as ``geometry`` (default: its own); it may
    be stored in another axis order. Values must be finite integers (scaling is applied first). The dtype is
    uint8 when the values fit 0..255, else int16 or int32.
    """
    image = open_nifti(path)
    spatial, kind, _channels = file_layout(image, path)
    if kind != "volume":
        raise VolumeError(f"{path} has shape {image.shape}; a label map must be a single 3D volume.")
    own = file_geometry(image, spatial, path)
    if geometry is not None and not own.matches(geometry):
        raise VolumeError(
            f"The label map {path} is not on the image grid: labels {own.describe()}; image "
            f"{geometry.describe()}. Use labels made for this image (or resample them onto it)."
        )
    try:
        data = np.asanyarray(image.dataobj)
    except MemoryError as exc:
        raise VolumeError(f"{path} ({image.shape}) does not fit in the free memory.") from exc
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise VolumeError(f"The voxel data of {path} cannot be read ({exc}); the file may be truncated.") from exc
    labels = _integer_labels(data.reshape(spatial), f"Label map {path}")
    return own.to_display(labels)


def _medadapt_extension(class_names: Mapping[int, str] | None, provenance: Mapping[str, Any] | None) -> nib.nifti1.Nifti1Extension:
    document: dict[str, Any] = {}
    if class_names:
        document["classes"] = {str(int(k)): str(v) for k, v in sorted(class_names.items())}
    if provenance:
        document["provenance"] = dict(provenance)
    return nib.nifti1.Nifti1Extension("comment", json.dumps({_EXTENSION_KEY: document}).encode("utf-8"))


def save_labels(
    labels_zyx: np.ndarray,
    geometry: Geometry,
    path: str | os.PathLike,
    *,
    class_names: Mapping[int, str] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a display-grid label map as NIfTI on the source grid of ``geometry``, atomically.

    The file gets the source's spatial shape, affine, qform/sform codes and units, the intent code
    ``label`` (so napari-medadapt reopens it as labels whatever its name) and, when given, the class names;
    scaling is reset (slope 1, intercept 0) and the dtype is the smallest integer type holding the labels.
    The data go to a hidden temporary file in the destination folder, which then replaces ``path``.

    Parameters
    ----------
    labels_zyx
        Integer (or bool / integer-valued float) array of shape ``geometry.display_shape``.
    geometry
        Grid of the image the labels were drawn on.
    path
        Destination ending in ``.nii.gz`` or ``.nii``.
    class_names
        ``{label id: name}`` stored in the file.
    inputs
        Files that must not be replaced (the images the labels were computed from).
    provenance
        A record of :mod:`~napari_medadapt.core.provenance`: stored in the header beside the class names and in
        the sidecar ``<name>.json`` (written atomically after the labels; refused when it is an input).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    VolumeError
        Wrong name or shape, non-integer labels; :class:`~napari_medadapt.core.files.OutputError` (also a
        user error) for an input, a read-only file or an unwritable folder.
    """
    if not is_nifti_path(path):
        raise VolumeError(f"Cannot save labels to {path}: the file name must end in .nii.gz or .nii.")
    path = check_output_path(path, inputs=inputs, what="Labels file")
    labels_zyx = np.asarray(labels_zyx)
    if labels_zyx.shape != geometry.display_shape:
        raise VolumeError(
            f"The labels have shape {labels_zyx.shape} but the image grid they are saved against has "
            f"display shape {geometry.display_shape} (source shape {geometry.source_shape}); save labels "
            "drawn on this image."
        )
    image = source_grid_image(geometry.to_source(_integer_labels(labels_zyx, "The label array")), geometry)
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    image.header.set_intent(LABEL_INTENT, name="labels")
    extensions = image.header.extensions
    for extension in [e for e in extensions if e.get_code() == 6 and _EXTENSION_KEY.encode() in e.get_content()]:
        extensions.remove(extension)
    if class_names or provenance:
        extensions.append(_medadapt_extension(class_names, provenance))
    if provenance:
        sidecar = _check_sidecar(path, inputs)
    written = write_nifti(image, path)
    if provenance:
        write_text_atomic(sidecar, json.dumps(dict(provenance), indent=2) + "\n", what="Provenance file")
    return written
