"""The bundled small promptable model: SAM's prompt encoder and mask decoder on a small CNN encoder.

SAM's ViT image encoder needs seconds per slice on a CPU. This model keeps Segment Anything's
interface and decoder (``PromptEncoder``, ``MaskDecoder`` with a ``TwoWayTransformer``) and replaces
the encoder with a small convolutional feature pyramid that turns a 256 x 256 RGB input into the
256-channel 64 x 64 embedding the decoder expects. It is trained by
``napari_medadapt.training.sam_small`` on slices of real MRI and CT volumes; weights and a model card
ship in ``napari_medadapt/weights/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..hashing import sha256_file
from ..models.promptable_card import PromptableCard
from ..models.registry import bundled_dir
from . import _compat

SMALL_WEIGHTS = bundled_dir() / "sam_small.safetensors"
SMALL_CARD = bundled_dir() / "sam_small.json"

# 256 px input -> 96-channel 32 x 32 embedding -> 128 x 128 mask logits. Chosen for CPU speed,
# both at use (a 64 x 64 x 256 embedding made SAM's decoder take about 230 ms per click on one core)
# and for training within a 30-minute single-core budget.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 256,
    "embed_dim": 96,
    "widths": [16, 32, 64, 128],
    "fpn_dim": 64,
    "out_stride": 8,
    "decoder_mlp_dim": 384,
}


def _encoder_class() -> type:
    import torch
    from torch import nn

    layer_norm_2d = _compat.sam_common().LayerNorm2d

    def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class ResBlock(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    class SmallImageEncoder(nn.Module):
        """CNN feature pyramid: (B, 3, S, S) -> (B, embed_dim, S/4, S/4), SAM's embedding layout."""

        def __init__(
            self, image_size: int, embed_dim: int, widths: list[int], fpn_dim: int, out_stride: int
        ) -> None:
            super().__init__()
            if out_stride not in (4, 8):
                raise ModelError(f"sam-small supports an output stride of 4 or 8, not {out_stride}.")
            self.img_size = image_size  # read by Sam.preprocess for padding
            self.out_stride = out_stride
            w0, w1, w2, w3 = widths
            self.stem = nn.Sequential(conv_bn(3, w0, 2), conv_bn(w0, w1, 2), ResBlock(w1))
            self.down2 = nn.Sequential(conv_bn(w1, w2, 2), ResBlock(w2), ResBlock(w2))
            self.down3 = nn.Sequential(conv_bn(w2, w3, 2), ResBlock(w3), ResBlock(w3))
            self.lat1 = nn.Conv2d(w1, fpn_dim, 1)
            self.lat2 = nn.Conv2d(w2, fpn_dim, 1)
            self.lat3 = nn.Conv2d(w3, fpn_dim, 1)
            self.smooth = nn.Sequential(
                nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1, groups=fpn_dim, bias=False),
                nn.Conv2d(fpn_dim, fpn_dim, 1),
                nn.ReLU(inplace=True),
            )
            self.neck = nn.Sequential(nn.Conv2d(fpn_dim, embed_dim, 1), layer_norm_2d(embed_dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f1 = self.stem(x)
            f2 = self.down2(f1)
            f3 = self.down3(f2)
            up = nn.functional.interpolate
            p = self.lat3(f3)
            p = self.lat2(f2) + up(p, size=f2.shape[-2:], mode="bilinear", align_corners=False)
            if self.out_stride == 4:
                p = self.lat1(f1) + up(p, size=f1.shape[-2:], mode="bilinear", align_corners=False)
            return self.neck(self.smooth(p))

    return SmallImageEncoder


def build_small_sam(config: dict[str, Any] | None = None) -> Any:
    """Build the (untrained) small SAM-architecture model from a config (defaults: ``DEFAULT_CONFIG``)."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    modeling = _compat.sam_modeling()
    size = int(cfg["image_size"])
    stride = int(cfg["out_stride"])
    grid = size // stride
    encoder = _encoder_class()(
        size, int(cfg["embed_dim"]), list(cfg["widths"]), int(cfg["fpn_dim"]), stride
    )
    return modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=_compat.build_prompt_encoder(int(cfg["embed_dim"]), grid, size),
        mask_decoder=_compat.build_mask_decoder(int(cfg["embed_dim"]), mlp_dim=int(cfg["decoder_mlp_dim"])),
        pixel_mean=list(_compat.PIXEL_MEAN),
        pixel_std=list(_compat.PIXEL_STD),
    ).eval()


def read_small_card(card_path: str | Path = SMALL_CARD) -> PromptableCard:
    """Read the bundled model's card.

    Raises
    ------
    ModelError
        When the file cannot be read as JSON, or is not a valid promptable card.
    """
    try:
        data = json.loads(Path(card_path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Cannot read the model card {card_path}: {exc}. Reinstall napari-medadapt or retrain "
            "with `medadapt train sam-small`."
        ) from exc
    return PromptableCard.from_dict(data, source=f"model card {card_path}", path=str(card_path))


def load_small_sam(
    weights_path: str | Path = SMALL_WEIGHTS, card_path: str | Path = SMALL_CARD, verify: bool = True
) -> tuple[Any, PromptableCard, str]:
    """Load the bundled small model; returns ``(sam_module, card, sha256_of_weights)``.

    Raises
    ------
    ModelError
        When the weights are missing, do not match the card's sha256, or do not fit the architecture.
    """
    from safetensors.torch import load_file

    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise ModelError(
            f"The bundled SAM weights are missing: {weights_path}. Reinstall napari-medadapt or "
            "recreate them with `medadapt train sam-small`."
        )
    card = read_small_card(card_path)
    sha = sha256_file(weights_path)
    expected = card.weights_sha256
    if verify and expected and sha != expected:
        raise ModelError(
            f"{weights_path} has sha256 {sha}, but its model card {card_path} expects {expected}. "
            "The file is corrupt or from another version: reinstall napari-medadapt."
        )
    model = build_small_sam(card.architecture)
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{weights_path} does not fit the sam-small architecture: {exc}") from exc
    return model.eval(), card, sha


def save_small_sam(model: Any, weights_path: str | Path) -> str:
    """Save the model's state dict as fp16 safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        state[key] = value.half() if value.is_floating_point() else value
    save_file(state, str(weights_path))
    return sha256_file(weights_path)
