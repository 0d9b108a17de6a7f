"""Label post-processing a model card asks for, shared by every method that makes a whole-volume label map.

Plain inference, TTS and test-time adaptation all finish with :func:`postprocess_labels`, so their results
differ only by the method, never by the clean-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .models import ModelCard


def postprocess_labels(
    labels: np.ndarray, card: ModelCard, largest_component: bool | None = None
) -> tuple[np.ndarray, list[str]]:
    """The card's ``postprocess`` steps on a label map (``largest_component``: ``None`` follows the card).

    Every method that produces a whole-volume label map (plain inference, TTS, adaptation) runs this, so
    their results differ only by the method. Returns the labels (a new array when changed) and notes.
    """
    if largest_component is None:
        largest_component = bool(card.postprocess.get("largest_component", False))
    if not largest_component:
        return labels, []
    labels, removed = keep_largest_component(labels)
    note = f"Kept the largest connected component: removed {removed} voxels of smaller islands."
    return labels, [note] if removed else []


def keep_largest_component(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero every foreground voxel outside the largest face-connected component of ``labels != 0``.

    Uses ``scipy.ndimage.label`` (0.1 - 0.5 s on a 240 x 240 x 155 volume; MONAI's
    ``KeepLargestConnectedComponent`` took 6 s on the same volume through its tensor conversions).

    Returns
    -------
    labels, removed
        The cleaned labels (same dtype; a new array) and the number of voxels set to background.
    """
    from scipy import ndimage

    components, count = ndimage.label(labels != 0)
    if count <= 1:
        return labels.copy(), 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = components == int(np.argmax(sizes))
    return np.where(kept, labels, 0).astype(labels.dtype), int(sizes.sum() - sizes.max())


def keep_components_touching(labels: np.ndarray, marked: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero every foreground component of ``labels != 0`` that has no voxel in ``marked`` (the voxels a user
    painted as the object); the largest component when none touches it.

    The few-shot methods keep the object the user showed them: the largest component can be a false
    positive far from it, and an object in several pieces (both kidneys painted) keeps every piece.

    Returns
    -------
    labels, removed
        The cleaned labels (same dtype; a new array) and the number of voxels set to background.
    """
    from scipy import ndimage

    components, count = ndimage.label(labels != 0)
    touching = np.unique(components[np.asarray(marked, dtype=bool) & (components > 0)])
    if touching.size == 0:
        return keep_largest_component(labels)
    kept = np.isin(components, touching)
    return np.where(kept, labels, 0).astype(labels.dtype), int(np.count_nonzero(components) - np.count_nonzero(kept))
