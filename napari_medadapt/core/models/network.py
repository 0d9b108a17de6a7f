"""SegModel: one wrapper over a MONAI DynUNet (2D or 3D) with the hooks adaptation methods need.

Architecture config (the card's ``architecture`` object, also the argument of :func:`build_model`)::

    {
      "network": "DynUNet",              # the only family supported
      "spatial_dims": 2,                 # 2 (slice-wise) or 3
      "in_channels": 4, "out_channels": 4,
      "kernel_size": [3, 3, 3, 3],       # per level (int or per-axis list)
      "strides": [1, 2, 2, 2],           # per level; the first is the input block
      "upsample_kernel_size": [2, 2, 2], # default: strides[1:]
      "filters": [16, 32, 64, 128],      # default: MONAI's (32, 64, 128, ...)
      "res_block": true,
      "dropout": null,
      "normalizer": null | {"hidden": 16, "residual": true},
      "prototypes": null | {"per_class": 10, "dim": 128, "scale": 10.0}
    }

BatchNorm is always used (``norm_name="batch"``) so that BN statistics exist for test-time adaptation.
Inputs of any spatial size are accepted: they are zero-padded to a multiple of the total stride and the
full-resolution outputs are cropped back.
"""

from __future__ import annotations

import copy as _copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .card import ModelCard, default_card
from .normalizer import ModalityNormalizer
from .prototypes import PrototypeHead

