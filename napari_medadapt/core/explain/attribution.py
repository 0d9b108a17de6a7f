"""Baseline attributions (Captum) and the localisation and faithfulness scores explanations are judged by.

The baselines explain the same target as the prototypes: the mean probability of the target classes over a
target mask (the predicted tumour on a plane). Occlusion slides a zero occluder (20 voxels, stride 10) over the
input; the gradient attribution is integrated gradients from an all-zero input. Scores (MProtoNet's):
activation precision ``AP = |A & T| / |A|`` with ``A`` the voxels above 0.5 after min-max normalisation, and
incremental deletion / insertion of the most-attributed voxels in 50 steps, ``IAD = (IA + (1 - ID)) / 2`` from
the areas under the insertion and deletion curves of the target score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..models import SegModel

#: Occluder side and stride (voxels).
OCCLUDER = 20
OCCLUDER_STRIDE = 10


def target_score(model: SegModel, mask: np.ndarray, classes: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> (B,)``: mean probability of network ``classes`` over ``mask`` (spatial) for inputs ``x`` (B, C, *S)."""
    import torch

    weight = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    weight = weight / weight.sum().clamp_min(1.0)
    picked = list(int(c) for c in classes)

    def score(x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(model(x), dim=1)[:, picked].sum(dim=1)
        return (probs * weight).flatten(1).sum(dim=1)

    return score


def _cropped(model: SegModel, image: np.ndarray, mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """The inference path's crop (non-zero input + margin) of a plane or volume and of its target mask."""
    from ..inference import input_box

    data = np.asarray(image, dtype=np.float32)
    plane = data.ndim == 3
    box = input_box(data[:, None] if plane else data, model.spatial_dims, model.size_divisor)
    spatial = tuple(slice(None) for _ in data.shape[1:]) if box is None else (box[1:] if plane else box)
    return spatial, np.ascontiguousarray(data[(slice(None), *spatial)]), np.asarray(mask)[spatial]


def occlusion_map(model: SegModel, image: np.ndarray, mask: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Occlusion attribution (C, *S) -> (*S): drop of the target score when a 20-voxel square/cube is zeroed
    (computed on the inference path's crop of the input; 0 outside it)."""
    import torch
    from captum.attr import Occlusion

    spatial, crop, crop_mask = _cropped(model, image, mask)
    x = torch.from_numpy(crop)[None]
    dims = x.ndim - 2
    with torch.no_grad():
        attr = Occlusion(target_score(model.eval(), crop_mask, classes)).attribute(
            x, sliding_window_shapes=(x.shape[1],) + (OCCLUDER,) * dims,
            strides=(x.shape[1],) + (OCCLUDER_STRIDE,) * dims, baselines=0.0, perturbations_per_eval=16,
        )
    out = np.zeros(np.shape(image)[1:], dtype=np.float32)
    out[spatial] = attr[0].sum(dim=0).numpy()
    return out


def gradient_map(model: SegModel, image: np.ndarray, mask: np.ndarray, classes: Sequence[int], steps: int = 32) -> np.ndarray:
    """Integrated-gradients attribution (C, *S) -> (*S), summed over channels, from an all-zero baseline (on the
    inference path's crop; 0 outside it)."""
    import torch
    from captum.attr import IntegratedGradients

    spatial, crop, crop_mask = _cropped(model, image, mask)
    x = torch.from_numpy(crop)[None]
    attr = IntegratedGradients(target_score(model.eval(), crop_mask, classes)).attribute(
        x, baselines=torch.zeros_like(x), n_steps=steps, internal_batch_size=8
    )
    out = np.zeros(np.shape(image)[1:], dtype=np.float32)
    out[spatial] = attr[0].sum(dim=0).detach().numpy()
    return out


def minmax(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] (all zeros when constant)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def activation_precision(attribution: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """``|A & T| / |A|`` with ``A`` = min-max-normalised attribution above ``threshold`` (NaN when A is empty)."""
    active = minmax(attribution) > threshold
    return float(np.logical_and(active, target).sum() / active.sum()) if active.any() else float("nan")


def deletion_insertion(
    score: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, attribution: np.ndarray, within: np.ndarray,
    steps: int = 50,
) -> dict[str, float]:
    """Incremental deletion and insertion of the ``within`` voxels in decreasing attribution order.

    Returns ``{"deletion", "insertion", "iad"}``: the mean target score along each curve (its area, x in [0, 1])
    and ``(insertion + 1 - deletion) / 2``.
    """
    import torch

    x = np.asarray(image, dtype=np.float32)
    flat = np.flatnonzero(within.ravel())
    order = flat[np.argsort(-attribution.ravel()[flat], kind="stable")]
    cuts = np.linspace(0, len(order), steps + 1).round().astype(int)
    deleted, inserted = [], []
    for cut in cuts:
        drop = np.zeros(x.shape[1:], dtype=bool).ravel()
        drop[order[:cut]] = True
        drop = drop.reshape(x.shape[1:])
        deleted.append(np.where(drop[None], 0.0, x))
        inserted.append(np.where(drop[None], x, 0.0))
    with torch.no_grad():
        curves = [
            torch.cat([score(torch.from_numpy(np.stack(batch[i : i + 16]))) for i in range(0, len(batch), 16)]).numpy()
            for batch in (deleted, inserted)
        ]
    area = [float(np.trapezoid(c, dx=1.0 / steps)) for c in curves]
    return {"deletion": area[0], "insertion": area[1], "iad": (area[1] + 1.0 - area[0]) / 2.0}
