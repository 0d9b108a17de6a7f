"""Synthetic training and test data: phantom brain MRI with tumours, simulated acquisition shifts."""

from .phantom import (
    GRID_SHAPE,
    MODALITIES,
    TISSUE_CONTRAST,
    make_phantom_slice,
    make_phantom_volume,
    random_phantom_params,
    render_clean,
)
from .shifts import KINDS, STANDARD_SHIFTS, apply_shift, shift_volume

__all__ = [
    "GRID_SHAPE",
    "KINDS",
    "MODALITIES",
    "STANDARD_SHIFTS",
    "TISSUE_CONTRAST",
    "apply_shift",
    "make_phantom_slice",
    "make_phantom_volume",
    "random_phantom_params",
    "render_clean",
    "shift_volume",
]
