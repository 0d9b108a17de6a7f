"""Segmentation models: the SegModel wrapper, model cards, registry, save/load.

Names are imported lazily: ``from napari_medadapt.core.models import list_models, ModelCard`` does not import
torch; ``SegModel``, ``build_model``, ``load_model`` and friends import it on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelCard": "card",
    "DEFAULT_INTENSITY": "card",
    "default_card": "card",
    "DEFAULT_MODEL": "registry",
    "MODEL_PATH_ENV": "registry",
    "bundled_dir": "registry",
    "model_dirs": "registry",
    "list_models": "registry",
    "list_cards": "registry",
    "read_card": "registry",
    "find_card": "registry",
    "PromptableCard": "promptable_card",
    "SegModel": "network",
    "ForwardResult": "network",
    "build_model": "network",
    "default_architecture": "network",
    "ModalityNormalizer": "normalizer",
    "PrototypeHead": "prototypes",
    "PrototypeOutput": "prototypes",
    "load_model": "io",
    "save_model": "io",
    "load_weights": "io",
    "sha256_file": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
