"""Segment Anything checkpoints: the registry, verified downloads and loading.

Official SAM checkpoints are fetched with ``pooch.retrieve`` into ``core.paths.checkpoint_dir()``
(``MEDADAPT_CACHE_DIR`` overrides the cache root) and checked against pinned sha256 hashes.
The SAM hashes below are the digests of Meta's published files as recorded independently by several
public projects that verify them; the short hash in each file name is NOT a sha256 prefix.
MedSAM publishes its ViT-B checkpoint only through a Google Drive folder linked from its README, and
no official sha256: it must be downloaded by hand, and loading it unverified needs an explicit
``known_hash=None`` (with a warning). Any local checkpoint path works too. Checkpoints are
plain state dicts read with ``torch.load(..., weights_only=True)`` (no unpickling of code).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..jobs import JobCancelled, JobContext
from .small_model import SMALL_MODEL_NAME, SMALL_WEIGHTS, sha256_file

_UNSET: Any = object()


@dataclass(frozen=True)
class CheckpointEntry:
    """One promptable model the plugin knows how to get and build.

    Attributes
    ----------
    name
        Registry name (``"sam-small"``, ``"sam-vit-b"``, ``"sam-vit-l"``, ``"sam-vit-h"``, ``"medsam-vit-b"``).
    title
        Human-readable name for menus.
    architecture
        ``"small"`` (bundled CNN encoder) or ``"vit_b"`` / ``"vit_l"`` / ``"vit_h"``.
    filename
        File name under ``checkpoint_dir()`` (or in the package for the bundled model).
    url
        Direct download URL, or ``None`` when the file must be fetched by hand (see ``source``).
    sha256
        Pinned sha256 of the file, or ``None`` when no trustworthy published hash exists.
    size_mb
        Approximate file size.
    preprocess
        ``"sam"`` or ``"medsam"`` (see :class:`~napari_medadapt.core.sam.model.PromptableModel`).
    source
        Where the file officially comes from (page or URL).
    licence
        Licence of the weights.
    note
        Anything a user must know.
    """

    name: str
    title: str
    architecture: str
    filename: str
    url: str | None
    sha256: str | None
    size_mb: float
    preprocess: str
    source: str
    licence: str
    note: str = ""


SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

REGISTRY: dict[str, CheckpointEntry] = {
    entry.name: entry
    for entry in (
        CheckpointEntry(
            SMALL_MODEL_NAME,
            "Bundled small SAM (CPU, trained on MRI/CT slices)",
            "small",
            SMALL_WEIGHTS.name,
            None,
            None,
            round(SMALL_WEIGHTS.stat().st_size / 1e6, 1) if SMALL_WEIGHTS.exists() else 0.0,
            "sam",
            "bundled with napari-medadapt (medadapt train sam-small)",
            "same as napari-medadapt",
            "sha256 is checked against its model card napari_medadapt/weights/sam_small.json",
        ),
        CheckpointEntry(
            "sam-vit-b",
            "SAM ViT-B (Meta)",
            "vit_b",
            "sam_vit_b_01ec64.pth",
            SAM_URL + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375.0,
            "sam",
            "https://github.com/facebookresearch/segment-anything#model-checkpoints",
            "Apache-2.0",
        ),
        CheckpointEntry(
            "sam-vit-l",
            "SAM ViT-L (Meta)",
            "vit_l",
            "sam_vit_l_0b3195.pth",
            SAM_URL + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1249.5,
            "sam",
            "https://github.com/facebookresearch/segment-anything#model-checkpoints",
            "Apache-2.0",
        ),
        CheckpointEntry(
            "sam-vit-h",
            "SAM ViT-H (Meta)",
            "vit_h",
            "sam_vit_h_4b8939.pth",
            SAM_URL + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2564.6,
            "sam",
            "https://github.com/facebookresearch/segment-anything#model-checkpoints",
            "Apache-2.0",
        ),
        CheckpointEntry(
            "medsam-vit-b",
            "MedSAM ViT-B (box prompts, medical images)",
            "vit_b",
            "medsam_vit_b.pth",
            None,
            None,
            375.0,
            "medsam",
            "https://github.com/bowang-lab/MedSAM (README: model checkpoint, Google Drive folder)",
            "Apache-2.0",
            "No direct URL and no published sha256: download medsam_vit_b.pth by hand from the "
            "MedSAM README's Google Drive link; it is loaded only with an explicit known_hash=None.",
        ),
    )
}


def get_entry(name: str) -> CheckpointEntry:
    """Registry entry by name; raises :class:`ModelError` listing the known names."""
    if name not in REGISTRY:
        raise ModelError(f"Unknown Segment Anything model {name!r}; choose one of {sorted(REGISTRY)}.")
    return REGISTRY[name]


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of registry entry ``name`` lives (whether or not it is there yet)."""
    entry = get_entry(name)
    if entry.architecture == "small":
        return SMALL_WEIGHTS
    from ..paths import checkpoint_dir

    return checkpoint_dir() / entry.filename


