"""LiteMedSAM's image encoder: the TinyViT-5M variant distilled from MedSAM, 256 px in, 64 x 64 x 256 out.

Architecture as published (Wu et al., TinyViT, ECCV 2022; adapted by Ma et al. for LiteMedSAM): a
1 x 1 convolutional stem at full resolution, one stage of MBConv blocks, three stages of windowed
self-attention blocks (with a learned bias per relative offset, a depthwise convolution between attention
and MLP), patch merging between stages (stride 2, except into the 320-channel last stage, so the output
stays 64 x 64), and SAM's neck (1 x 1 then 3 x 3 convolution, each with a channel LayerNorm). Module and
parameter names follow the published checkpoint, so its state dict loads unchanged.

This module imports torch at import time; it is imported only when a LiteMedSAM model is built.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_gelu(x: torch.Tensor) -> bool:
    """Whether GELU can run as a post-op of the preceding layer in one oneDNN call: fp32 on a CPU build with
    oneDNN, outside autocast (the opt-in bf16 path and GPUs use the modules as they are)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def gelu_of(
    layer: nn.Module, x: torch.Tensor, fused: bool, padding: tuple[int, int] | None = None
) -> torch.Tensor:
    """``GELU(layer(x))``; for an inference-fused encoder on a CPU, one oneDNN convolution / matrix product with
    the exact (erf) GELU as its post-op: the same maths without a second pass over the activations. ``padding``
    replaces a fused convolution's own (for strips that carry their neighbours' rows)."""
    if fused and _onednn_gelu(x):
        if isinstance(layer, nn.Conv2d):
            return torch.ops.mkldnn._convolution_pointwise(
                x, layer.weight, layer.bias, list(padding or layer.padding), list(layer.stride), list(layer.dilation),
                layer.groups, "gelu", [], "none",
            )
        if isinstance(layer, nn.Linear):
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu", [], "none")
    return F.gelu(layer(x))


class ConvBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (``c``, ``bn``: the checkpoint's names)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class Stem(nn.Module):
    """Two 1 x 1 ConvBN with a GELU between: channels up to the first stage, resolution kept."""

    fused = False  # set by :func:`fuse_for_inference`

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq[2](gelu_of(self.seq[0], x, self.fused))


class MBConv(nn.Module):
    """Inverted residual: 1 x 1 expand, 3 x 3 depthwise, 1 x 1 project, residual, GELU.

    Fused for inference on a CPU, the block runs in strips of :attr:`strip_rows` rows, so a strip's expanded
    activations stay in the CPU's caches instead of a full-resolution round trip through memory per layer (the
    same values: the depthwise convolution sees its neighbour rows; about 2x faster at 256 x 256).
    """

    fused = False  # set by :func:`fuse_for_inference`
    strip_rows = 32

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and _onednn_gelu(x):
            rows, step = x.shape[2], self.strip_rows
            return torch.cat([self._strip(x, top, min(rows, top + step)) for top in range(0, rows, step)], dim=2)
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)

    def _strip(self, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        """Output rows ``top:bottom`` from input rows one beyond them (the 3 x 3 halo); the expanded activations
        get zero rows only at the image's edges, as the full-image convolution pads them."""
        first, last = max(0, top - 1), min(x.shape[2], bottom + 1)
        y = gelu_of(self.conv1, x[:, :, first:last], True)
        if first == top or last == bottom:
            y = F.pad(y, (0, 0, int(first == top), int(last == bottom)))
        y = gelu_of(self.conv2, y, True, padding=(0, 1))
        return F.gelu(self.conv3(y) + x[:, :, top:bottom])


class PatchMerging(nn.Module):
    """1 x 1 ConvBN, 3 x 3 depthwise ConvBN (``stride``), 1 x 1 ConvBN; tokens in, tokens out."""

    fused = False  # set by :func:`fuse_for_inference`

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # (B, L, C) tokens of a square map
            x = x.transpose(1, 2).reshape(x.shape[0], -1, self.resolution, self.resolution)
        x = gelu_of(self.conv1, x, self.fused)
        x = gelu_of(self.conv2, x, self.fused)
        return self.conv3(x).flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of one window, plus a learned bias per |offset|.

    As published: scores ``q k^T / sqrt(d) + bias``, softmax, times ``v``. Fused for inference: the bias table is
    gathered once and the same maths runs in PyTorch's fused attention kernel (given a 4-D bias, the CPU kernel
    takes it without a separate softmax pass).
    """

    fused = False  # set by :func:`fuse_for_inference`

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        cells = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = [
            offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in cells for b in cells
        ]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(index, dtype=torch.long).view(len(cells), len(cells)), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias_table.to(q.dtype))
        else:
            scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5 + self.attention_biases[:, self.attention_bias_idxs]
            out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def fuse(self) -> None:
        """Gather the bias table once (``(1, heads, n, n)``) and use the fused attention kernel."""
        self.register_buffer(
            "bias_table", self.attention_biases[:, self.attention_bias_idxs][None].detach().clone(), persistent=False
        )
        self.fused = True


class Mlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear."""

    fused = False  # set by :func:`fuse_for_inference`

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_of(self.fc1, self.norm(x), self.fused))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), 3 x 3 depthwise ConvBN on the map, MLP (residual)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        side, w = self.resolution, self.window
        if side == w:
            return self.attn(x)
        pad = (w - side % w) % w
        grid = x.view(b, side, side, c)
        if pad:
            grid = F.pad(grid, (0, 0, 0, pad, 0, pad))
        n = (side + pad) // w
        windows = grid.view(b, n, w, n, w, c).transpose(2, 3).reshape(b * n * n, w * w, c)
        out = self.attn(windows).view(b, n, n, w, w, c).transpose(2, 3).reshape(b, n * w, n * w, c)
        return out[:, :side, :side].reshape(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        x = x + self._attend(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution))
        x = x.view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """A stage: its blocks, then (except the last stage) patch merging into the next stage's width."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an ``(B, C, H, W)`` map (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class TinyViT(nn.Module):
    """LiteMedSAM's image encoder: ``(B, 3, 256, 256)`` in [0, 1] -> ``(B, 256, 64, 64)`` embedding.

    Parameters
    ----------
    image_size, embed_dims, depths, num_heads, window_sizes, mlp_ratio, mbconv_expand_ratio,
    local_conv_size, out_chans
        Input side, and per stage: widths, blocks, attention heads and windows; MLP and MBConv expansion,
        the depthwise kernel, the embedding's channels. The defaults are LiteMedSAM's.
    """

    def __init__(
        self,
        image_size: int = 256,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = image_size
        self.patch_embed = Stem(3, embed_dims[0])
        stages: list[nn.Module] = []
        resolution = image_size
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            last = i == len(embed_dims) - 1
            if i == 0:
                blocks: list[nn.Module] = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dim, resolution, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                    for _ in range(depth)
                ]
            downsample = None
            if not last:
                out_dim = embed_dims[i + 1]
                stride = 1 if i + 1 == len(embed_dims) - 1 else 2  # the last stage keeps the resolution
                downsample = PatchMerging(resolution, dim, out_dim, stride)
                resolution //= stride
            stages.append(Stage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.out_resolution = resolution
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](self.patch_embed(x))  # the MBConv stage works on the map, hands over tokens
        for stage in self.layers[1:]:
            x = stage(x)
        b, _, c = x.shape
        side = self.out_resolution
        return self.neck(x.transpose(1, 2).reshape(b, c, side, side))


def fuse_for_inference(encoder: TinyViT) -> TinyViT:
    """Fold every BatchNorm into its convolution, store the weights channels-last, run each GELU as its layer's
    oneDNN post-op and the window attention in the fused kernel (inference only).

    Same maths (outputs agree to float rounding; the same masks); on the CPU of our benchmarks about 2x faster
    than the published module in fp32 (docs/benchmarks/sam.md). The encoder is frozen from here on.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    encoder.eval()
    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ConvBN):
                setattr(module, name, fuse_conv_bn_eval(child.c, child.bn))
    encoder.to(memory_format=torch.channels_last)
    encoder.channels_last = True
    for module in encoder.modules():  # after the layout change: the attention's bias table stays row-major
        if isinstance(module, WindowAttention):
            module.fuse()
        elif isinstance(module, Stem | MBConv | PatchMerging | Mlp):
            module.fused = True
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder


def build_litemedsam(state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """LiteMedSAM as a ``segment_anything.modeling.Sam``: TinyViT encoder, SAM's prompt encoder and decoder.

    Parameters
    ----------
    state
        The checkpoint's state dict; loaded strictly (a :class:`RuntimeError` names mismatched keys), then
        the encoder is fused for inference.
    """
    from . import _compat

    encoder = TinyViT()  # its defaults are LiteMedSAM's
    embed = encoder.neck[-1].weight.shape[0]
    sam = _compat.sam_modeling().Sam(
        image_encoder=encoder,
        prompt_encoder=_compat.build_prompt_encoder(embed, encoder.out_resolution, encoder.img_size),
        mask_decoder=_compat.build_mask_decoder(embed, mlp_dim=2048),
        pixel_mean=list(_compat.PIXEL_MEAN),
        pixel_std=list(_compat.PIXEL_STD),
    )
    if state is not None:
        sam.load_state_dict(state)
        fuse_for_inference(sam.image_encoder)
    return sam.eval()
