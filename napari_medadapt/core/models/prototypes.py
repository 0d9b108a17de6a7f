"""Local prototype head over decoder features (METHODS section 3, segmentation extension).

Decoder features ``F`` (B, C_dec, *spatial) are projected by two 1x1 convolutions (ReLU between) to
``F_L`` with ``dim`` channels. Each class has ``per_class`` (K) learnable prototypes in that space. For every
position the cosine similarity to every prototype gives ``similarity`` maps (B, classes*K, *spatial), ordered
class-major (prototype ``p`` belongs to class ``p // K``). The class score at a position is the weighted sum of its K
prototypes' similarities (the frozen ``w_ck = 1/K`` classifier), times ``scale`` to turn cosine values in
[-1, 1] into logits a softmax can make confident. A *forgotten* prototype (judged spurious by a user) has its
weight ``w_ck`` set to 0; nothing is retrained. The forgotten ids are part of the architecture config
(``prototypes.forgotten``), so a saved model keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn


@dataclass
class PrototypeOutput:
    """Result of :class:`PrototypeHead`: class logits, per-prototype similarity maps, embeddings F_L."""

    logits: torch.Tensor
    similarity: torch.Tensor
    embedding: torch.Tensor


class PrototypeHead(nn.Module):
    """Cosine-similarity prototype classifier at every position.

    Parameters
    ----------
    in_channels
        Channels of the decoder feature map.
    num_classes
        Number of network classes.
    per_class
        K prototypes per class (10 in METHODS).
    dim
        D_L, the projected feature dimension (128 or 256 in METHODS).
    spatial_dims
        2 or 3.
    scale
        Logit scale applied to the class's weighted cosine similarity.
    forgotten
        Prototype ids whose weight is 0.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        per_class: int = 10,
        dim: int = 128,
        spatial_dims: int = 2,
        scale: float = 10.0,
        forgotten: Iterable[int] = (),
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.num_classes = int(num_classes)
        self.per_class = int(per_class)
        self.dim = int(dim)
        self.scale = float(scale)
        self.project = nn.Sequential(
            conv(in_channels, dim, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(dim, dim, kernel_size=1),
        )
        self.prototypes = nn.Parameter(torch.randn(self.num_classes * self.per_class, self.dim))
        # w_ck: not a learnt parameter and not in the weight file (the card's architecture carries the ids)
        self.register_buffer("weights", torch.full((len(self.prototypes),), 1.0 / self.per_class), persistent=False)
        self.forgotten: tuple[int, ...] = ()
        self.forget(forgotten)

    def forget(self, ids: Iterable[int]) -> None:
        """Set the weight of prototypes ``ids`` to 0 (and every other one back to 1/K)."""
        ids = tuple(sorted({int(i) for i in ids}))
        bad = [i for i in ids if not 0 <= i < len(self.prototypes)]
        if bad:
            raise ValueError(f"prototype ids {bad} do not exist; this head has 0..{len(self.prototypes) - 1}.")
        self.weights.fill_(1.0 / self.per_class)
        if ids:
            self.weights[list(ids)] = 0.0
        self.forgotten = ids

    def prototype_class(self, index: int) -> int:
        """Network class of prototype ``index``."""
        return int(index) // self.per_class

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every position of ``embedding`` (B, D, *S) to every prototype -> (B, P, *S)."""
        emb = F.normalize(embedding, dim=1)
        protos = F.normalize(self.prototypes, dim=1)
        return torch.einsum("bd...,pd->bp...", emb, protos)

    def forward(self, features: torch.Tensor) -> PrototypeOutput:
        """Class logits (B, classes, *S) from decoder features, with similarity maps and embeddings."""
        embedding = self.project(features)
        sim = self.similarity(embedding)
        batch, _, *spatial = sim.shape
        weighted = sim * self.weights.view(1, -1, *([1] * len(spatial)))
        per_class = weighted.reshape(batch, self.num_classes, self.per_class, *spatial).sum(dim=2)
        return PrototypeOutput(logits=self.scale * per_class, similarity=sim, embedding=embedding)
