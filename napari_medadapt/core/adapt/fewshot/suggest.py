"""Which slice to paint next: the unpainted slices along the support axis ranked by the gain a label there is
expected to bring.

A slice scores high when the adapted model is unsure of the object on it and it is far from every slice the
fit already learnt from:

- *uncertainty*: mean normalised entropy (entropy / log K, 0 = sure, 1 = uniform) of the probabilities over
  the object on the slice and a rim of :data:`RIM` pixels around it (the object: predicted, or foreground
  probability at least :data:`SOFT_OBJECT`), so a small object at an end of the structure is not diluted by a
  large bounding box of sure background;
- *distance*: to the nearest support slice (painted or marked empty), weighted ``d / (d + DISTANCE_HALF)``: a
  slice next to a painted one (``d = 1``) gains little, since the fit has nearly seen it;
- *object ends*: slices within a tenth of the object's extent of its first or last slice, or as far beyond
  it, where a model typically errs (the object shrinks, splits, or should stop), count :data:`END_WEIGHT` times.

Only slices within the predicted object's extent, widened by that tenth (at least :data:`MIN_BEYOND` slices)
each side, are candidates: a faint blob of probability far from the object is not where a label helps most
(and the post-processing keeps the components touching the painted object).

The weights were chosen on synthetic probability volumes (tests/test_fewshot.py), not on benchmark data; the
candidate window after a look at the training case du7294, where without it a faint blob 60 slices below the
tumour came first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .support import AXIS_NAMES, Support

#: Pixels of rim around the object on a slice that count towards its uncertainty.
RIM = 2
#: Foreground probability from which an unpredicted pixel still counts as (possible) object.
SOFT_OBJECT = 0.3
#: Distance to the nearest support slice at which the distance weight is one half.
DISTANCE_HALF = 3.0
#: Weight of a slice at an end of the predicted object (or just beyond it).
END_WEIGHT = 1.5
#: Share of the object's extent, at each end, that counts as its end (at least one slice).
END_SHARE = 0.1
#: Slices beyond each end of the predicted object that are still candidates (at least; else the end band).
MIN_BEYOND = 2

KINDS = {
    "end": "uncertain object end",
    "beyond": "possible object beyond its predicted end",
    "inside": "uncertain inside the object",
}


@dataclass(frozen=True)
class SliceSuggestion:
    """An unpainted slice worth painting, with why.

    Attributes
    ----------
    index
        The slice's index along :attr:`axis`.
    axis
        The support axis (0 axial, 1 coronal, 2 sagittal).
    score
        ``uncertainty x distance weight x end weight``: the ranking key.
    uncertainty
        Mean normalised entropy over the object and its rim on the slice (0 sure, 1 uniform).
    distance
        Slices to the nearest support slice.
    kind
        ``"end"``, ``"beyond"`` or ``"inside"`` (:data:`KINDS`).
    """

    index: int
    axis: int
    score: float
    uncertainty: float
    distance: int
    kind: str

    def describe(self) -> str:
        """One line for a user, e.g. ``axial slice 112: uncertain object end, 15 slices from the nearest painted
        slice, mean uncertainty 0.31``."""
        plural = "" if self.distance == 1 else "s"
        return (
            f"{AXIS_NAMES[self.axis]} slice {self.index}: {KINDS[self.kind]}, {self.distance} slice{plural} from "
            f"the nearest painted slice, mean uncertainty {self.uncertainty:.2f}"
        )


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=pixels) if pixels > 0 and mask.any() else mask


def _entropy(p: np.ndarray) -> np.ndarray:
    """Normalised entropy over the first axis of ``p`` (K, ...)."""
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], np.float32)
    h = -(p * np.log(np.clip(p, 1e-6, 1.0))).sum(axis=0)
    return np.clip(h / np.log(k), 0.0, 1.0)


def rank_slices(
    probabilities: np.ndarray, predicted: np.ndarray, support: Support, count: int = 3
) -> list[SliceSuggestion]:
    """The ``count`` unpainted slices along the support axis with the highest expected gain, best first.

    Parameters
    ----------
    probabilities
        ``(K, Z, Y, X)`` class probabilities (background first).
    predicted
        ``(Z, Y, X)`` predicted labels.
    support
        The fit's support: its axis and the slices already used (painted or marked empty).
    count
        How many slices to return.

    Returns
    -------
    list of SliceSuggestion
        Empty when no object is predicted or possible anywhere off the support slices.
    """
    axis = support.axis
    reduce = tuple(a for a in range(3) if a != axis)
    fg = predicted > 0
    along = np.flatnonzero(fg.any(axis=reduce))
    taken = np.asarray(sorted(set(support.indices)), dtype=np.int64)
    if along.size == 0:
        return []
    first, last = int(along[0]), int(along[-1])
    band = max(1, int(round(END_SHARE * (last - first + 1))))
    skip = set(taken.tolist())
    beyond = max(MIN_BEYOND, band)
    found = []
    for index in range(max(first - beyond, 0), min(last + beyond + 1, predicted.shape[axis])):
        if index in skip:
            continue
        p = np.take(probabilities, index, axis=1 + axis).astype(np.float32)
        objects = np.take(fg, index, axis=axis)
        region = objects | (1.0 - p[0] >= SOFT_OBJECT)
        if not region.any():
            continue  # the model is sure nothing is here
        region = _dilate(region, RIM)
        uncertainty = float(_entropy(p)[region].mean())
        distance = int(np.abs(taken - index).min()) if taken.size else predicted.shape[axis]
        if index < first or index > last:
            kind = "beyond"
        elif index < first + band or index > last - band:
            kind = "end"
        else:
            kind = "inside"
        weight = distance / (distance + DISTANCE_HALF) * (END_WEIGHT if kind in ("end", "beyond") else 1.0)
        found.append(SliceSuggestion(index, axis, uncertainty * weight, uncertainty, distance, kind))
    found.sort(key=lambda s: (-s.score, s.index))
    return found[:count]
