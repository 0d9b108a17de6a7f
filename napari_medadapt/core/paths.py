"""Where napari-medadapt keeps downloaded checkpoints and cached embeddings.

The cache root is ``MEDADAPT_CACHE_DIR`` when that environment variable is set, else the per-user
cache folder of the operating system (``pooch.os_cache("napari-medadapt")``, e.g.
``~/.cache/napari-medadapt`` on Linux). Folders are created on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "MEDADAPT_CACHE_DIR"


def cache_dir() -> Path:
    """Return the cache root (``MEDADAPT_CACHE_DIR`` or the OS user cache), creating it if needed."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured:
        root = Path(configured).expanduser()
    else:
        import pooch

        root = Path(pooch.os_cache("napari-medadapt"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def checkpoint_dir() -> Path:
    """Return ``cache_dir() / "checkpoints"`` (model checkpoints such as SAM weights), created if needed."""
    path = cache_dir() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedding_cache_dir() -> Path:
    """Return ``cache_dir() / "embeddings"`` (cached image embeddings), created if needed."""
    path = cache_dir() / "embeddings"
    path.mkdir(parents=True, exist_ok=True)
    return path
