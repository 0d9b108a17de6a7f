"""Segment Anything engine: checkpoints, embedding cache, prompt -> mask, 3D propagation, click simulation.

Importing this package does not import torch or segment_anything; they load when a model is built.
See docs/architecture.md, section "Segment Anything (core/sam)".
"""

from .clicks import (
    ClickSession,
    first_click,
    iou,
    jittered_box,
    next_click,
    simulate_clicks,
    summarize_sessions,
)
from .model import MaskPrediction, PromptableModel
from .predictor import EmbeddingCache, PrecomputeStats, SamPredictor, slice_key
from .prompts import (
    AUTO_WINDOW,
    WINDOW_PRESETS,
    PromptError,
    Prompts,
    box_from_mask,
    make_prompts,
    resolve_window,
    slice_to_rgb,
)
from .propagation import (
    MODES as PROPAGATION_MODES,
)
from .propagation import (
    PropagationResult,
    SliceStat,
    interpolate_masks,
    mask_to_logits,
    propagate,
)
from .registry import (
    REGISTRY,
    SMALL_MODEL_NAME,
    checkpoint_path,
    fetch_checkpoint,
    get_entry,
    list_checkpoints,
    load_sam,
)

__all__ = [
    "AUTO_WINDOW",
    "PROPAGATION_MODES",
    "REGISTRY",
    "SMALL_MODEL_NAME",
    "WINDOW_PRESETS",
    "ClickSession",
    "EmbeddingCache",
    "MaskPrediction",
    "PrecomputeStats",
    "PromptError",
    "PromptableModel",
    "Prompts",
    "PropagationResult",
    "SamPredictor",
    "SliceStat",
    "box_from_mask",
    "checkpoint_path",
    "fetch_checkpoint",
    "first_click",
    "get_entry",
    "interpolate_masks",
    "iou",
    "jittered_box",
    "list_checkpoints",
    "load_sam",
    "make_prompts",
    "mask_to_logits",
    "next_click",
    "propagate",
    "resolve_window",
    "simulate_clicks",
    "slice_key",
    "slice_to_rgb",
    "summarize_sessions",
]