_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass
class ForwardResult:
    """Logits (B, classes, *spatial) and the tapped feature maps by name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def default_architecture(
    spatial_dims: int = 2,
    in_channels: int = 4,
    out_channels: int = 4,
    filters: Iterable[int] = (32, 64, 128, 256),
    *,
    kernel_size: int = 3,
    normalizer: bool | Mapping[str, Any] = False,
    prototypes: Mapping[str, Any] | None = None,
    res_block: bool = True,
) -> dict[str, Any]:
    """An nnU-Net-style DynUNet config: kernel 3 everywhere, stride 1 then 2 per level.

    Parameters
    ----------
    spatial_dims, in_channels, out_channels
        Network dimensionality and channel counts.
    filters
        Channels per level; its length sets the depth.
    kernel_size
        Convolution kernel at every level.
    normalizer
        True (defaults) or a dict of :class:`ModalityNormalizer` options to add a per-modality normaliser.
    prototypes
        Options of :class:`PrototypeHead` (``per_class``, ``dim``, ``scale``) to add a prototype head.
    res_block
        Residual blocks in the encoder.
    """
    filters = [int(f) for f in filters]
    levels = len(filters)
    if levels < 3:
        raise ModelError("a DynUNet needs at least 3 levels (filters); give a longer 'filters' list.")
    strides = [1] + [2] * (levels - 1)
    if normalizer is True:
        normalizer_cfg: dict[str, Any] | None = {"hidden": 16, "residual": True}
    elif normalizer:
        normalizer_cfg = dict(normalizer)
    else:
        normalizer_cfg = None
    return {
        "network": "DynUNet",
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "kernel_size": [kernel_size] * levels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": filters,
        "res_block": bool(res_block),
        "dropout": None,
        "normalizer": normalizer_cfg,
        "prototypes": dict(prototypes) if prototypes else None,
    }


def _per_axis(value: int | Iterable[int], dims: int) -> list[int]:
    if isinstance(value, int):
        return [value] * dims
    values = [int(v) for v in value]
    if len(values) != dims:
        raise ModelError(f"a per-axis setting {values} must have {dims} entries.")
    return values


class SegModel(nn.Module):
    """A DynUNet segmenter with optional per-modality normaliser and prototype head.

    Parameters
    ----------
    card
        The model card; ``card.architecture`` is the config described in this module's docstring.

    Attributes
    ----------
    card : ModelCard
    spatial_dims : int
    network : monai.networks.nets.DynUNet
    normalizer : ModalityNormalizer | None
    prototypes : PrototypeHead | None
    """

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet

        arch = dict(card.architecture)
        family = arch.get("network", "DynUNet")
        if family != "DynUNet":
            raise ModelError(f"model {card.name!r}: unsupported network {family!r}; only 'DynUNet' is supported.")
        dims = int(arch.get("spatial_dims", 2))
        if dims not in (2, 3):
            raise ModelError(f"model {card.name!r}: spatial_dims must be 2 or 3, got {dims}.")
        norm = arch.get("norm_name", "batch")
        if norm != "batch":
            raise ModelError(
                f"model {card.name!r}: norm_name must be 'batch' (test-time adaptation relies on BatchNorm)."
            )
        try:
            strides = arch["strides"]
            kernel_size = arch["kernel_size"]
        except KeyError as err:
            raise ModelError(f"model {card.name!r}: the architecture lacks {err}.") from err
        self.card = card
        self.spatial_dims = dims
        self.network = DynUNet(
            spatial_dims=dims,
            in_channels=int(arch["in_channels"]),
            out_channels=int(arch["out_channels"]),
            kernel_size=kernel_size,
            strides=strides,
            upsample_kernel_size=arch.get("upsample_kernel_size", strides[1:]),
            filters=arch.get("filters"),
            dropout=arch.get("dropout"),
            norm_name="batch",
            res_block=bool(arch.get("res_block", True)),
        )
        self._divisor = [math.prod(col) for col in zip(*(_per_axis(s, dims) for s in strides), strict=True)]
        normalizer_cfg = arch.get("normalizer")
        self.normalizer = (
            ModalityNormalizer(int(arch["in_channels"]), dims, **normalizer_cfg) if normalizer_cfg else None
        )
        proto_cfg = arch.get("prototypes")
        self.prototypes = (
            PrototypeHead(self.decoder_channels, int(arch["out_channels"]), spatial_dims=dims, **proto_cfg)
            if proto_cfg
            else None
        )

    # ------------------------------------------------------------------ description
    @property
    def modalities(self) -> list[str]:
        """Input channel names in network order."""
        return list(self.card.modalities)

    @property
    def labels(self) -> list[int]:
        """Network class index -> label id."""
        return list(self.card.labels)

    @property
    def num_classes(self) -> int:
        """Number of network output classes."""
        return len(self.card.labels)

    @property
    def decoder_channels(self) -> int:
        """Channels of the ``decoder`` feature map (input of the head)."""
        return int(self.network.filters[0])

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """Per-axis total stride; inputs are padded to a multiple of it."""
        return tuple(self._divisor)

    # ------------------------------------------------------------------ head
    @property
    def head(self) -> nn.Module:
        """The final 1x1 convolution: decoder features -> logits (:meth:`replace_head` swaps it)."""
        return self.network.output_block

    def replace_head(self, module: nn.Module) -> None:
        """Use ``module`` (decoder features -> logits) as the head; a method, because ``nn.Module`` registers an
        assigned module as a new child instead of calling a property's setter."""
        self.network.output_block = module

    # ------------------------------------------------------------------ BatchNorm
    def bn_groups(self) -> dict[str, list[_BatchNorm]]:
        """BatchNorm layers by block: ``input``, ``down1..N``, ``bottleneck``, ``up1..N``.

        ``up1`` is the first decoder block after the bottleneck (coarsest); the last ``up`` block feeds the
        head.
        """

        def bns(module: nn.Module) -> list[_BatchNorm]:
            return [m for m in module.modules() if isinstance(m, _BatchNorm)]

        groups: dict[str, list[_BatchNorm]] = {"input": bns(self.network.input_block)}
        for index, block in enumerate(self.network.downsamples, start=1):
            groups[f"down{index}"] = bns(block)
        groups["bottleneck"] = bns(self.network.bottleneck)
        for index, block in enumerate(self.network.upsamples, start=1):
            groups[f"up{index}"] = bns(block)
        return groups

    def tap_modules(self) -> dict[str, nn.Module]:
        """Named submodules whose outputs :meth:`forward_features` can return (besides ``decoder``)."""
        taps: dict[str, nn.Module] = {"input": self.network.input_block}
        for index, block in enumerate(self.network.downsamples, start=1):
            taps[f"down{index}"] = block
        taps["bottleneck"] = self.network.bottleneck
        for index, block in enumerate(self.network.upsamples, start=1):
            taps[f"up{index}"] = block
        return taps

    # ------------------------------------------------------------------ forward
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.spatial_dims:
            raise ModelError(
                f"model {self.card.name!r} is {self.spatial_dims}D and expects (B, C, "
                f"{'Z, ' if self.spatial_dims == 3 else ''}Y, X) input; got shape {tuple(x.shape)}."
            )
        if x.shape[1] != len(self.card.modalities):
            raise ModelError(
                f"model {self.card.name!r} takes {len(self.card.modalities)} channels "
                f"({', '.join(self.card.modalities)}); got {x.shape[1]}."
            )
        pads: list[int] = []
        for size, div in zip(reversed(spatial), reversed(self._divisor), strict=True):
            pads += [0, (-size) % div]
        if any(pads):
            x = F.pad(x, pads)
        return x, spatial

    @staticmethod
    def _crop(t: torch.Tensor, padded: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
        if tuple(t.shape[2:]) != padded or padded == spatial:
            return t
        return t[(slice(None), slice(None), *(slice(0, s) for s in spatial))]

    def logits_from_decoder(self, decoder: torch.Tensor) -> torch.Tensor:
        """Logits from (possibly modified) decoder features: head, combined with prototypes when present.

        With a prototype head the two branches' class probabilities are averaged (METHODS section 3) and the
        log of that average is returned, so softmax/cross-entropy on the result behave as on logits.
        """
        logits = self.head(decoder)
        if self.prototypes is None:
            return logits
        proto = self.prototypes(decoder).logits
        probs = 0.5 * (torch.softmax(logits, dim=1) + torch.softmax(proto, dim=1))
        return torch.log(probs.clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, *spatial) for normalised intensities ``x`` (B, C, *spatial)."""
        padded_x, spatial = self._pad(x)
        if self.normalizer is not None:
            padded_x = self.normalizer(padded_x)
        decoder = self.network.skip_layers(padded_x)
        logits = self.logits_from_decoder(decoder)
        return self._crop(logits, tuple(padded_x.shape[2:]), spatial)

    def forward_with(
        self, x: torch.Tensor, tap: str, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with the feature map ``tap`` replaced by ``transform(features)``.

        This is how methods act on features without changing weights (TTS channel muting, an adapter on the
        decoder map): ``decoder`` transforms the last decoder map on the network's padded grid and the head
        (with the prototype branch) runs on the result; any other tap (:meth:`tap_modules`) is transformed by a
        forward hook and the rest of the network runs on it.
        """
        if tap == "decoder":
            padded_x, spatial = self._pad(x)
            if self.normalizer is not None:
                padded_x = self.normalizer(padded_x)
            decoder = transform(self.network.skip_layers(padded_x))
            return self._crop(self.logits_from_decoder(decoder), tuple(padded_x.shape[2:]), spatial)
        modules = self.tap_modules()
        if tap not in modules:
            raise ModelError(f"model {self.card.name!r} has no feature tap {tap!r}; it has decoder, {', '.join(modules)}.")
        handle = modules[tap].register_forward_hook(lambda _module, _inputs, output: transform(output))
        try:
            return self(x)
        finally:
            handle.remove()

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] | None = None) -> ForwardResult:
        """Logits and named feature maps.

        Always available: ``decoder`` (last decoder map, input of the head, cropped to the input size),
        ``bottleneck``, ``input``, ``down1..N``, ``up1..N`` (block outputs; those at full resolution are cropped,
        coarser ones keep the padded grid), ``normalized`` (normaliser output, when present),
        ``head_logits``, and with a prototype head ``prototype_logits``, ``prototype_similarity``
        (B, classes*K, *spatial) and ``prototype_embedding``.

        Parameters
        ----------
        x
            Normalised intensities (B, C, *spatial).
        taps
            Names to return (default: all).
        """
        wanted = None if taps is None else set(taps)
        modules = self.tap_modules()
        if wanted is not None:
            unknown = wanted - set(modules) - {
                "decoder",
                "normalized",
                "head_logits",
                "prototype_logits",
                "prototype_similarity",
                "prototype_embedding",
            }
            if unknown:
                raise ModelError(f"unknown feature tap(s) {sorted(unknown)}; available: {sorted(modules)}.")
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in modules.items():
            if wanted is None or name in wanted:
                handles.append(module.register_forward_hook(self._capture(captured, name)))
        try:
            padded_x, spatial = self._pad(x)
            if self.normalizer is not None:
                padded_x = self.normalizer(padded_x)
                captured["normalized"] = padded_x
            decoder = self.network.skip_layers(padded_x)
        finally:
            for handle in handles:
                handle.remove()
        padded = tuple(padded_x.shape[2:])
        features = {name: self._crop(t, padded, spatial) for name, t in captured.items()}
        features["decoder"] = self._crop(decoder, padded, spatial)
        head_logits = self._crop(self.head(decoder), padded, spatial)
        features["head_logits"] = head_logits
        if self.prototypes is None:
            logits = head_logits
        else:
            proto = self.prototypes(features["decoder"])
            features["prototype_logits"] = proto.logits
            features["prototype_similarity"] = proto.similarity
            features["prototype_embedding"] = proto.embedding
            probs = 0.5 * (torch.softmax(head_logits, dim=1) + torch.softmax(proto.logits, dim=1))
            logits = torch.log(probs.clamp_min(1e-8))
        if wanted is not None:
            features = {k: v for k, v in features.items() if k in wanted}
        return ForwardResult(logits=logits, features=features)

    @staticmethod
    def _capture(store: dict[str, torch.Tensor], name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            store[name] = output

        return hook

    # ------------------------------------------------------------------ copies
    def copy(self) -> SegModel:
        """Deep copy (weights, buffers, card); adapt the copy, never the source."""
        return _copy.deepcopy(self)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device


def build_model(config: Mapping[str, Any] | ModelCard, modalities: Iterable[str] | None = None) -> SegModel:
    """Build an untrained :class:`SegModel` from an architecture config or a full card.

    Parameters
    ----------
    config
        An architecture dict (see this module's docstring / :func:`default_architecture`) or a
        :class:`ModelCard`.
    modalities
        Channel names when ``config`` is a bare architecture (default ``ch0..``).
    """
    card = config if isinstance(config, ModelCard) else default_card(config, modalities)
    return SegModel(card)
