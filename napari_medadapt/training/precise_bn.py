"""Precise BatchNorm statistics: re-estimate a trained model's running statistics on whole inference inputs.

During training the BatchNorm layers keep an exponential moving average of the statistics of the last few
augmented crops. At inference the network sees whole (brain-box) slices without augmentation, so those
running statistics describe a different input distribution. That hurts twice: the predictions are
normalised with mismatched statistics, and test-time adaptation (METHODS section 1) aligns a new volume's
feature statistics to a target that even in-domain whole volumes do not match. Re-estimating the running
statistics with the weights frozen (the cumulative average over many batches, ``momentum=None``) fixes the
target; it is the usual "precise BN" step after training.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from napari_medadapt.core.models import SegModel


def whole_slice_batches(
    images: np.ndarray, batch: int, generator: torch.Generator, max_batches: int
) -> Iterator[torch.Tensor]:
    """Random batches of un-augmented slices cropped to the bank's non-zero bounding box, as at inference.

    Parameters
    ----------
    images
        ``(N, C, Y, X)`` normalised slices (one slice bank, e.g. one real case or the phantom slices).
    batch, max_batches
        Slices per batch and number of batches (drawn without replacement while slices last).
    generator
        Torch generator for the slice order.
    """
    import torch

    from napari_medadapt.core.inference import CROP_MARGIN

    brain = np.any(images != 0, axis=(0, 1))
    rows, cols = np.flatnonzero(brain.any(1)), np.flatnonzero(brain.any(0))
    y0, x0 = max(rows[0] - CROP_MARGIN, 0), max(cols[0] - CROP_MARGIN, 0)
    y1, x1 = rows[-1] + 1 + CROP_MARGIN, cols[-1] + 1 + CROP_MARGIN
    order = torch.randperm(len(images), generator=generator).numpy()
    for start in range(0, min(len(order), batch * max_batches), batch):
        pick = np.sort(order[start : start + batch])
        yield torch.from_numpy(np.asarray(images[pick][:, :, y0:y1, x0:x1], dtype=np.float32))


def recalibrate_batchnorm(model: SegModel, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running mean/variance by the cumulative average over ``batches``.

    Only the running statistics change (weights are frozen, no gradients). Returns the number of batches
    used; with none, the statistics are left as they were.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    count = 0
    with torch.no_grad():
        for x in batches:
            model(x)
            count += 1
    model.train(was_training)
    for m, (momentum, mean, var, tracked) in zip(norms, saved, strict=True):
        m.momentum = momentum
        if count == 0:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
    return count
