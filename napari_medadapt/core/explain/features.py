"""Features a prototype bank compares: the model's last decoder map, on prepared (normalised) input.

2D models run on the planes asked for (the current slice first, the volume on demand); 3D models run the
sliding window of the inference path over the whole volume. Banks of space ``head`` compare the model's own
prototype embedding ``F_L`` (the head's 1x1 projection of the decoder map); ``decoder`` banks (post-hoc)
compare the decoder map itself. Similarities are cosine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..jobs import JobContext, ensure_context

if TYPE_CHECKING:
    import torch

    from ..models import SegModel


def decoder_features(
    model: SegModel,
    data: np.ndarray,
    planes: Sequence[int] | None = None,
    *,
    device: torch.device | None = None,
    batch_size: int = 8,
    ctx: JobContext | None = None,
) -> torch.Tensor:
    """Last decoder map of normalised input ``data`` (C, Z, Y, X) on the model grid.

    Returns
    -------
    torch.Tensor
        2D models: (n, C_dec, Y, X) for ``planes`` (all planes when ``None``); 3D models: (1, C_dec, Z, Y, X)
        (``planes`` is ignored: a 3D network sees the volume).
    """
    import torch

    ctx = ensure_context(ctx)
    device = device or torch.device("cpu")
    model.eval().to(device)
    with torch.inference_mode():
        if model.spatial_dims == 3:
            from monai.inferers import sliding_window_inference

            from ..inference import DEFAULT_ROI_3D

            roi_cfg = model.card.architecture.get("roi_size", DEFAULT_ROI_3D)
            roi = tuple(min(int(r), int(n)) for r, n in zip(roi_cfg, data.shape[1:], strict=True))
            ctx.progress(0, 1, "computing decoder features of the volume")
            out = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None],
                roi_size=roi, sw_batch_size=1, overlap=0.25, mode="gaussian", sw_device=device,
                device=torch.device("cpu"),
                predictor=lambda window: model.forward_features(window, taps=["decoder"]).features["decoder"],
            )
            ctx.progress(1, 1, "decoder features computed")
            return out.float()
        planes = list(range(data.shape[1])) if planes is None else [int(p) for p in planes]
        chunks = []
        total = max(math.ceil(len(planes) / batch_size), 1)
        for step, start in enumerate(range(0, len(planes), batch_size)):
            ctx.check()
            batch = np.ascontiguousarray(data[:, planes[start : start + batch_size]].transpose(1, 0, 2, 3), dtype=np.float32)
            features = model.forward_features(torch.from_numpy(batch).to(device), taps=["decoder"]).features["decoder"]
            chunks.append(features.float().cpu())
            ctx.progress(step + 1, total, f"features of planes {start + 1}-{min(start + batch_size, len(planes))} of {len(planes)}")
        if not chunks:
            return torch.zeros((0, model.decoder_channels, *data.shape[2:]))
        return torch.cat(chunks)


def bank_embedding(model: SegModel, space: str, decoder: torch.Tensor) -> torch.Tensor:
    """Unit-length feature vectors (B, D, *S) of a bank's ``space`` from decoder features (B, C_dec, *S)."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        embedding = model.prototypes.project(decoder) if space == "head" else decoder
        return F.normalize(embedding.float(), dim=1)


def cosine_maps(embedding: torch.Tensor, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit-length ``embedding`` (B, D, *S) to every row of ``vectors`` (P, D) -> (B, P, *S)."""
    import torch
    import torch.nn.functional as F

    protos = F.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), dim=1)
    return torch.einsum("bd...,pd->bp...", embedding, protos)
