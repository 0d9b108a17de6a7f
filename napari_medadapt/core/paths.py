"""Where napari-medadapt keeps downloads and caches, finds benchmark data and writes reports.

The cache root is ``MEDADAPT_CACHE_DIR`` when that environment variable is set, else the per-user
cache folder of the operating system (``pooch.os_cache("napari-medadapt")``, e.g.
``~/.cache/napari-medadapt`` on Linux). Folders are created on demand.

Nothing is ever written inside the installed package: benchmark reports go to ``docs/benchmarks`` of a
source checkout, else to ``./medadapt-reports`` in the current folder; the real volumes benchmarks and
training read come from ``--data``, ``MEDADAPT_DATA_DIR`` or, in a source checkout, ``../shared/data/real``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "MEDADAPT_CACHE_DIR"
DATA_ENV_VAR = "MEDADAPT_DATA_DIR"


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


#: Sub-folder of the cache holding image embeddings.
EMBEDDINGS_FOLDER = "embeddings"


def embedding_cache_dir() -> Path:
    """Return ``cache_dir() / "embeddings"`` (cached image embeddings), created if needed."""
    path = cache_dir() / EMBEDDINGS_FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_checkout() -> Path | None:
    """The repository root when napari-medadapt runs from a source checkout (editable install), else ``None``."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "setup.cfg").is_file() and (root / "napari_medadapt").is_dir():
        return root
    return None


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder of the real volumes: ``explicit``, else ``MEDADAPT_DATA_DIR``, else a checkout's
    ``../shared/data/real``.

    Raises
    ------
    MedAdaptError
        When none is given or found, or the folder does not exist.
    """
    from .errors import MedAdaptError

    configured = explicit or os.environ.get(DATA_ENV_VAR, "").strip() or None
    checkout = source_checkout()
    if configured is None and checkout is not None:
        configured = checkout.parent / "shared" / "data" / "real"
    if configured is None:
        raise MedAdaptError(
            f"No data folder: pass --data FOLDER (the folder of the real cases) or set {DATA_ENV_VAR}."
        )
    folder = Path(configured).expanduser()
    if not folder.is_dir():
        raise MedAdaptError(f"The data folder {folder} does not exist; pass --data FOLDER or set {DATA_ENV_VAR}.")
    return folder


def reports_dir() -> Path:
    """Where benchmark reports go by default: ``docs/benchmarks`` of a source checkout, else
    ``./medadapt-reports``; never the installed package."""
    checkout = source_checkout()
    return checkout / "docs" / "benchmarks" if checkout is not None else Path.cwd() / "medadapt-reports"
