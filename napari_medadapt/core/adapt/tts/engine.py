"""Forward passes behind TTS (keypoint feature muting): feature taps and channel masks.

Internal to :mod:`napari_medadapt.core.adapt.tts.run`. A tap is a named feature map of a
:class:`~napari_medadapt.core.models.SegModel`:

- ``"decoder"``: the last decoder map, the input of the head. Muting it needs no hook: the features
  are multiplied by the channel mask and the head runs on them (``model.logits_from_decoder``).
- any other tap (``"bottleneck"``, ...): the channels are muted by a forward hook on the module that
  produces the tap (``model.tap_modules()``), and the rest of the network runs on the muted tensor.

Weights are never touched: a mask is a multiplication of activations inside ``torch.no_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError

if TYPE_CHECKING:
    import torch

HEAD_LAYER = "decoder"
TAP_LAYERS: tuple[str, ...] = ("decoder", "bottleneck")


@dataclass
class TapPass:
    """Outputs of one unmuted forward pass with the tap captured.

    Attributes
    ----------
    logits
        ``(B, K, *spatial)`` network output on the input grid.
    features
        ``(B, C, *tap)`` the tap's activations: the input grid for ``decoder``, the network's padded
        (and coarser) grid for other taps.
    """

    logits: torch.Tensor
    features: torch.Tensor


def spatial_dims_of(model: Any) -> int:
    """Return 2 or 3: the number of spatial dimensions the model convolves over."""
    dims = getattr(model, "spatial_dims", None)
    if dims not in (2, 3):
        raise ModelError(
            "The model does not say whether it is 2D or 3D (no 'spatial_dims'); load it with "
            "napari_medadapt.core.models.load_model."
        )
    return int(dims)


def _tap_modules(model: Any) -> dict[str, Any]:
    getter = getattr(model, "tap_modules", None)
    return dict(getter()) if callable(getter) else {}


def tap_module(model: Any, layer: str) -> Any:
    """Return the module whose output is the feature tap ``layer`` (muted by a forward hook)."""
    modules = _tap_modules(model)
    if layer in modules:
        return modules[layer]
    available = [HEAD_LAYER, *sorted(modules)]
    raise ModelError(
        f"The model has no feature tap {layer!r} to mute; it provides: {', '.join(available)}. "
        "Choose 'decoder' (works for every segmentation model of the plugin) or 'bottleneck'."
    )


def check_layer(model: Any, layer: str) -> None:
    """Raise a clear :class:`ModelError` if ``layer`` cannot be muted on ``model``."""
    if not hasattr(model, "forward_features") or not hasattr(model, "head"):
        raise ModelError(
            "Feature muting needs a segmentation model with feature taps (forward_features and head); "
            "load one with napari_medadapt.core.models.load_model."
        )
    if layer != HEAD_LAYER:
        tap_module(model, layer)


def _broadcast_mask(mask: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    return mask.reshape(*mask.shape, *([1] * spatial_dims))


@contextmanager
def _hooked(
    module: Any, store: dict[str, Any], mask: torch.Tensor | None, spatial_dims: int
) -> Iterator[None]:
    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        store["features"] = output
        if mask is None:
            return None
        return output * _broadcast_mask(mask.to(output.dtype), spatial_dims)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _head(model: Any, features: torch.Tensor) -> torch.Tensor:
    combine = getattr(model, "logits_from_decoder", None)
    return combine(features) if callable(combine) else model.head(features)


def forward_tap(model: Any, x: torch.Tensor, layer: str, spatial_dims: int) -> TapPass:
    """Run the model on ``x`` ``(B, C, *spatial)`` and capture the tap ``layer``; no muting."""
    import torch

    with torch.no_grad():
        if layer == HEAD_LAYER:
            result = model.forward_features(x, taps=[HEAD_LAYER])
            features = result.features.get(HEAD_LAYER)
            if features is None:
                raise ModelError(
                    "The model's forward_features gives no 'decoder' map, so its head cannot run on muted "
                    "features; this model does not support feature muting."
                )
            return TapPass(logits=result.logits, features=features)
        store: dict[str, Any] = {}
        with _hooked(tap_module(model, layer), store, None, spatial_dims):
            logits = model(x)
        return TapPass(logits=logits, features=store["features"])


def muted_logits(
    model: Any, x: torch.Tensor, tap: TapPass, layer: str, masks: torch.Tensor, spatial_dims: int
) -> torch.Tensor:
    """Logits with the tap's channels multiplied by ``masks`` ``(B, C)`` (1 keep, 0 mute)."""
    import torch

    with torch.no_grad():
        if layer == HEAD_LAYER:
            return _head(model, tap.features * _broadcast_mask(masks.to(tap.features.dtype), spatial_dims))
        store: dict[str, Any] = {}
        with _hooked(tap_module(model, layer), store, masks, spatial_dims):
            return model(x)


