"""Is a scan skull-stripped, and brain extraction when it is not (deepbet).

Detection: a skull-stripped scan (BraTS-style) has nothing outside the brain: the voxels outside its object
hold exactly the background value (0, or a constant such as -3.2 after z-scoring:
:func:`~napari_medadapt.core.intensity.background_value`) and the object is brain-sized. A scan counts as
stripped when at least :data:`STRIPPED_OUTSIDE_ZERO` of the voxels more than 3 voxels away from its largest
object hold the background value and its other voxels add up to at most :data:`MAX_BRAIN_ML`; a raw export has a noise floor outside the
head, or (when the scanner zeroes the background) a head larger than any brain.

Extraction: deepbet (Fisch et al., Computers in Biology and Medicine 2024; MIT licence; PyPI ``deepbet``
1.0.2, whose wheel ships the two TorchScript networks), trained on T1-weighted scans: the mask is computed on
the T1 (else T1c, else the reference sequence, with a note) after co-registration and applies to every
sequence. The network files are found through the installed package's file list and checked against their
pinned sha256 before they are loaded (they come with a declared dependency; any other file is refused).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import ModelError, VolumeError
from ..hashing import sha256_file
from ..intensity import background_value
from ..jobs import JobContext, ensure_context
from ..postprocess import keep_largest_component

#: Fraction of the voxels away from the object that must be exactly zero in a skull-stripped scan.
STRIPPED_OUTSIDE_ZERO = 0.95
#: Largest non-zero volume (mL) of a skull-stripped scan (adult brains are about 1000-1700 mL).
MAX_BRAIN_ML = 2200.0
#: deepbet 1.0.2's networks: package file -> sha256.
DEEPBET_FILES = {
    "data/models/model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
    "data/models/bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
}
#: Sequences the brain mask is computed on, in order of preference (deepbet was trained on T1-weighted scans).
MASK_SEQUENCES = ("t1", "t1c")


@dataclass
class StripCheck:
    """Whether a scan looks skull-stripped, and the figures behind the verdict."""

    stripped: bool
    outside_zero: float
    nonzero_ml: float

    def describe(self, name: str) -> str:
        """One sentence for the user."""
        if self.stripped:
            return f"{name} looks skull-stripped (nothing outside a {self.nonzero_ml:.0f} mL brain)."
        return (
            f"{name} is not skull-stripped ({self.nonzero_ml:.0f} mL of non-zero voxels, "
            f"{100 * self.outside_zero:.0f}% zeros around the head)."
        )


def check_stripped(array: np.ndarray, spacing: tuple[float, float, float]) -> StripCheck:
    """Whether ``array`` (one sequence, display order) looks skull-stripped (large arrays are checked on every
    second voxel: the verdict is about millilitres, not voxels)."""
    if array.size > 4_000_000:
        array, spacing = array[::2, ::2, ::2], tuple(2 * s for s in spacing)
    background = background_value(array)  # 0, or the constant of a z-scored stripped scan (e.g. -3.2)
    nonzero = array != background
    voxel_ml = float(np.prod(spacing)) / 1000.0
    nonzero_ml = float(nonzero.sum()) * voxel_ml
    if not nonzero.any():
        return StripCheck(False, 1.0, 0.0)
    largest, _removed = keep_largest_component(nonzero)
    away = ~ndimage.binary_dilation(largest, iterations=3)
    outside_zero = float((array[away] == background).mean()) if away.any() else 0.0
    return StripCheck(outside_zero >= STRIPPED_OUTSIDE_ZERO and nonzero_ml <= MAX_BRAIN_ML, outside_zero, nonzero_ml)


def unstripped_note(model: str, name: str, array: np.ndarray, spacing: tuple[float, float, float]) -> str | None:
    """The warning for a model trained on skull-stripped MRI when its input ``name`` is not skull-stripped."""
    check = check_stripped(array, spacing)
    if check.stripped:
        return None
    return (
        f"{check.describe(name)} Model {model} was trained on skull-stripped scans and labels tissue outside the "
        "brain (such as scalp fat) too: prepare the scans first (the Prepare scans dock, medadapt preprocess, or "
        "medadapt segment --preprocess)."
    )


def deepbet_files() -> dict[str, Path]:
    """deepbet's network files, found in the installed package and checked against their sha256."""
    from importlib import metadata

    try:
        files = {str(f): Path(f.locate()) for f in metadata.files("deepbet") or ()}
    except metadata.PackageNotFoundError:
        raise ModelError(
            "Brain extraction needs the package deepbet 1.0.2: pip install 'deepbet==1.0.2' (it comes with "
            "napari-medadapt; reinstall napari-medadapt if it is missing)."
        ) from None
    found = {}
    for name, expected in DEEPBET_FILES.items():
        path = files.get(name)
        if path is None or not path.is_file():
            raise ModelError(f"deepbet's network {name} is missing; reinstall it: pip install --force-reinstall 'deepbet==1.0.2'.")
        if sha256_file(path) != expected:
            raise ModelError(
                f"{path} is not deepbet 1.0.2's network (sha256 differs); refusing to load it. Reinstall: "
                "pip install --force-reinstall 'deepbet==1.0.2'."
            )
        found[name] = path
    return found


def _to_ras(array_zyx: np.ndarray) -> np.ndarray:
    """Display (LPS, z y x) -> the (x y z) RAS order deepbet was trained in."""
    return np.ascontiguousarray(array_zyx.transpose(2, 1, 0)[::-1, ::-1, :])


def _from_ras(array_xyz: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array_xyz[::-1, ::-1, :].transpose(2, 1, 0))


def extract_brain(array: np.ndarray, *, device: Any = None, ctx: JobContext | None = None) -> np.ndarray:
    """The brain mask (bool, display order) of a T1-weighted ``array`` with deepbet (threshold 0.5, largest
    component, voids filled)."""
    import torch

    from ..device import select_device

    ctx = ensure_context(ctx)
    files = deepbet_files()
    ctx.progress(0, 2, "brain extraction: loading deepbet")
    from deepbet.bet import BrainExtraction

    torch_device = device if isinstance(device, torch.device) else select_device(device)
    with warnings.catch_warnings():  # deepbet ships TorchScript networks; torch 2.13 calls the loader deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
        extraction = BrainExtraction(
            no_gpu=True, model_path=str(files["data/models/model.pt"]),
            bbox_model_path=str(files["data/models/bbox_model.pt"]),
        )
    extraction.model.to(torch_device)
    extraction.bbox_model.to(torch_device)
    ctx.progress(1, 2, "brain extraction: running deepbet")
    try:
        probability = extraction.run_model(_to_ras(array.astype(np.float32)))
        mask = extraction.postprocess(probability > 0.5)
    except (ValueError, AssertionError, RuntimeError) as exc:  # deepbet found no head or no brain
        raise VolumeError(
            f"Brain extraction found no brain in this scan ({type(exc).__name__}: {exc}). Is it a brain MRI covering "
            "the head? Switch brain extraction off for other scans."
        ) from exc
    ctx.progress(2, 2, "brain extraction: done")
    return _from_ras(mask.astype(bool))
