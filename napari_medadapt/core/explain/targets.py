"""What an explanation is about, and which bank explains it: shared by the CLI, the Python API and the dock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, PromptError
from .bank import PrototypeBank, check_bank, find_bank, load_bank

BUILD_HINT = (
    "build a post-hoc prototype bank from a folder of labelled cases: medadapt prototype-bank --model {name} "
    "--cases FOLDER --out {name}.prototypes.json (or 'Build bank...' in the Prototype explanations dock)"
)


def resolve_bank(model: Any, bank: str | Path | None = None) -> PrototypeBank:
    """The bank given, else the model's own (beside its card or in the user cache). ``model``: a loaded model
    (the bank is checked against it), or only its card (checked against the card's weights sha256: nothing is
    loaded, so a dock can look for the bank at once).

    Raises
    ------
    ModelError
        No bank exists for the model (the message says how to build one), or the given bank is another model's.
    """
    card = getattr(model, "card", model)
    if bank is not None:
        found = load_bank(bank)
        check_bank(found, model)
        return found
    found = find_bank(model)
    if found is None:
        head = bool((card.architecture or {}).get("prototypes"))
        kind = "has a prototype head but no projected bank" if head else "has no prototypes"
        raise ModelError(f"the model {card.name!r} {kind}; " + BUILD_HINT.format(name=card.name) + ".")
    return found


def region_mask(labels: np.ndarray, values: Sequence[int] | None = None, *, what: str = "the region labels") -> np.ndarray:
    """Voxels of ``labels`` with one of ``values`` (default: any non-zero label).

    Raises
    ------
    PromptError
        None of the values occurs (the message lists those present).
    """
    labels = np.asarray(labels)
    mask = labels != 0 if not values else np.isin(labels, [int(v) for v in values])
    if not mask.any():
        present = sorted(int(v) for v in np.unique(labels) if v != 0)
        asked = "any non-zero label" if not values else f"label values {list(values)}"
        raise PromptError(f"{what} contains no voxel with {asked} (present: {present or 'none'}); choose values that occur.")
    return mask


def component_at(labels: np.ndarray, zyx: Sequence[int]) -> np.ndarray:
    """The 3D connected component (26-connectivity) of ``labels``'s non-zero voxels containing ``zyx``.

    Raises
    ------
    PromptError
        The voxel is background.
    """
    from scipy import ndimage

    z, y, x = (int(i) for i in zyx)
    if labels[z, y, x] == 0:
        raise PromptError(f"the voxel {(z, y, x)} is background in the prediction; click inside a predicted region.")
    components, _count = ndimage.label(labels != 0, structure=np.ones((3, 3, 3), dtype=bool))
    return components == components[z, y, x]

