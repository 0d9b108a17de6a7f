"""``medadapt info``: versions, compute device, cache folders and available models.

Paste its output into bug reports. ``--json`` prints the same facts as one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

# display name -> distribution name
PACKAGES: dict[str, str] = {
    "napari_medadapt": "napari-medadapt",
    "torch": "torch",
    "monai": "monai",
    "napari": "napari",
    "numpy": "numpy",
    "nibabel": "nibabel",
    "segment_anything": "segment-anything",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "show versions, compute device, cache folders and available models"
    parser = subparsers.add_parser("info", help=help_text, description=help_text)
    parser.add_argument("--json", action="store_true", help="print the information as JSON")
    parser.set_defaults(func=run)


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and the key packages (``None`` when a package is missing)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, distribution in PACKAGES.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return dict(sorted(versions.items(), key=lambda item: item[0] != "napari_medadapt"))


def device_info() -> dict[str, Any]:
    """The compute device ``select_device()`` picks, or the problem preventing a choice."""
    from napari_medadapt.core.device import DEVICE_ENV_VAR, describe_device
    from napari_medadapt.core.errors import MedAdaptError

    info: dict[str, Any] = {"env": os.environ.get(DEVICE_ENV_VAR) or None}
    try:
        info["device"] = describe_device()
        info["error"] = None
    except MedAdaptError as err:
        info["device"] = None
        info["error"] = str(err)
    return info


def cache_info() -> dict[str, str]:
    """Cache folders (created if missing)."""
    from napari_medadapt.core.paths import cache_dir, checkpoint_dir, embedding_cache_dir

    return {
        "cache": str(cache_dir()),
        "checkpoints": str(checkpoint_dir()),
        "embeddings": str(embedding_cache_dir()),
    }


def _as_record(entry: Any) -> dict[str, Any]:
    """A registry entry (dataclass, mapping or plain value) as a JSON-friendly dict."""
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        return dataclasses.asdict(entry)
    if isinstance(entry, Mapping):
        return dict(entry)
    return {"name": str(entry)}


def _registry(module_name: str, function_name: str, label: str, **kwargs: Any) -> dict[str, Any]:
    """Call ``module_name.function_name(**kwargs)``; report a missing module or a user-facing error as text."""
    from napari_medadapt.core.errors import MedAdaptError

    try:
        lister: Callable[[], Any] = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        return {"entries": [], "error": f"{label} not available in this installation: {err}"}
    try:
        return {"entries": [_as_record(entry) for entry in lister(**kwargs)], "error": None}
    except MedAdaptError as err:
        return {"entries": [], "error": f"{label} could not be listed: {err}"}


def collect_info() -> dict[str, Any]:
    """Everything ``medadapt info`` reports, as a JSON-serialisable dict."""
    return {
        "versions": package_versions(),
        "device": device_info(),
        "cache": cache_info(),
        "models": _registry(
            "napari_medadapt.core.models", "list_models", "segmentation model registry", include_tags=("demonstration",)
        ),
        "sam_checkpoints": _registry("napari_medadapt.core.sam", "list_checkpoints", "SAM checkpoint registry"),
    }


def _model_line(record: Mapping[str, Any]) -> str:
    modalities = ", ".join(record.get("modalities") or [])
    labels = record.get("labels")
    where = record.get("path") or ""
    tags = f" ({', '.join(record['tags'])})" if record.get("tags") else ""
    return f"  {record.get('name', '?')}{tags}: inputs [{modalities}] -> labels {labels}  {where}".rstrip()


def _checkpoint_line(record: Mapping[str, Any]) -> str:
    details = [str(record[key]) for key in ("architecture",) if record.get(key)]
    if record.get("size_mb") is not None:
        details.append(f"{record['size_mb']:g} MB")
    title = f" {record['title']}" if record.get("title") else ""
    bracket = f" [{', '.join(details)}]" if details else ""
    if "cached" not in record:
        status = ""
    elif record["cached"]:
        status = f": available at {record.get('path', '?')}"
    else:
        status = ": not downloaded yet"
    return f"  {record.get('name', '?')}:{title}{bracket}{status}"


def format_info(info: Mapping[str, Any]) -> str:
    """Human-readable text of :func:`collect_info`'s result."""
    lines = ["Versions:"]
    width = max(len(name) for name in info["versions"])
    for name, version in info["versions"].items():
        lines.append(f"  {name:<{width}}  {version or 'not installed'}")
    device = info["device"]
    env_note = f"MEDADAPT_DEVICE={device['env']}" if device["env"] else "MEDADAPT_DEVICE unset: automatic"
    if device["error"]:
        lines.append(f"Compute device: none ({device['error']})")
    else:
        lines.append(f"Compute device: {device['device']}  [{env_note}]")
    lines.append("Cache directories (MEDADAPT_CACHE_DIR overrides the root):")
    for name, path in info["cache"].items():
        lines.append(f"  {name:<12} {path}")
    for key, title, line in (
        ("models", "Segmentation models", _model_line),
        ("sam_checkpoints", "SAM checkpoints", _checkpoint_line),
    ):
        section = info[key]
        lines.append(f"{title}:")
        if section["error"]:
            lines.append(f"  {section['error']}")
        elif not section["entries"]:
            lines.append("  (none found)")
        lines.extend(line(record) for record in section["entries"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the environment report (text, or JSON with ``--json``)."""
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info))
    return 0
