"""Per-modality normaliser network placed in front of the segmenter (METHODS section 1, variant A).

One shallow CNN per input modality: three convolutions with kernel 3 and stride 1, 16 filters except the last
(1 output channel), LeakyReLU between them; the per-modality outputs are concatenated in channel order.

Default form is residual, ``y = x + f(x)`` with the last convolution initialised to zero, so a fresh
normaliser is exactly the identity: a segmenter trained without it behaves identically with it, and
test-time adaptation starts from the trained behaviour instead of from noise. Set ``residual=False`` for the
plain ``y = f(x)`` of the source publication (then it must be trained jointly with the segmenter).
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn


class ModalityNormalizer(nn.Module):
    """Shallow per-modality CNNs, outputs concatenated.

    Parameters
    ----------
    in_channels
        Number of modalities (one branch each).
    spatial_dims
        2 or 3.
    hidden
        Filters of the first two convolutions (16 in METHODS).
    residual
        ``y = x + f(x)`` with a zero-initialised last convolution (identity at start) when True.
    """

    def __init__(self, in_channels: int, spatial_dims: int, hidden: int = 16, residual: bool = True) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.residual = bool(residual)
        self.branches = nn.ModuleList()
        for _ in range(in_channels):
            last = conv(hidden, 1, kernel_size=3, stride=1, padding=1)
            if self.residual:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            self.branches.append(
                nn.Sequential(
                    conv(1, hidden, kernel_size=3, stride=1, padding=1),
                    nn.LeakyReLU(0.01, inplace=True),
                    conv(hidden, hidden, kernel_size=3, stride=1, padding=1),
                    nn.LeakyReLU(0.01, inplace=True),
                    last,
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(B, C, *spatial)``; returns the same shape."""
        outputs = []
        for index, branch in enumerate(self.branches):
            channel = x[:, index : index + 1]
            out = branch(channel)
            outputs.append(channel + out if self.residual else out)
        return torch.cat(outputs, dim=1)
