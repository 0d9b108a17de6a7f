"""Bias-field correction: N4 (SimpleITK's N4BiasFieldCorrectionImageFilter, Tustison et al. 2010).

The field is fitted inside the brain (or head) mask on a copy shrunk by :data:`SHRINK` (the field is smooth,
so this costs little accuracy and most of the time), then evaluated on the full grid; the corrected image is
the image divided by the field. A field's strength is its spread inside the mask: the ratio of its 98th to its
2nd percentile in a :data:`DETECT_ITERATIONS` fit. One coil shades every sequence of a session, so ``auto``
corrects the sequences together, when the median spread over them exceeds :data:`STRONG_FIELD`; the correction
itself is fitted with one more level (:data:`CORRECT_ITERATIONS`), which removes a strong field more completely.

N4 has a price when there is little to remove: a large bright lesion partly looks like a field to it (on the
held-out glioma, correcting mild simulated fields cost about 0.1 WT Dice; docs/benchmarks/preprocess.md), so
``auto`` leaves ordinary shading alone. Settings chosen on the training case ``glioma_tcga_du7294`` (not a
benchmark case): median spread 1.34 for its clean sequences and 1.7-1.9 under simulated fields that did not
change the model's Dice (at most -0.012), 2.07 under a front-to-back coil gradient of exp(+-1.5) that cost 0.26
WT Dice; under that gradient the residual field left by the correction (98th / 2nd percentile of corrected /
clean inside the brain) was 1.9-3.0 with three levels and 1.5-2.0 with four.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import VolumeError
from ..jobs import JobContext, ensure_context
from .register import run_itk

#: Fitting resolution: every SHRINK-th voxel along each axis (the field is smooth; fewer on small axes).
SHRINK = 4
#: Median field spread over the sequences (98th / 2nd percentile inside the mask) above which ``auto`` corrects.
STRONG_FIELD = 2.0
#: N4 iterations per fitting level when measuring the field (three levels).
DETECT_ITERATIONS = (50, 50, 30)
#: N4 iterations per fitting level when removing it (four levels: a finer B-spline field).
CORRECT_ITERATIONS = (50, 50, 50, 50)


@dataclass
class BiasField:
    """The fitted field of one sequence and whether it was removed."""

    modality: str
    spread: float
    corrected: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return dict(self.__dict__)


def fit_bias_field(
    image: Any,
    mask: np.ndarray,
    ctx: JobContext | None = None,
    label: str = "",
    iterations: tuple[int, ...] = DETECT_ITERATIONS,
) -> np.ndarray:
    """The multiplicative bias field (display order, float32) of a SimpleITK image inside ``mask``
    (``iterations``: N4 iterations per fitting level, one entry per level)."""
    import SimpleITK as sitk

    ctx = ensure_context(ctx)
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    positive = sitk.Cast(sitk.Clamp(image, lowerBound=0.0), sitk.sitkFloat32) + 1.0  # N4 works on log intensities
    shrink = [max(1, min(SHRINK, n // 32)) for n in image.GetSize()]  # keep at least 32 voxels per axis
    small = sitk.Shrink(positive, shrink)
    small_mask = sitk.Shrink(mask_image, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    try:
        run_itk(corrector, lambda: corrector.Execute(small, small_mask), ctx, f"bias field {label}", sum(iterations))
    except RuntimeError as exc:
        raise VolumeError(f"The bias field of {label or 'the image'} could not be fitted ({str(exc).strip().splitlines()[-1]}).") from exc
    log_field = corrector.GetLogBiasFieldAsImage(positive)
    return np.exp(sitk.GetArrayFromImage(log_field)).astype(np.float32)


def field_spread(field: np.ndarray, mask: np.ndarray) -> float:
    """98th / 2nd percentile of the field inside ``mask`` (1: no field)."""
    values = field[mask]
    if values.size == 0:
        return 1.0
    low, high = np.percentile(values, [2, 98])
    return float(high / max(low, 1e-6))
