"""Training slices for 2D brain-tumour models: phantom and real-case slice banks, batch augmentation.

Slice banks hold normalised axial slices ``(N, 4, Y, X)`` (float16, channels ``t1, t1c, t2, flair``) and
their BraTS labels ``(N, Y, X)`` (uint8). Normalisation is the model's: per-channel percentile scaling
(0.5 -> 0, 99.5 -> 1, clipped) over the nonzero voxels of the whole volume; for phantoms, whose volumes are
never rendered in full, over the pooled brain voxels of all slices drawn from that phantom (tumour and
tumour-free levels mixed).

:func:`augment_batch` (torch) draws crops, flips, rotations/scaling, elastic warps, gamma, bias, noise and
blur; :func:`modality_dropout` zeroes modalities so a model learns to work from any subset with FLAIR.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..intensity import robust_scale
from ..jobs import JobContext
from .phantom import (
    GRID_SHAPE,
    MODALITIES,
    make_phantom_slice,
    random_phantom_params,
)

if TYPE_CHECKING:
    import torch

#: BraTS label id -> network class
LABEL_IDS: tuple[int, ...] = (0, 1, 2, 4)


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """Map BraTS ids (0, 1, 2, 4) to network classes (0, 1, 2, 3); other values become background."""
    lut = np.zeros(256, dtype=np.int64)
    for cls, label in enumerate(LABEL_IDS):
        lut[label] = cls
    return lut[np.asarray(labels, dtype=np.uint8)]


def normalize_channels(images: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Percentile-scale every channel of ``(C, ...)`` over its nonzero voxels; zero outside the brain."""
    brain = np.any(images != 0, axis=0)
    out = np.zeros(images.shape, dtype=np.float32)
    for c in range(images.shape[0]):
        out[c] = robust_scale(images[c], lower, upper, mask=brain, clip=True)
    return out