def list_checkpoints() -> list[dict[str, Any]]:
    """All registry entries as dicts, each with ``cached`` (file present) and ``path``."""
    rows = []
    for entry in REGISTRY.values():
        path = checkpoint_path(entry.name)
        rows.append({**asdict(entry), "cached": path.is_file(), "path": str(path)})
    return rows


def _where_message(entry: CheckpointEntry, path: Path, problem: str) -> str:
    source = entry.url or entry.source
    expected = entry.sha256 or "(none published; pass known_hash=None to accept the file unverified)"
    return (
        f"{problem}\nPut the file {entry.filename} at {path} (the cache folder; set MEDADAPT_CACHE_DIR "
        f"to move it), or pass its local path instead of {entry.name!r}.\nDownload: {source}\n"
        f"Expected sha256: {expected}"
    )


DOWNLOAD_CHUNK_BYTES = 1 << 20


class _DownloadProgress:
    """pooch's progress-bar protocol (``total``, ``update``, ``reset``, ``close``) reported to a JobContext.

    Steps are MiB; ``update`` raises :class:`JobCancelled` once the job is cancelled, which aborts the
    download (pooch writes to a temporary file, so nothing partial is left in the cache).
    """

    def __init__(self, ctx: JobContext, label: str) -> None:
        self.total = 0
        self._ctx = ctx
        self._label = label
        self._done = 0

    def update(self, n_bytes: int) -> None:
        self._done += n_bytes
        total_mib = max(1, -(-int(self.total or 0) // DOWNLOAD_CHUNK_BYTES))
        done_mib = -(-self._done // DOWNLOAD_CHUNK_BYTES)  # ceil: pooch ends with reset() + update(total)
        self._ctx.progress(min(done_mib, total_mib), total_mib, self._label)

    def reset(self) -> None:
        self._done = 0

    def close(self) -> None:
        """Nothing to release (pooch's protocol)."""


def fetch_checkpoint(
    name: str,
    known_hash: str | None = _UNSET,
    url: str | None = None,
    progressbar: bool = False,
    ctx: JobContext | None = None,
) -> Path:
    """Return the local path of a registry checkpoint, downloading and verifying it when needed.

    Parameters
    ----------
    name
        Registry name.
    known_hash
        Override the pinned sha256. ``None`` accepts the file unverified (a warning is emitted);
        leave it unset to use the registry's pinned hash.
    url
        Override the download URL (a mirror).
    progressbar
        Show pooch's download progress bar (needs tqdm); ignored when ``ctx`` is given.
    ctx
        Receives download progress in MiB and can cancel the download (:class:`JobCancelled`).

    Raises
    ------
    ModelError
        Missing file that cannot be downloaded, download failure, or sha256 mismatch; the message
        names the path, the URL and the expected sha256.
    """
    import pooch

    entry = get_entry(name)
    path = checkpoint_path(name)
    if entry.architecture == "small":
        return path
    expected = entry.sha256 if known_hash is _UNSET else known_hash
    if expected is None:
        warnings.warn(
            f"Using {entry.name} without checking its sha256 (no trustworthy published hash, or "
            "known_hash=None was given). Only use a file you downloaded from the official source.",
            UserWarning,
            stacklevel=2,
        )
    source_url = url or entry.url
    if source_url is None:
        if not path.is_file():
            raise ModelError(_where_message(entry, path, f"{entry.title} is not downloaded yet."))
        if expected is not None:
            _verify(entry, path, expected)
        return path
    if path.is_file() and expected is not None and sha256_file(path) != expected:
        raise ModelError(
            _where_message(
                entry, path, f"The cached file {path} does not match the expected sha256 (corrupt or "
                "a different file). Delete it to download again."
            )
        )
    downloader = None
    if ctx is not None:
        label = f"downloading {entry.filename} (MiB)"
        downloader = pooch.HTTPDownloader(
            progressbar=_DownloadProgress(ctx, label), chunk_size=DOWNLOAD_CHUNK_BYTES
        )
    try:
        fetched = pooch.retrieve(
            source_url,
            known_hash=None if expected is None else f"sha256:{expected}",
            fname=entry.filename,
            path=str(path.parent),
            progressbar=progressbar,
            downloader=downloader,
        )
    except JobCancelled:
        raise
    except ValueError as exc:
        raise ModelError(
            _where_message(entry, path, f"The download of {entry.filename} did not match its sha256 ({exc}).")
        ) from exc
    except Exception as exc:  # network errors come from requests/urllib with many types
        raise ModelError(
            _where_message(entry, path, f"Could not download {entry.filename} from {source_url}: {exc}")
        ) from exc
    return Path(fetched)


def _verify(entry: CheckpointEntry, path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            _where_message(entry, path, f"{path} has sha256 {actual}, which is not the expected file.")
        )


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a plain state dict checkpoint with ``torch.load(weights_only=True)`` onto the CPU."""
    from ..models.io import read_torch_weights

    state = read_torch_weights(path, "checkpoint")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not contain a state dict of tensors.")
    return state


def load_sam(
    name_or_path: str | Path = SMALL_MODEL_NAME,
    device: Any = None,
    architecture: str | None = None,
    known_hash: str | None = _UNSET,
    preprocess: str | None = None,
) -> Any:
    """Load a promptable model by registry name or local checkpoint path.

    Parameters
    ----------
    name_or_path
        A registry name (downloaded on first use when it has a URL) or a path to a ``.pth``
        state dict (SAM layout).
    device
        torch device; default ``core.device.select_device()`` when available, else CPU.
    architecture
        For a path: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``; guessed from the file name when omitted.
    known_hash
        See :func:`fetch_checkpoint`; for a local path, an optional sha256 to check.
    preprocess
        For a path: ``"sam"`` (default) or ``"medsam"``.

    Returns
    -------
    PromptableModel
    """
    from . import _compat
    from .model import PromptableModel
    from .small_model import load_small_sam

    device = _default_device(device)
    key = str(name_or_path)
    if key in REGISTRY:
        entry = REGISTRY[key]
        if entry.architecture == "small":
            sam, card, sha = load_small_sam()
            return PromptableModel(sam, entry.name, sha, "sam", device, bool(card.get("dense_prompts", False)))
        path = fetch_checkpoint(key, known_hash=known_hash)
        arch, prep, label = entry.architecture, entry.preprocess, entry.name
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{path} is not a file and not a known model name. Give a checkpoint path or one of "
                f"{sorted(REGISTRY)}."
            )
        arch = architecture or _guess_architecture(path.name)
        prep = preprocess or ("medsam" if "medsam" in path.name.lower() else "sam")
        label = str(path)
        if known_hash not in (_UNSET, None):
            _verify(CheckpointEntry(label, label, arch, path.name, None, known_hash, 0, prep, str(path), ""),
                    path, known_hash)
    sha = sha256_file(path)
    state = load_state_dict(path)
    sam = _compat.build_sam_vit(arch)
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{path} does not fit a SAM {arch} model ({str(exc)[:300]}). Check that it is a SAM/MedSAM "
            f"{arch} checkpoint, or pass architecture=... ."
        ) from exc
    return PromptableModel(sam, label, sha, prep, device)


def _guess_architecture(filename: str) -> str:
    lowered = filename.lower()
    for arch in ("vit_b", "vit_l", "vit_h"):
        if arch in lowered or arch.replace("_", "-") in lowered:
            return arch
    raise ModelError(
        f"Cannot tell the SAM encoder size from {filename!r}; pass architecture='vit_b', 'vit_l' or 'vit_h'."
    )


def _default_device(device: Any) -> Any:
    if device is not None:
        return device
    try:
        from ..device import select_device
    except ImportError:
        return "cpu"
    return select_device()
