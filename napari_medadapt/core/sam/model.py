"""A loaded promptable model: image -> embedding (encoder) and embedding + prompts -> masks (decoder).

Wraps a ``segment_anything.modeling.Sam`` (official ViT-B/L/H, MedSAM or the bundled small model)
with its preprocessing, device handling (batched fp16 encoding on CUDA, CPU fallback when the GPU
runs out of memory) and the conversion from ``(row, col)`` slice coordinates to SAM's input pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelError
from ._compat import ResizeLongestSide
from .decoding import decode, dense_prior
from .prompts import Prompts, check_inside, clip_box

#: Image preprocessing of each model family (see :class:`PromptableModel`).
PREPROCESSING = ("sam", "medsam", "litemedsam")


def cpu_bf16_available() -> bool:
    """Whether the user asked for bfloat16 (``MEDADAPT_SAM_PRECISION=bf16``) and this CPU computes it natively
    (oneDNN with AMX or AVX512-BF16). Off by default: it changed LiteMedSAM's glioma masks (docs/benchmarks/sam.md)."""
    import os

    import torch

    if os.environ.get("MEDADAPT_SAM_PRECISION", "").lower() != "bf16":
        return False
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(checker is not None and checker())


@dataclass
class MaskPrediction:
    """Result of one prompt -> mask decode on a slice.

    Attributes
    ----------
    mask
        ``(H, W)`` bool, the selected mask (highest predicted IoU when several).
    masks
        ``(K, H, W)`` bool, all candidate masks (K = 3 for an ambiguous single click, else 1).
    scores
        ``(K,)`` predicted IoU of each candidate.
    best
        Index of ``mask`` in ``masks``.
    low_res_logits
        ``(K, 4g, 4g)`` float32 decoder logits (g = embedding grid), for mask feedback.
    """

    mask: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    best: int
    low_res_logits: np.ndarray

    @property
    def feedback(self) -> np.ndarray:
        """``(1, 4g, 4g)`` logits of the selected mask, to pass as the next ``mask_input``."""
        return self.low_res_logits[self.best][None]