def background_channels(model: Any, layer: str) -> np.ndarray:
    """Channels of the ``decoder`` tap whose head weight favours the background class (sorted indices).

    The head must be one 1x1 convolution (a linear map of the decoder channels) and the model's first class
    the background (card label 0): a channel *favours the background* when its largest head weight is the
    background's (for a single sigmoid output: a negative weight). Empty for any other tap or head, where no
    channel can be attributed to a class. A prototype branch, when the model has one, sees the same kept
    channels; the attribution uses the linear head only.
    """
    import torch

    if layer != HEAD_LAYER or not hasattr(model, "head"):
        return np.zeros(0, dtype=np.int64)
    card = getattr(model, "card", None)
    if card is not None and list(getattr(card, "labels", [0]))[:1] != [0]:
        return np.zeros(0, dtype=np.int64)
    weighted = [m for m in model.head.modules() if next(m.parameters(recurse=False), None) is not None]
    if len(weighted) != 1 or not isinstance(weighted[0], torch.nn.modules.conv._ConvNd):
        return np.zeros(0, dtype=np.int64)
    conv = weighted[0]
    if any(k != 1 for k in conv.kernel_size) or conv.groups != 1:
        return np.zeros(0, dtype=np.int64)
    weight = conv.weight.detach().reshape(conv.out_channels, conv.in_channels).cpu().numpy()
    favours = weight[0] < 0 if weight.shape[0] == 1 else weight.argmax(axis=0) == 0
    return np.flatnonzero(favours).astype(np.int64)


def padded_shape(model: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """The grid the network computes on for an input of spatial ``shape`` (padded to its total stride)."""
    divisor = getattr(model, "size_divisor", None) or (1,) * len(shape)
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, divisor, strict=True))


def features_on_grid(model: Any, features: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Tap features ``(B, C, *tap)`` on the input grid ``shape``: linear upsampling, then crop the padding."""
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    if tuple(features.shape[2:]) == shape:
        return features
    grid = padded_shape(model, shape)
    if tuple(features.shape[2:]) != grid:
        mode = "bilinear" if len(grid) == 2 else "trilinear"
        features = F.interpolate(features, size=grid, mode=mode, align_corners=False)
    return features[(slice(None), slice(None), *(slice(0, s) for s in shape))]


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, K, ...)``: softmax, or ``[1-p, p]`` for a single sigmoid output."""
    import torch

    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Flip ``x`` over ``dims`` (no-op for the empty tuple)."""
    return x.flip(dims) if dims else x


def keep_count(n_channels: int, keep_fraction: float) -> int:
    """Number of channels kept: ``ceil(keep_fraction * C)``, at least 1 and at most ``C``."""
    return int(min(n_channels, max(1, math.ceil(keep_fraction * n_channels - 1e-9))))


def points_to_grid(points: np.ndarray, source_shape: Sequence[int], grid_shape: Sequence[int]) -> np.ndarray:
    """Map voxel indices ``(N, ndim)`` of the source grid to the model grid (voxel centres, clipped)."""
    if tuple(source_shape) == tuple(grid_shape) or len(points) == 0:
        return points
    ratio = np.asarray(grid_shape, dtype=np.float64) / np.asarray(source_shape, dtype=np.float64)
    mapped = np.floor((points + 0.5) * ratio).astype(np.int64)
    return np.clip(mapped, 0, np.asarray(grid_shape) - 1)


def resize_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resize of the trailing 2 or 3 axes of ``array`` ``(..., *grid)`` to ``shape`` (float32)."""
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    grid = array.shape[-len(shape) :]
    if tuple(grid) == shape:
        return np.asarray(array, dtype=np.float32)
    lead = array.shape[: -len(shape)]
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, *grid)
    out = np.empty((flat.shape[0], *shape), dtype=np.float32)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    for index in range(flat.shape[0]):
        t = torch.from_numpy(flat[index])[None, None]
        out[index] = F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()
    return out.reshape(*lead, *shape)
