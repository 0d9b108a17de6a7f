"""The trainable parts of a few-shot fit and their losses (METHODS section 4).

- :class:`ResidualAdapter`: conv(3x3) -> ReLU -> conv(3x3), no bias, added to its input; the second conv starts
  at zero, so training starts exactly at the frozen model's features.
- :func:`new_head`: a 1x1 convolution onto background + the support's classes, its rows copied from the source
  model's head for the label ids the source knows (a new class starts at zero).
- Losses on a plane: a soft Dice over the classes painted on it (the others are unknown there), optionally the
  marginal cross-entropy (classes not painted on a plane merged into background there; off by default: on the
  training case and the CT's stomach and aorta it never helped, docs/benchmarks/fewshot.md), and the
  transductive size prior on unlabelled planes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...jobs import JobContext
from .support import slab

#: Size prior: slack around the expected area, its weight, and the share of the steps it is on (the last ones).
PRIOR_MARGIN = 0.3
PRIOR_WEIGHT = 0.1
PRIOR_START = 0.5
#: The prior's error on a plane is measured relative to the expected area, or to this share of the plane
#: where the object is expected to be smaller (or absent).
PRIOR_MIN_AREA_SHARE = 0.01
#: Optimiser settings (the authors' code): AdamW, cosine decay.
WEIGHT_DECAY = 1e-5
#: Unlabelled planes the size prior sees per step.
PRIOR_PLANES = 4
#: Feature maps wider than this are projected to it (1x1, trained) before the adapter.
ADAPTER_WIDTH = 32


class ResidualAdapter(nn.Module):
    """``x + conv(relu(conv(x)))`` with 3x3 (or 3x3x3) kernels, no bias; the last conv starts at zero."""

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv1 = conv(channels, channels, 3, padding=1, bias=False)
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapted features, same shape as ``x``."""
        return x + self.conv2(torch.relu(self.conv1(x)))


