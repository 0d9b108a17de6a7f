"""Feature statistics entering BatchNorm layers and the BN-KL loss (METHODS section 1).

The loss compares, for every BatchNorm layer ``b`` and channel ``c``, the Gaussian of the test volume's
features entering that layer, ``N(mu_bc, s_bc^2)``, with the layer's training statistics
``N(mubar_bc, sbar_bc^2)`` (``running_mean`` and ``running_var``)::

    L = (1/B) sum_b sum_c KL(N(mu_bc, s_bc^2) || N(mubar_bc, sbar_bc^2))
    KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2

Both variances get the layer's ``eps`` added (``s^2 = var + eps``), exactly what BatchNorm divides by; this
keeps the logarithm finite for a channel that is constant on the test volume. ``mu`` and ``s`` are taken
over every spatial position of every input sample (all slices of a volume for a 2D model), accumulated as
exact per-channel sums and sums of squares across mini-batches.

"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ReferenceStatistics:
    """Training statistics of one BatchNorm layer: ``running_mean``, ``running_var`` and ``eps``."""

    mean: torch.Tensor
    var: torch.Tensor
    eps: float


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that holds running statistics, in module order."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
    ]


def reference_statistics(model: nn.Module) -> list[ReferenceStatistics]:
    """Detached copies (float64) of the running statistics of every BatchNorm layer of ``model``."""
    return [
        ReferenceStatistics(
            mean=layer.running_mean.detach().to(torch.float64).clone(),
            var=layer.running_var.detach().to(torch.float64).clone(),
            eps=float(layer.eps),
        )
        for layer in batchnorm_layers(model)
    ]


class FeatureStatistics:
    """Per-sample, per-channel sums and sums of squares of the features entering each BatchNorm layer.

    Registered as forward pre-hooks: every forward pass appends one row per sample (slice) and layer, so a
    volume can be pushed through in mini-batches and still give its exact mean and variance. Sums are reduced in float32 (a
    pairwise reduction) and accumulated in float64. When the forward pass records gradients, so do the sums.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = list(layers)
        self._sums: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._squares: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self.positions = [0] * len(self.layers)

    def _hook(self, index: int):
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            features = args[0]
            dims = tuple(range(2, features.ndim))
            self._sums[index].append(features.sum(dim=dims).to(torch.float64))
            self._squares[index].append((features * features).sum(dim=dims).to(torch.float64))
            self.positions[index] = features[0, 0].numel()

        return record

    @contextmanager
    def recording(self) -> Iterator[FeatureStatistics]:
        """Register the hooks for the duration of the ``with`` block."""
        handles = [
            layer.register_forward_pre_hook(self._hook(index)) for index, layer in enumerate(self.layers)
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def rows(self) -> SampleSums:
        """Everything recorded so far as :class:`SampleSums` (one row per sample)."""
        if any(not sums for sums in self._sums):
            raise RuntimeError("no features were recorded for a BatchNorm layer")
        return SampleSums(
            sums=[torch.cat(rows) for rows in self._sums],
            squares=[torch.cat(rows) for rows in self._squares],
            positions=list(self.positions),
        )


@dataclass
class SampleSums:
    """Per-layer ``(samples, channels)`` float64 sums and sums of squares, and spatial positions per sample."""

    sums: list[torch.Tensor]
    squares: list[torch.Tensor]
    positions: list[int]

    def subset(self, rows: Sequence[int]) -> SampleSums:
        """The sums of the samples ``rows`` only (e.g. to compare a slice subsample with the whole volume)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return SampleSums([s[index] for s in self.sums], [q[index] for q in self.squares], self.positions)

    def moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(mean, biased variance)`` per layer over all samples (exact, from the summed rows)."""
        moments = []
        for layer_sums, layer_squares, positions in zip(self.sums, self.squares, self.positions, strict=True):
            count = layer_sums.shape[0] * positions
            mean = layer_sums.sum(dim=0) / count
            var = torch.clamp(layer_squares.sum(dim=0) / count - mean * mean, min=0.0)
            moments.append((mean, var))
        return moments


def gaussian_kl(
    mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, var1) || N(mean2, var2))`` of univariate Gaussians (variances, not stds)."""
    return 0.5 * torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / (2.0 * var2) - 0.5


def bn_kl_loss(
    moments: Sequence[tuple[torch.Tensor, torch.Tensor]],
    references: Sequence[ReferenceStatistics],
) -> torch.Tensor:
    """``(1/B) sum_b sum_c KL(N(mu_bc, s_bc^2) || N(mubar_bc, sbar_bc^2))`` over the B layers.

    Parameters
    ----------
    moments
        ``(mean, var)`` of the test features per BatchNorm layer (as from :meth:`FeatureStatistics.moments`).
    references
        The matching training statistics (:func:`reference_statistics`), same order and length.
    """
    if len(moments) != len(references) or not references:
        raise ValueError(f"{len(moments)} feature statistics for {len(references)} BatchNorm layers")
    total = None
    for (mean, var), reference in zip(moments, references, strict=True):
        ref_mean = reference.mean.to(device=mean.device, dtype=mean.dtype)
        ref_var = reference.var.to(device=mean.device, dtype=mean.dtype) + reference.eps
        layer_kl = gaussian_kl(mean, var + reference.eps, ref_mean, ref_var).sum()
        total = layer_kl if total is None else total + layer_kl
    return total / len(references)
