"""The one registry of every model artefact: bundled cards in ``napari_medadapt/weights/`` plus user folders.

A model is a card ``<name>.json`` (kind ``segmentation`` or ``promptable``, one schema: :mod:`.card_schema`)
with its weights beside it (``<name>.safetensors``), or, for a promptable checkpoint that is not bundled, a
card saying where to download it. Extra folders are searched after the bundled one when the environment
variable ``MEDADAPT_MODEL_PATH`` lists them (separated by ``os.pathsep``). This module does not import torch.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .card import ModelCard
from .card_schema import card_kind
from .promptable_card import PromptableCard

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


#: Card kinds that are models (listed and loaded by name); other kinds (few-shot adapters) have their own readers.
MODEL_KINDS = ("segmentation", "promptable")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None  # reading it as a card reports the problem


def read_card(path: str | Path) -> ModelCard | PromptableCard:
    """Read a card of any kind (:class:`ModelError` on a missing, malformed or unknown-kind card)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and card_kind(data) == "promptable":
        return PromptableCard.from_dict(data, source=f"model card {path}", path=str(path))
    return ModelCard.load(path)


def list_cards(kind: str | None = None) -> list[ModelCard | PromptableCard]:
    """Cards of every model found in :func:`model_dirs` (first folder wins on equal kind and name).

    JSON files that are not cards of ``kind`` are ignored; a malformed card is skipped with a warning so one
    bad file does not hide the others.
    """
    cards: dict[tuple[str, str], ModelCard | PromptableCard] = {}
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            data = _read_json(card_path)
            if isinstance(data, dict) and (kind is not None and card_kind(data) != kind or card_kind(data) not in MODEL_KINDS):
                continue  # another kind, or an artefact that is not a model (a few-shot adapter)
            if isinstance(data, dict) and not {"kind", "architecture", "modalities", "labels"} & set(data):
                continue  # some other tool's JSON file sharing the folder
            try:
                card = read_card(card_path)
            except ModelError as err:
                warnings.warn(f"skipping model card {card_path}: {err}", stacklevel=2)
                continue
            cards.setdefault((card.kind, card.name), card)
    return list(cards.values())


def list_models(include_tags: Iterable[str] = ()) -> list[ModelCard]:
    """Segmentation models' cards, without the ones tagged ``"demonstration"`` unless ``include_tags`` names
    that tag (the TTS dock demonstrates the trap model; the Segment dock does not offer it)."""
    hidden = {"demonstration"} - set(include_tags)
    return [
        card
        for card in list_cards("segmentation")
        if isinstance(card, ModelCard) and not hidden & set(card.tags)
    ]


def find_card(name: str, kind: str = "segmentation") -> Path:
    """Path of the card of the ``kind`` model called ``name`` (:class:`ModelError` listing the known ones)."""
    for folder in model_dirs():
        candidate = folder / f"{name}.json"
        data = _read_json(candidate) if candidate.is_file() else None
        if isinstance(data, dict) and card_kind(data) == kind:  # the file's stem names it too
            return candidate
    for card in list_cards(kind):
        if card.name == name and card.path:
            return Path(card.path)
    known = ", ".join(sorted(c.name for c in list_cards(kind))) or "none"
    raise ModelError(
        f"no {kind} model called {name!r} (known models: {known}). Give a path to a .json card or a "
        f".safetensors file, or add its folder to {MODEL_PATH_ENV}."
    )
