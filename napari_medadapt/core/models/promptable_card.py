"""The card of a promptable (Segment Anything-family) model, read through the one card schema.

A promptable card (``"kind": "promptable"``) names the encoder (``architecture.encoder``: ``small`` for the
bundled CNN encoder, or ``vit_b``/``vit_l``/``vit_h``), the image preprocessing (``sam`` or ``medsam``) and
where the weights are: ``weights_file`` beside the card (bundled, sha256 in ``weights_sha256``) or
``download`` (a checkpoint fetched into the cache folder on first use, with its pinned sha256, put there
by hand when no URL exists, or a file of an installed package: ``package`` and ``package_path``). Documentation fields the schema does not know are kept as they are.
The read-only properties (``filename``, ``url``, ``sha256``, ``size_mb``, ``source``, ``package``...) give where
the weights are whichever way the card names them: the Segment Anything registry
(:mod:`napari_medadapt.core.sam.registry`) fetches, checks and lists models through them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..files import write_text_atomic
from .card_schema import plain, validate_card


@dataclass
class PromptableCard:
    """A Segment Anything-family model: what it is, how to preprocess for it, where its weights are.

    ``title`` (what menus and messages show) is the ``name`` when the card gives none. ``first_prompt``
    (``"box"`` or ``"click"``) is the prompt the dock starts from; ``clicks_without_box`` is ``False`` for a
    model that clicks alone give no mask (LiteMedSAM as published); ``decoder_file`` is a fine-tuned prompt
    encoder + mask decoder beside the card, answering every prompt (``decoder_prompts: "all"``) or those with a
    click or a previous mask (``"clicks"``: a box alone keeps the checkpoint's decoder).
    """

    name: str
    architecture: dict[str, Any]
    title: str = ""
    preprocess: str = "sam"
    first_prompt: str = "click"
    dense_prompts: bool = False
    weights_file: str | None = None
    weights_sha256: str | None = None
    download: dict[str, Any] | None = None
    decoder_file: str | None = None
    decoder_sha256: str | None = None
    decoder_prompts: str = "all"
    clicks_without_box: bool = True
    description: str = ""
    license: str = ""
    note: str = ""
    tags: list[str] = field(default_factory=list)
    kind: str = "promptable"
    format_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    path: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.title = self.title or self.name
        validate_card(plain(self.to_dict()), f"model card {self.path or repr(self.name)}")

    @property
    def encoder(self) -> str:
        """``"small"``, ``"tiny_vit"``, ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``."""
        return str(self.architecture["encoder"])

    @property
    def bundled(self) -> bool:
        """Whether the weights lie beside the card (else they are a downloaded checkpoint)."""
        return self.weights_file is not None

    @property
    def card_path(self) -> str:
        """The card's file (``""`` for a card not read from a file)."""
        return str(self.path or "")

    @property
    def filename(self) -> str:
        """File name of the weights: beside the card when bundled, else under ``checkpoint_dir()``."""
        return str(self.weights_file if self.bundled else self._download["filename"])

    @property
    def url(self) -> str | None:
        """Direct download URL, or ``None`` (bundled, fetched by hand or installed with a package)."""
        return None if self.bundled else self._download.get("url")

    @property
    def sha256(self) -> str | None:
        """Expected sha256 of the weights, or ``None`` when no trustworthy published hash exists."""
        return self.weights_sha256 if self.bundled else self._download.get("sha256")

    @property
    def size_mb(self) -> float:
        """Size of the weights in MB: of the file on disk when bundled (0 if missing), else as the card says."""
        if self.bundled:
            path = self.weights_path()
            return round(path.stat().st_size / 1e6, 1) if path.is_file() else 0.0
        return float(self._download.get("size_mb", 0.0))

    @property
    def source(self) -> str:
        """Where the weights officially come from (a page or URL)."""
        return "bundled with napari-medadapt" if self.bundled else str(self._download.get("source", ""))

    @property
    def package(self) -> str | None:
        """The pip distribution whose installed files hold the weights (at ``package_path``), or ``None``."""
        return self._download.get("package")

    @property
    def package_path(self) -> str | None:
        """The weight file's path relative to the distribution's root (``site-packages``)."""
        return self._download.get("package_path")

    @property
    def package_version(self) -> str | None:
        """The distribution's version whose file has ``sha256`` (for the repair command)."""
        return self._download.get("package_version")

    @property
    def package_spec(self) -> str:
        """What to give pip for the package holding the weights (pinned when the card names the version)."""
        return f"{self.package}=={self.package_version}" if self.package_version else str(self.package)

    @property
    def _download(self) -> dict[str, Any]:
        return self.download or {}

    def weights_path(self) -> Path:
        """The weight file: beside the card when bundled, else in the checkpoint cache folder."""
        if self.weights_file is not None:
            if self.path is None:
                raise ModelError(f"model card {self.name!r} was not read from a file: its weights cannot be found.")
            return Path(self.path).with_name(self.weights_file)
        from ..paths import checkpoint_dir

        return checkpoint_dir() / str(self.download["filename"])

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON (documentation fields included, ``path`` excluded)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "path")}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card", path: str | None = None) -> PromptableCard:
        """Build a card from parsed JSON (checked by the schema; unknown fields kept as documentation)."""
        validate_card(data, source)
        known = {f.name for f in fields(cls)} - {"extra", "path"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
            path=path,
        )

    def save(self, path: str | Path) -> Path:
        """Write the card as indented JSON, atomically."""
        path = write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n", what="Model card")
        self.path = str(path)
        return path
