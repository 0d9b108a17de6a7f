"""Where models live: bundled ones in ``napari_medadapt/weights/`` plus user folders.

A model is ``<name>.safetensors`` + ``<name>.json`` (its card) in one folder. Extra folders are searched
after the bundled one when the environment variable ``MEDADAPT_MODEL_PATH`` lists them (separated by
``os.pathsep``). This module does not import torch.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ..errors import ModelError
from .card import ModelCard

#: Name of the default bundled model (brain-tumour MRI, 2D).
DEFAULT_MODEL = "glioma2d"

MODEL_PATH_ENV = "MEDADAPT_MODEL_PATH"


def bundled_dir() -> Path:
    """Folder of the bundled weights and cards."""
    return Path(__file__).resolve().parents[2] / "weights"


def model_dirs() -> list[Path]:
    """Folders searched for models: the bundled folder, then ``MEDADAPT_MODEL_PATH`` entries."""
    dirs = [bundled_dir()]
    for entry in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry.strip()).expanduser())
    return dirs


def list_models() -> list[ModelCard]:
    """Cards of every model found in :func:`model_dirs` (first folder wins on equal names).

    JSON files that are not segmentation model cards (no ``modalities`` / ``labels``, e.g. the cards of
    Segment Anything checkpoints sharing the folder) are ignored; a malformed model card is skipped with a
    warning so one bad file does not hide the others.
    """
    cards: dict[str, ModelCard] = {}
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            if not _is_model_card(card_path):
                continue
            try:
                card = ModelCard.load(card_path)
            except ModelError as err:
                warnings.warn(f"skipping model card {card_path}: {err}", stacklevel=2)
                continue
            cards.setdefault(card.name, card)
    return list(cards.values())


def _is_model_card(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let ModelCard.load report the problem
    return isinstance(data, dict) and "modalities" in data and "labels" in data


def find_card(name: str) -> Path:
    """Path of the card of the model called ``name`` (:class:`ModelError` listing the known ones if absent)."""
    for folder in model_dirs():
        candidate = folder / f"{name}.json"
        if candidate.is_file() and _is_model_card(candidate):
            return candidate
    for card in list_models():
        if card.name == name and card.path:
            return Path(card.path)
    known = ", ".join(sorted(c.name for c in list_models())) or "none"
    raise ModelError(
        f"no model called {name!r} (known models: {known}). Give a path to a .json card or a .safetensors "
        f"file, or add its folder to {MODEL_PATH_ENV}."
    )