def phantom_slice_bank(
    n_phantoms: int,
    seed: int,
    slices_per_phantom: int = 8,
    ctx: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised phantom slices: half through the tumour, half at any brain level, per phantom.

    Returns
    -------
    images, labels
        float16 ``(N, 4, 240, 240)`` and uint8 ``(N, 240, 240)`` with ``N = n_phantoms * slices_per_phantom``.
    """
    images = np.zeros((n_phantoms * slices_per_phantom, 4) + GRID_SHAPE[1:], dtype=np.float16)
    labels = np.zeros((n_phantoms * slices_per_phantom,) + GRID_SHAPE[1:], dtype=np.uint8)
    for p in range(n_phantoms):
        start = p * slices_per_phantom
        planes, plane_labels = phantom_planes(seed * 100_003 + p, slices_per_phantom)
        images[start : start + slices_per_phantom] = planes
        labels[start : start + slices_per_phantom] = plane_labels
        if ctx is not None:
            ctx.progress(p + 1, n_phantoms, "rendering phantom slices")
    return images, labels


def phantom_planes(phantom_seed: int, slices_per_phantom: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The normalised slices ``(S, 4, 240, 240)`` and labels ``(S, 240, 240)`` one phantom contributes to a
    slice bank (even slices through the tumour, odd ones at any brain level); the same for the same seed."""
    params = random_phantom_params(phantom_seed)
    stack, lab = [], []
    for s in range(slices_per_phantom):
        image, label = make_phantom_slice(
            phantom_seed * 64 + s, tumour_probability=1.0 if s % 2 == 0 else 0.0, params=params
        )
        stack.append(image)
        lab.append(label)
    volume = np.stack(stack, axis=1)  # (4, S, Y, X): pooled statistics over the phantom's slices
    return normalize_channels(volume).transpose(1, 0, 2, 3), np.stack(lab)


def real_slice_bank(case_dir: str | Path, label_name: str = "seg_fusion") -> tuple[np.ndarray, np.ndarray]:
    """Normalised axial slices of a real case (every slice with brain) and its labels.

    Returns
    -------
    images, labels
        float16 ``(N, 4, Y, X)`` in :data:`MODALITIES` order and uint8 ``(N, Y, X)`` BraTS ids.
    """
    images, labels, _planes = real_case_planes(case_dir, label_name)
    return images, labels


def real_case_planes(case_dir: str | Path, label_name: str = "seg_fusion") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`real_slice_bank` with the axial plane index of each slice in the case (third array)."""
    from ..cases import load_case

    volume, label_maps = load_case(case_dir)
    data = np.stack([volume.channel(m) for m in MODALITIES])
    norm = normalize_channels(data)
    seg = label_maps[label_name].astype(np.uint8)
    keep = np.flatnonzero(np.any(data != 0, axis=(0, 2, 3)))
    return norm[:, keep].transpose(1, 0, 2, 3).astype(np.float16), seg[keep], keep


def _smooth_noise(generator, batch: int, size: tuple[int, int], cells: int, device) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    coarse = torch.randn(batch, 1, cells, cells, generator=generator, device=device)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    generator: torch.Generator,
    crop: int = 128,
    strength: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop + spatial and intensity augmentation of normalised slices.

    Parameters
    ----------
    images, labels
        ``(B, 4, Y, X)`` normalised slices and ``(B, Y, X)`` BraTS labels.
    generator
        Torch generator (seeded by the caller) for every random draw.
    crop
        Output size (square); crops are centred near tumour when the slice has some, else near brain.
    strength
        Scales the elastic warp and intensity perturbations (real-case slices use more than phantoms).

    Returns
    -------
    x, y
        float32 ``(B, 4, crop, crop)`` and int64 classes ``(B, crop, crop)``.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    y = torch.from_numpy(labels_to_classes(labels)).float()[:, None]
    batch, _, height, width = x.shape

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    # centres: a random tumour voxel (if any) or a random brain voxel, jittered
    centres = torch.zeros(batch, 2)
    for b in range(batch):
        fg = torch.nonzero(y[b, 0] > 0)
        if len(fg) == 0 or torch.rand(1, generator=generator).item() < 0.2:
            fg = torch.nonzero(x[b].abs().sum(0) > 0)
        if len(fg) == 0:
            centres[b] = torch.tensor([height / 2, width / 2])
        else:
            centres[b] = fg[torch.randint(len(fg), (1,), generator=generator).item()].float()
    centres += uniform(-crop / 4, crop / 4, batch, 2)
    # affine sampling grid in normalised coordinates (x, y order for grid_sample)
    angle = uniform(-0.3, 0.3, batch)
    scale = torch.exp(uniform(-0.15, 0.15, batch))
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = cos * flip * crop / width
    theta[:, 0, 1] = -sin * crop / width
    theta[:, 1, 0] = sin * flip * crop / height
    theta[:, 1, 1] = cos * crop / height
    theta[:, 0, 2] = centres[:, 1] / (width - 1) * 2 - 1
    theta[:, 1, 2] = centres[:, 0] / (height - 1) * 2 - 1
    grid = F.affine_grid(theta, (batch, 1, crop, crop), align_corners=True)
    elastic = torch.cat([_smooth_noise(generator, batch, (crop, crop), 5, x.device) for _ in range(2)], dim=1)
    grid = grid + (0.04 * strength * uniform(0, 1, batch, 1, 1, 1)) * elastic.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=True)[:, 0].long()
    brain = (x.abs().sum(1, keepdim=True) > 1e-4).float()
    # intensity: per-channel gamma, gain/offset, bias field, blur, noise; background stays zero
    gamma = torch.exp(uniform(-0.35, 0.35, batch, 4, 1, 1) * strength)
    x = x.clamp_min(0) ** gamma
    x = x * torch.exp(uniform(-0.2, 0.2, batch, 4, 1, 1) * strength) + uniform(-0.08, 0.08, batch, 4, 1, 1) * strength
    bias = torch.cat([_smooth_noise(generator, batch, (crop, crop), 3, x.device) for _ in range(4)], dim=1)
    x = x * torch.exp(0.15 * strength * uniform(0, 1, batch, 1, 1, 1) * bias)
    blur = torch.rand(batch, generator=generator) < 0.25
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        kernel2d = (kernel[:, None] * kernel[None, :]).expand(4, 1, 3, 3)
        x[blur] = F.conv2d(x[blur], kernel2d, padding=1, groups=4)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0, 0.04, batch, 1, 1, 1) * strength
    return x * brain, y


def modality_dropout(
    x: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.5,
    keep: tuple[int, ...] = (3,),
) -> torch.Tensor:
    """Zero random modalities of some samples (in place), never those in ``keep`` (default FLAIR).

    With ``probability`` a sample loses each non-kept modality independently with probability 1/2.
    """
    import torch

    batch, channels = x.shape[:2]
    chosen = torch.rand(batch, generator=generator) < probability
    drop = (torch.rand(batch, channels, generator=generator) < 0.5) & chosen[:, None]
    drop[:, list(keep)] = False
    x[drop] = 0.0
    return x