class FewShotHead(nn.Module):
    """Features -> logits: the optional :class:`ResidualAdapter`, then a 1x1 convolution.

    It replaces a segmentation model's head (:attr:`SegModel.head`), so the adapted model runs on the one
    inference path like any other model. On a wide feature map (a foundation model's 256-channel embedding)
    the adapter works on a trained 1x1 projection to :data:`ADAPTER_WIDTH` channels, which keeps a step cheap
    on a CPU.
    """

    def __init__(self, channels: int, num_classes: int, spatial_dims: int = 2, adapter: bool = True) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        width = channels
        self.reduce = None
        if adapter and channels > ADAPTER_WIDTH:
            width = ADAPTER_WIDTH
            self.reduce = conv(channels, width, 1, bias=False)
        self.adapter = ResidualAdapter(width, spatial_dims) if adapter else None
        self.classifier = conv(width, num_classes, 1)

    @property
    def halo(self) -> int:
        """Planes of context each side that the head needs for exact outputs on a plane."""
        return 2 if self.adapter is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes, *spatial)``."""
        if self.reduce is not None:
            x = self.reduce(x)
        if self.adapter is not None:
            x = self.adapter(x)
        return self.classifier(x)


def _conv_of(head: nn.Module) -> nn.Module | None:
    """The convolution inside a source head (MONAI's UnetOutBlock wraps it twice)."""
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    return convs[-1] if len(convs) == 1 else None


def new_head(
    source_head: nn.Module | None,
    source_labels: Sequence[int],
    classes: Sequence[int],
    channels: int,
    spatial_dims: int,
    adapter: bool,
) -> tuple[FewShotHead, list[int]]:
    """A :class:`FewShotHead` for background + ``classes``, initialised from ``source_head`` where the label id
    exists in ``source_labels``; returns it and the label ids it took from the source."""
    head = FewShotHead(channels, 1 + len(classes), spatial_dims, adapter)
    reused: list[int] = []
    conv = None if source_head is None else _conv_of(source_head)
    if conv is None:
        return head, reused  # no source head: the default initialisation
    nn.init.zeros_(head.classifier.weight)
    nn.init.zeros_(head.classifier.bias)
    if head.reduce is None and conv.weight.shape[1] == head.classifier.in_channels:  # same feature space
        rows = {int(label): row for row, label in enumerate(source_labels)}
        with torch.no_grad():
            for out, label in enumerate([0, *classes]):
                if label in rows:
                    head.classifier.weight[out] = conv.weight[rows[label]].reshape(head.classifier.weight[out].shape)
                    if conv.bias is not None:
                        head.classifier.bias[out] = conv.bias[rows[label]]
                    reused.append(int(label))
    return head, reused


def marginal_log_probs(logits: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(K, P)`` in which every class not ``known`` (bool ``(K,)``, background always
    known) is merged into background: what a plane that did not paint those classes can supervise."""
    log_probs = torch.log_softmax(logits.float(), dim=0)
    unknown = ~known
    if not bool(unknown.any()):
        return log_probs
    merged = torch.logsumexp(torch.cat([log_probs[:1], log_probs[unknown]]), dim=0, keepdim=True)
    out = log_probs.clone()
    out[:1] = merged
    out[unknown] = -torch.inf
    return out


def plane_losses(
    logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy (mean over pixels) and the soft-Dice sums (intersection, total per class) of one plane.

    ``logits`` ``(K, P)``, ``target`` ``(P,)`` class indices, ``known`` bool ``(K,)``.
    """
    log_probs = marginal_log_probs(logits, known)
    ce = -log_probs.gather(0, target[None]).mean()
    probs = torch.softmax(logits.float(), dim=0)
    onehot = F.one_hot(target, logits.shape[0]).T.float()
    weight = known.float()[:, None]
    intersection = (probs * onehot * weight).sum(dim=1)
    total = ((probs + onehot) * weight).sum(dim=1)
    return ce, intersection, total


def dice_loss(intersection: torch.Tensor, total: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes marked ``present`` (bool ``(K,)``)."""
    dice = (2 * intersection + 1.0) / (total + 1.0)
    mask = present.clone()
    mask[0] = False
    return 1 - dice[mask].mean() if bool(mask.any()) else dice.new_zeros(())


def size_prior(logits: torch.Tensor, expected: torch.Tensor, margin: float = PRIOR_MARGIN) -> torch.Tensor:
    """The transductive size prior on one unlabelled plane.

    ``logits`` ``(K, P)``; ``expected`` ``(K,)`` expected areas in pixels (NaN: unknown, no term). The soft
    area of each class is compared with ``[(1 - margin), (1 + margin)] x expected``; outside that band the
    distance counts, relative to the expected area (at least :data:`PRIOR_MIN_AREA_SHARE` of the plane).
    """
    probs = torch.softmax(logits.float(), dim=0)
    area = probs.sum(dim=1)
    valid = torch.isfinite(expected)
    valid[0] = False
    if not bool(valid.any()):
        return logits.new_zeros(())
    want = expected[valid]
    have = area[valid]
    low, high = (1 - margin) * want, (1 + margin) * want
    excess = torch.relu(low - have) + torch.relu(have - high)
    scale = torch.clamp(want, min=PRIOR_MIN_AREA_SHARE * logits.shape[1])
    return (excess / scale).mean()


# ------------------------------------------------------------------------------------- training loop
@dataclass
class PlaneTarget:
    """A painted plane: its index on the label grid along the support axis, class indices ``(P,)``, which
    classes it knows ``(K,)`` and its index in the volume."""

    index: int
    target: torch.Tensor
    known: torch.Tensor
    source_index: int


class CachedPlanes:
    """Logits of a plane from the cached features through the trainable head (adapter, linear probe), resized
    to the plane on the label grid where the features are coarser (a foundation model's embedding)."""

    def __init__(self, problem: Any, head: torch.nn.Module, device) -> None:
        self.features, self.head, self.device = problem.cache.features, head, device
        self.axis, self.backbone = problem.support.axis, problem.backbone
        self.dims = self.backbone.spatial_dims
        self.plane_shape = tuple(n for a, n in enumerate(self.backbone.grid_shape) if a != self.axis)
        self._slabs: dict[int, tuple[torch.Tensor, int]] = {}

    def _slab(self, index: int) -> tuple[torch.Tensor, int]:
        if index not in self._slabs:
            halo = self.head.halo if (self.dims == 3 or self.axis != 0) else 0
            block, centre = slab(self.features, self.axis, self.backbone.feature_index(self.axis, index), halo)
            self._slabs[index] = (torch.from_numpy(block.astype(np.float32)).to(self.device), centre)
        return self._slabs[index]

    def logits(self, index: int) -> torch.Tensor:
        block, centre = self._slab(index)
        if self.dims == 3:
            plane = self.head(block[None])[0].select(1 + self.axis, centre)
        else:
            out = self.head(block.permute(1, 0, 2, 3))  # (Z, K, Y, X): the model's own axial planes
            if self.axis == 0:
                plane = out[centre]
            else:
                plane = (out[:, :, centre, :] if self.axis == 1 else out[:, :, :, centre]).permute(1, 0, 2)
        if tuple(plane.shape[1:]) != self.plane_shape:
            plane = F.interpolate(plane[None], self.plane_shape, mode="bilinear", align_corners=False)[0]
        return plane.flatten(1)


class BackbonePlanes:
    """Logits of an axial plane through the whole (partly trainable) model (``ft_last``, ``full``)."""

    def __init__(self, backbone: Any, model: torch.nn.Module, device) -> None:
        self.backbone, self.model, self.device = backbone, model, device

    def logits(self, index: int) -> torch.Tensor:
        x = torch.from_numpy(self.backbone.input_planes([index])).to(self.device)
        return self.model(x)[0].flatten(1)


def train(
    planes: Any,
    params: list[dict[str, Any]],
    support: list[PlaneTarget],
    query: Mapping[int, torch.Tensor],
    steps: int,
    prior: bool,
    seed: int,
    ctx: JobContext,
    on_step: Callable[[int, int, dict[str, float]], Any] | None,
    label: str,
    cross_entropy: bool = False,
) -> list[dict[str, float]]:
    """Optimise ``params`` for ``steps`` steps: soft Dice over the support planes (+ their marginal
    cross-entropy with ``cross_entropy``), + the size prior on sampled ``query`` planes in the second half."""
    optimizer = torch.optim.AdamW(params, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    rng = np.random.default_rng(seed)
    query_indices = sorted(query)
    present = torch.zeros_like(support[0].known)
    for plane in support:
        present |= plane.known & torch.bincount(plane.target, minlength=len(plane.known)).bool()
    history = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        ce_total, inter, total = 0.0, 0.0, 0.0
        for plane in support:
            ce, i, t = plane_losses(planes.logits(plane.index), plane.target, plane.known)
            ce_total, inter, total = ce_total + ce, inter + i, total + t
        seg = dice_loss(inter, total, present)
        if cross_entropy:
            seg = seg + ce_total / len(support)
        loss = seg
        prior_value = float("nan")
        if prior and query_indices and step >= int(PRIOR_START * steps):
            chosen = rng.choice(query_indices, size=min(PRIOR_PLANES, len(query_indices)), replace=False)
            term = sum(size_prior(planes.logits(int(i)), query[int(i)]) for i in chosen) / len(chosen)
            loss = loss + PRIOR_WEIGHT * term
            prior_value = float(term.detach())
        loss.backward()
        optimizer.step()
        schedule.step()
        entry = {"step": step + 1, "loss": float(loss.detach()), "seg": float(seg.detach()), "prior": prior_value}
        history.append(entry)
        if on_step is not None:
            on_step(step + 1, steps, entry)
        ctx.progress(step + 1, steps, f"{label}: step {step + 1} of {steps}, loss {entry['loss']:.3f}")
    return history
