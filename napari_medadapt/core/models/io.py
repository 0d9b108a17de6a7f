"""Saving and loading models: safetensors weights + JSON card, sha256-checked.

Nothing is ever unpickled: weights are read with safetensors, or with ``torch.load(weights_only=True)`` for
``.pt``/``.pth`` state dicts.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..hashing import sha256_file
from .card import ModelCard
from .network import SegModel
from .registry import find_card

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def save_model(model: SegModel, path: str | Path, card: ModelCard | None = None) -> Path:
    """Write ``<stem>.safetensors`` and its card ``<stem>.json``; returns the card path.

    The card (``model.card`` unless given) gets ``weights_file`` and ``weights_sha256`` filled in. Both files
    are written to temporary names first and moved into place, so an interrupted save leaves no half file.
    """
    from safetensors.torch import save_model as save_safetensors

    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    card = model.card if card is None else card
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    state_model = model.copy().to("cpu")
    save_safetensors(state_model, str(tmp), metadata={"format": "pt", "medadapt_model": card.name})
    tmp.replace(weights)
    card.weights_file = weights.name
    card.weights_sha256 = sha256_file(weights)
    model.card = card
    return card.save(weights.with_suffix(".json"))


def resolve_model(name_or_path: str | Path) -> tuple[Path, Path]:
    """``(card path, weights path)`` of a registered model name, a card path or a weight file path.

    Raises
    ------
    ModelError
        Unknown name, missing card or weights, or a path that is not a model file.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json":
        card_path = path
    elif path.suffix.lower() in WEIGHT_SUFFIXES:
        card_path = path.with_suffix(".json")
        if not path.is_file():
            raise ModelError(f"weight file {path} does not exist.")
        if not card_path.is_file():
            raise ModelError(
                f"weight file {path} has no model card beside it (expected {card_path.name}). Copy the .json "
                f"card that came with the weights into the same folder."
            )
        return card_path, path
    elif path.is_file() or "/" in text or "\\" in text:
        raise ModelError(
            f"{text} is not a model: give a bundled model name, a .json model card or a "
            f".safetensors/.pt/.pth weight file with its card beside it."
        )
    else:
        card_path = find_card(text)
    card = ModelCard.load(card_path)
    weights = card_path.with_name(card.weights_file or f"{card_path.stem}.safetensors")
    if not weights.is_file():
        raise ModelError(
            f"model card {card_path} points to weights {weights.name}, which is not in {card_path.parent}. "
            f"Put the weight file beside the card."
        )
    return card_path, weights


def _read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelError(
                f"weight file {weights} is corrupt or not a safetensors file ({err}); copy it again from its "
                f"source."
            ) from err
    state = read_torch_weights(weights)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weight file {weights} does not hold a state dict of tensors.")
    return state


def read_torch_weights(path: str | Path, what: str = "weight file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only, never code.

    Raises
    ------
    ModelError
        A file holding pickled objects is refused as untrusted (the message never suggests loading it
        anyway); a corrupt or truncated file is reported as such.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ModelError(f"{what} {path} is corrupt or not a PyTorch file ({err}); copy it again.") from err
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # only the name: torch's text advises loading it anyway
        raise ModelError(
            f"{what} {path} is not a plain weight file: it holds pickled Python objects"
            f"{' (such as ' + found.group(1) + ')' if found else ''}, which can run code when loaded, so napari-medadapt "
            "refuses it. Do not trust this file: ask its source for a .safetensors file or a plain state dict "
            "(saved with torch.save(model.state_dict(), path))."
        ) from None
    except Exception as err:  # a damaged archive, a truncated download, another format
        raise ModelError(
            f"{what} {path} cannot be read ({type(err).__name__}: {err}); it is corrupt, truncated or not a "
            "PyTorch file. Copy or download it again."
        ) from err


def load_weights(model: SegModel, weights: str | Path) -> SegModel:
    """Load a weight file into ``model`` (strict; shared DynUNet tensors handled)."""
    weights = Path(weights)
    state = _read_state_dict(weights)
    expected = model.state_dict()
    # DynUNet registers its encoder/decoder blocks twice (also under skip_layers); safetensors stores a shared
    # tensor once, so fill aliases from whichever name is present.
    by_ptr: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(key)
    for aliases in by_ptr.values():
        present = [k for k in aliases if k in state]
        if present:
            for key in aliases:
                state.setdefault(key, state[present[0]])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise ModelError(
            f"weight file {weights} does not fit the architecture in model card {model.card.name!r} ({detail}). "
            f"Use the card that came with these weights."
        )
    model.load_state_dict(state, strict=True)
    return model


def load_model(name_or_path: str | Path, device: str | torch.device | None = None) -> SegModel:
    """Load a model in eval mode.

    Parameters
    ----------
    name_or_path
        A registered name (``"glioma2d"``), a ``.json`` card, or a ``.safetensors`` / ``.pt`` / ``.pth`` weight
        file with its card beside it (same stem).
    device
        Where to put it (default CPU). Use :func:`napari_medadapt.core.device.select_device` to choose.

    Raises
    ------
    ModelError
        Unknown name, missing/corrupt file, sha256 mismatch, or weights that do not fit the card.
    """
    card_path, weights = resolve_model(name_or_path)
    card = ModelCard.load(card_path)
    if card.weights_sha256:
        actual = sha256_file(weights)
        if actual.lower() != card.weights_sha256.lower():
            raise ModelError(
                f"weight file {weights} does not match its model card {card_path.name} (sha256 {actual[:12]}... "
                f"instead of {card.weights_sha256[:12]}...). The file is corrupt or belongs to another model: "
                f"copy the weights and card again from the same source."
            )
    model = load_weights(SegModel(card), weights)
    model.eval()
    if device is not None:
        model.to(torch.device(device))
    return model