class PromptableModel:
    """A SAM-architecture model ready for slice embedding and prompt decoding.

    Parameters
    ----------
    sam
        ``segment_anything.modeling.Sam`` module (weights loaded).
    name
        Registry name or checkpoint path.
    model_hash
        sha256 of the weights (part of every embedding cache key).
    preprocess
        ``"sam"`` (longest side resize, ImageNet pixel statistics, zero pad), ``"medsam"``
        (resize to the square input, intensities scaled to [0, 1]) or ``"litemedsam"`` (longest side
        resize, each slice min-max scaled to [0, 1], zero pad).
    device
        torch device (string or ``torch.device``); default CPU.
    dense_prompts
        The model also takes its prompts as a logit map with a residual output (the bundled small
        model; see ``decoding.dense_prior``). Official SAM checkpoints: ``False``.
    cpu_bf16
        The encoder may run in bfloat16 autocast on a CPU with native bfloat16 (AMX / AVX512-BF16) when the
        user sets ``MEDADAPT_SAM_PRECISION=bf16`` (faster, but LiteMedSAM's masks change). The precision is
        part of :attr:`model_hash`, so cached embeddings never mix precisions.
    cpu_batch
        Slices per encoder call on a CPU (1 for LiteMedSAM, whose full-resolution first stage made
        batches slower per slice).
    click_sam
        A second ``Sam`` sharing ``sam``'s image encoder whose prompt encoder and mask decoder answer every
        prompt with a click or a previous mask (LiteMedSAM + click decoder: a box alone keeps the published
        decoder), or ``None``.
    """

    def __init__(
        self,
        sam: Any,
        name: str,
        model_hash: str,
        preprocess: str = "sam",
        device: Any = None,
        dense_prompts: bool = False,
        cpu_bf16: bool = False,
        cpu_batch: int = 8,
        click_sam: Any = None,
    ) -> None:
        import torch

        if preprocess not in PREPROCESSING:
            raise ModelError(f"Unknown preprocessing {preprocess!r}; one of {PREPROCESSING}.")
        self.sam = sam.eval()
        self.click_sam = None if click_sam is None else click_sam.eval()
        self.name = name
        self.weights_hash = model_hash
        self.cpu_bf16 = bool(cpu_bf16)
        self.cpu_batch = max(1, int(cpu_batch))
        self.preprocess = preprocess
        self.dense_prompts = bool(dense_prompts)
        self.image_size = int(sam.image_encoder.img_size)
        self.grid = int(sam.prompt_encoder.image_embedding_size[0])
        self.embed_dim = int(sam.prompt_encoder.embed_dim)
        self.transform = ResizeLongestSide(self.image_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._to_device()
        self.fallback_reason: str | None = None

    def _to_device(self) -> None:
        self.sam.to(self.device)
        if self.click_sam is not None:
            self.click_sam.to(self.device)

    @property
    def encoder_precision(self) -> str:
        """``"fp16"`` (CUDA), ``"bf16"`` (asked for, on a CPU with native bfloat16, for a model that allows it) or
        ``"fp32"``."""
        if self.device.type == "cuda":
            return "fp16"
        return "bf16" if self.device.type == "cpu" and self.cpu_bf16 and cpu_bf16_available() else "fp32"

    @property
    def model_hash(self) -> str:
        """The weights' sha256 plus the encoder precision when it is not fp32 (part of every cache key)."""
        precision = self.encoder_precision
        return self.weights_hash if precision == "fp32" else f"{self.weights_hash}:{precision}"

    @property
    def batch_size(self) -> int:
        """Slices per encoder call: 8 on a GPU, :attr:`cpu_batch` on a CPU."""
        return 8 if self.device.type == "cuda" else self.cpu_batch

    # ----------------------------------------------------------------- geometry
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """Size ``(h, w)`` of the resized (unpadded) model input for a slice of ``original_size``."""
        if self.preprocess == "medsam":
            return self.image_size, self.image_size
        return self.transform.preprocess_shape(*original_size)

    def _scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        h, w = self.input_size(original_size)
        return h / original_size[0], w / original_size[1]

    # ------------------------------------------------------------------ encoder
    def _prepare(self, rgb: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        size = self.input_size(rgb.shape[:2])
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        tensor = F.interpolate(
            tensor, size, mode="bilinear", align_corners=False, antialias=size[0] < rgb.shape[0]
        )
        if self.preprocess == "medsam":
            return tensor[0] / 255.0
        if self.preprocess == "litemedsam":
            low, high = tensor.min(), tensor.max()
            x = (tensor[0] - low) / torch.clamp(high - low, min=1e-8)
        else:
            x = (tensor[0] - self.sam.pixel_mean.cpu()) / self.sam.pixel_std.cpu()
        return F.pad(x, (0, self.image_size - size[1], 0, self.image_size - size[0]))

    def embed(self, images_rgb: list[np.ndarray]) -> np.ndarray:
        """Encode ``(H, W, 3)`` uint8 images (one batch) into ``(B, C, g, g)`` float32 embeddings.

        On CUDA the encoder runs in fp16. If the GPU runs out of memory, a warning says so and the
        model moves to the CPU for the rest of the session.
        """
        import torch

        batch = torch.stack([self._prepare(img) for img in images_rgb])
        try:
            return self._encode(batch)
        except torch.cuda.OutOfMemoryError:
            self._fall_back_to_cpu(len(images_rgb))
            return self._encode(batch)

    def _encode(self, batch: Any) -> np.ndarray:
        import torch

        precision = self.encoder_precision
        with torch.inference_mode():
            x = batch.to(self.device)
            if getattr(self.sam.image_encoder, "channels_last", False):
                x = x.contiguous(memory_format=torch.channels_last)
            if precision == "fp32":
                out = self.sam.image_encoder(x)
            else:
                dtype = torch.float16 if precision == "fp16" else torch.bfloat16
                with torch.autocast(self.device.type, dtype=dtype):
                    out = self.sam.image_encoder(x)
            return out.float().cpu().numpy()

    def _fall_back_to_cpu(self, batch_size: int) -> None:
        import torch

        self.fallback_reason = (
            f"The GPU ran out of memory while encoding {batch_size} slice(s) with {self.name}; "
            "continuing on the CPU (slower). Close other GPU programs, use a smaller model, or set "
            "MEDADAPT_DEVICE=cpu to avoid this."
        )
        warnings.warn(self.fallback_reason, RuntimeWarning, stacklevel=3)
        torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        self._to_device()

    # ------------------------------------------------------------------ decoder
    def predict(
        self,
        embedding: np.ndarray,
        original_size: tuple[int, int],
        prompts: Prompts,
        multimask: bool | None = None,
    ) -> MaskPrediction:
        """Decode masks for one slice from its embedding and prompts.

        Parameters
        ----------
        embedding
            ``(C, g, g)`` embedding of the slice (any float dtype).
        original_size
            The slice's ``(rows, cols)``.
        prompts
            Points / box in slice ``(row, col)`` coordinates, optional previous-mask logits.
        multimask
            Return three candidates; default: only for an ambiguous prompt (one click, no box).
        """
        import torch

        check_inside(prompts, original_size)
        if prompts.is_empty and prompts.mask_input is None:
            raise ModelError("Give at least one click or a box to segment.")
        if multimask is None:
            multimask = len(prompts.points) == 1 and prompts.box is None
        sy, sx = self._scale(original_size)
        dev = self.device
        points = labels = boxes = masks = None
        if len(prompts.points):
            # SAM's convention: pixel indices scaled to the input; the prompt encoder adds the half pixel.
            xy = np.stack([prompts.points[:, 1] * sx, prompts.points[:, 0] * sy], axis=1)
            points = torch.as_tensor(xy[None], dtype=torch.float32, device=dev)
            labels = torch.as_tensor(prompts.labels[None], dtype=torch.int64, device=dev)
        if prompts.box is not None:
            r0, c0, r1, c1 = clip_box(prompts.box, original_size)
            xyxy = [c0 * sx, r0 * sy, c1 * sx, r1 * sy]
            boxes = torch.as_tensor([xyxy], dtype=torch.float32, device=dev)
        if prompts.mask_input is not None:
            low = np.asarray(prompts.mask_input, np.float32).reshape(1, 1, *prompts.mask_input.shape[-2:])
            if low.shape[-1] != 4 * self.grid:
                raise ModelError(
                    f"The previous mask has {low.shape[-1]} px but {self.name} expects {4 * self.grid}; "
                    "it comes from another model. Start again without it."
                )
            masks = torch.as_tensor(low, device=dev)
        emb = torch.as_tensor(np.asarray(embedding, np.float32)[None], device=dev)
        residual = None
        if self.dense_prompts:
            residual = dense_prior(1, self.image_size, 4 * self.grid, points, labels, boxes, masks).to(dev)
            masks = residual
        refining = len(prompts.points) > 0 or prompts.mask_input is not None  # what the click decoder learnt
        sam = self.click_sam if self.click_sam is not None and refining else self.sam
        with torch.inference_mode():
            logits, iou = decode(sam, emb, points, labels, boxes, masks, multimask=multimask, residual=residual)
            full = self.postprocess(logits, original_size)
        scores = iou[0].float().cpu().numpy()
        best = int(np.argmax(scores))
        masks_np = (full[0] > 0).cpu().numpy()
        return MaskPrediction(masks_np[best], masks_np, scores, best, logits[0].float().cpu().numpy())

    def postprocess(self, low_res: Any, original_size: tuple[int, int]) -> Any:
        """Upsample ``(B, K, 4g, 4g)`` logits to the slice size, removing the padding."""
        import torch.nn.functional as F

        size = self.input_size(original_size)
        up = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        up = up[..., : size[0], : size[1]]
        return F.interpolate(up, tuple(original_size), mode="bilinear", align_corners=False)
