"""The CVPR 2025 interactive 3D segmentation challenge ("SegFM"): its case files, its evaluation protocol and
the predictor contract (``medadapt segfm``), on the 3D objects of :mod:`..interactive`.

Importing this package does not import torch.
"""

from .npz_io import (
    ALLOWED_GLOBALS,
    ClassClicks,
    RestrictedUnpickler,
    SegFMCase,
    SegFMInputError,
    UnsafePickleError,
    load_case,
    read_npz,
    save_case,
)
from .predictor import FolderResult, case_window, predict_case, run_folder
from .protocol import (
    SimulatedClick,
    auc,
    boxes_from_labels,
    component_edt,
    dice,
    multiclass_scores,
    next_click_3d,
    relabel_sequential,
    surface_dice,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "ClassClicks",
    "FolderResult",
    "RestrictedUnpickler",
    "SegFMCase",
    "SegFMInputError",
    "SimulatedClick",
    "UnsafePickleError",
    "auc",
    "boxes_from_labels",
    "case_window",
    "component_edt",
    "dice",
    "load_case",
    "multiclass_scores",
    "next_click_3d",
    "predict_case",
    "read_npz",
    "relabel_sequential",
    "run_folder",
    "save_case",
    "surface_dice",
]
