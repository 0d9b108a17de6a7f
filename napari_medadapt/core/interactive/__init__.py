"""3D objects edited by interactions (3D box, clicks, scribbles, lasso, a mask), Qt-free.

:class:`ObjectSet` holds several non-overlapping objects with their own undo history; an :class:`ObjectEngine`
computes an object's new 3D mask from each interaction (:class:`SliceEngine`: a 2D promptable model slice by
slice; a native 3D model can implement the same interface); :class:`ObjectEditor` keeps a session's objects per
image and edits them in jobs. Importing this package does not import torch.
"""

from .editor import LiveMask, ObjectEditor, ObjectsSnapshot, ObjectSummary
from .engine import ObjectEngine, SliceEngine
from .interactions import (
    Box3D,
    Click,
    Interaction,
    Lasso,
    MaskPrompt,
    ObjectState,
    Scribble,
    given_on,
    in_frame,
    polygon_mask,
    sample_points,
)
from .objects import ObjectSet

__all__ = [
    "Box3D",
    "Click",
    "Interaction",
    "Lasso",
    "LiveMask",
    "MaskPrompt",
    "ObjectEditor",
    "ObjectEngine",
    "ObjectSet",
    "ObjectState",
    "ObjectSummary",
    "ObjectsSnapshot",
    "Scribble",
    "SliceEngine",
    "given_on",
    "in_frame",
    "polygon_mask",
    "sample_points",
]
