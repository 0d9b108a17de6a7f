"""Load Segment Anything's model code without its package ``__init__`` and without touching anyone's imports.

``segment_anything/__init__.py`` imports its predictor, whose ``utils/transforms.py`` imports
torchvision, which may not import beside the installed torch. The model classes themselves
(``segment_anything.modeling``) only need torch, and import each other relatively. So the installed
package directory (found with ``importlib.util.find_spec``, which locates but does not execute the package)
is loaded under a private name, :data:`ALIAS`: ``ALIAS.modeling`` is the real ``segment_anything.modeling``
code, and the name ``segment_anything`` in ``sys.modules`` is never created or changed, so another plugin
(micro-sam, say) that imports ``segment_anything`` later gets exactly what it would have got without us.
When ``segment_anything.modeling`` is already imported (by another plugin), that module is used.

This module also holds the few pieces of ``segment_anything.build_sam`` and
``segment_anything.utils.transforms.ResizeLongestSide`` we need, re-implemented in plain
torch/numpy, because importing those modules would pull in torchvision (transforms) or would go
through the package ``__init__`` (build_sam); their ``torch.load`` also lacks ``weights_only``.
Everything here imports torch lazily: importing napari_medadapt never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ModelError

PACKAGE = "segment_anything"
#: The private name the installed ``segment_anything`` folder is loaded under.
ALIAS = "napari_medadapt._segment_anything"

# Pixel statistics SAM's encoder was trained with (RGB, 0-255 scale), from segment_anything.build_sam.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# Encoder sizes of the three published SAM variants (segment_anything.build_sam).
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}


def sam_modeling() -> ModuleType:
    """Return Segment Anything's ``modeling`` package without running ``segment_anything/__init__.py``.

    Raises
    ------
    ModelError
        If the ``segment-anything`` package is not installed.
    """
    existing = sys.modules.get(PACKAGE + ".modeling") or sys.modules.get(ALIAS + ".modeling")
    if existing is not None:
        return existing
    if ALIAS not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE) if PACKAGE not in sys.modules else sys.modules[PACKAGE].__spec__
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                "The 'segment-anything' package is not installed. Install it with "
                "`pip install segment-anything` (torchvision is not needed)."
            )
        package = types.ModuleType(ALIAS)
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = ALIAS
        package.__file__ = None
        sys.modules[ALIAS] = package
    return importlib.import_module(ALIAS + ".modeling")


def sam_common() -> ModuleType:
    """Segment Anything's ``modeling.common`` (``LayerNorm2d``, ``MLPBlock``), loaded as :func:`sam_modeling`."""
    return importlib.import_module(sam_modeling().__name__ + ".common")


def build_sam_vit(variant: str, image_size: int = 1024) -> Any:
    """Build an untrained SAM (``segment_anything.modeling.Sam``) with a ViT-B/L/H image encoder.

    Mirrors ``segment_anything.build_sam._build_sam`` (same module names, so official state dicts load).

    Parameters
    ----------
    variant
        ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
    image_size
        Encoder input side in pixels (1024 for the published checkpoints).
    """
    import torch

    if variant not in VIT_CONFIGS:
        raise ModelError(f"Unknown SAM encoder {variant!r}; choose one of {sorted(VIT_CONFIGS)}.")
    cfg = VIT_CONFIGS[variant]
    m = sam_modeling()
    prompt_embed_dim = 256
    patch_size = 16
    grid = image_size // patch_size
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=cfg["depth"],
            embed_dim=cfg["embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["num_heads"],
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg["global_attn_indexes"],
            window_size=14,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=build_prompt_encoder(prompt_embed_dim, grid, image_size),
        mask_decoder=build_mask_decoder(prompt_embed_dim, mlp_dim=2048),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def build_prompt_encoder(embed_dim: int, grid: int, image_size: int) -> Any:
    """SAM's ``PromptEncoder`` for a ``grid`` x ``grid`` embedding of an ``image_size`` input."""
    return sam_modeling().PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def build_mask_decoder(embed_dim: int, mlp_dim: int) -> Any:
    """SAM's ``MaskDecoder`` (3 multimask outputs + 1, ``TwoWayTransformer`` of depth 2)."""
    m = sam_modeling()
    return m.MaskDecoder(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=8),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


class ResizeLongestSide:
    """Resize so the longest side is ``target_length``; map point/box coordinates accordingly.

    Re-implements ``segment_anything.utils.transforms.ResizeLongestSide`` (which needs torchvision).
    Coordinates here are ``(x, y)`` pairs as SAM's prompt encoder expects them.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    def preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """Output ``(height, width)`` for an input of the given size (same rounding as SAM)."""
        scale = self.target_length / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``(H, W, 3)`` uint8 image bilinearly (antialiased when shrinking)."""
        import torch
        import torch.nn.functional as F

        new_h, new_w = self.preprocess_shape(*image.shape[:2])
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        antialias = new_h < image.shape[0]
        resized = F.interpolate(tensor, (new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
        return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def apply_coords(self, coords_xy: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Scale ``(..., 2)`` ``(x, y)`` coordinates from ``original_size`` (H, W) to the resized image."""
        old_h, old_w = original_size
        new_h, new_w = self.preprocess_shape(old_h, old_w)
        out = np.asarray(coords_xy, dtype=np.float64).copy()
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out

    def apply_boxes(self, boxes_xyxy: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Scale ``(N, 4)`` ``(x0, y0, x1, y1)`` boxes from ``original_size`` (H, W)."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 2, 2)
        return self.apply_coords(boxes, original_size).reshape(-1, 4)
