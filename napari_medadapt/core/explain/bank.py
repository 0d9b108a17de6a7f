"""Prototype banks: prototypes projected onto real training patches, with the gallery of those patches.

A bank is a pair of files, ``NAME.prototypes.json`` (a card of kind ``prototype_bank``, see
:mod:`~napari_medadapt.core.models.card_schema`) and ``NAME.prototypes.safetensors`` (``vectors`` (P, D) float32
in the bank's feature space; ``patches`` (P, C, S, S) float16, the normalised input around each prototype's
source position, every modality; ``patch_labels`` (P, S, S) uint8, the reference labels there;
``plane_vectors`` (N, D) float16, the pooled feature of every training plane, for retrieving similar slices). A model's bank
lives beside its card (the bundled glioma2d's in the package) or in the user cache. Nothing is unpickled; the
weights' sha256 is checked before reading, and a bank built for another model is refused.

Two spaces: ``head`` banks hold the projected prototypes of a model's own prototype head (its embedding
``F_L``); ``decoder`` banks are post-hoc, built by k-means over the last decoder map of any model.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..files import OutputError, atomic_write, check_output_path
from ..hashing import sha256_file
from ..paths import cache_dir

if TYPE_CHECKING:
    from ..models import SegModel

BANK_SUFFIX = ".prototypes"


@dataclass
class PrototypeBank:
    """A prototype bank in memory: its card (a dict as in the JSON file) and arrays.

    Attributes
    ----------
    card
        ``name``, ``base_model``, ``base_sha256``, ``space``, ``method``, ``labels``, ``class_names``,
        ``modalities``, ``patch_size``, ``prototypes`` (per prototype: ``id``, ``network_class``, ``label``,
        ``similarity`` of the projected vector to its source feature before projection, ``source``: ``case``,
        ``plane``, ``y``, ``x`` and how to rebuild the slice), ``projection`` (what projection cost).
    vectors
        (P, D) prototype vectors in the bank's space.
    patches
        (P, C, S, S) normalised input patches around each source position.
    patch_labels
        (P, S, S) reference label ids of the patches.
    plane_vectors
        (N, D) pooled unit feature of every training plane (``card["planes"]`` lists them with their label
        voxel counts): the global view, similar training slices.
    path
        The card file, once saved or loaded.
    """

    card: dict[str, Any]
    vectors: np.ndarray
    patches: np.ndarray
    patch_labels: np.ndarray
    plane_vectors: np.ndarray
    path: Path | None = field(default=None)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def space(self) -> str:
        """``head`` (a model's own prototype head) or ``decoder`` (post-hoc, last decoder map)."""
        return str(self.card["space"])

    @property
    def network_classes(self) -> np.ndarray:
        """(P,) network class of every prototype."""
        return np.asarray([p["network_class"] for p in self.card["prototypes"]], dtype=np.int64)

    def entry(self, index: int) -> dict[str, Any]:
        """The card's record of prototype ``index``."""
        return self.card["prototypes"][int(index)]

    def class_name(self, index: int) -> str:
        """Class name of prototype ``index``."""
        names = self.card.get("class_names") or [str(v) for v in self.card["labels"]]
        return str(names[self.entry(index)["network_class"]])

    def describe(self, index: int) -> str:
        """``#3 edema, glioma_tcga_du7294 plane 80 (y 101, x 122)``."""
        return f"#{index} {self.class_name(index)}, {source_text(self.entry(index)['source'])}"


def source_text(source: dict[str, Any]) -> str:
    """Where a prototype (or training plane) comes from, for people: a synthetic phantom is called so."""
    case = f"synthetic {source['case']}" if "phantom_seed" in source else str(source["case"])
    where = f" (y {source['y']}, x {source['x']})" if "y" in source else ""
    return f"{case} plane {source['plane']}{where}"


def _card(model: Any) -> Any:
    """The card of a model, or the card itself (banks are found from a card alone, nothing loaded)."""
    return getattr(model, "card", model)


def bank_path_for(model: Any) -> Path | None:
    """The bank card beside a saved model's card (``NAME.prototypes.json``); ``None`` for a model in memory.
    ``model``: a model or its card."""
    card = _card(model)
    if not card.path:
        return None
    path = Path(card.path)
    return path.with_name(path.name.removesuffix(".json") + BANK_SUFFIX + ".json")


def cache_bank_path(model: Any) -> Path | None:
    """The bank card in the user cache for ``model`` (a model or its card; named by the model and its weights'
    sha256)."""
    from ..provenance import card_sha256

    card = _card(model)
    sha = card_sha256(card)
    if sha is None:
        return None
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in card.name)
    return cache_dir() / "prototype_banks" / f"{name}-{sha[:12]}{BANK_SUFFIX}.json"


def find_bank(model: Any) -> PrototypeBank | None:
    """The bank beside ``model``'s card, else in the user cache, checked against it (a model, or only its card's
    weights sha256 for a card); ``None`` if there is none.

    A bank beside the card that does not fit (another model's weights) gives way to one in the cache; without one
    there, its refusal is raised.
    """
    refusal: ModelError | None = None
    for path in (bank_path_for(model), cache_bank_path(model)):
        if path is not None and path.is_file():
            try:
                bank = load_bank(path)
                check_bank(bank, model)
                return bank
            except ModelError as err:
                refusal = refusal or err
    if refusal is not None:
        raise refusal
    return None


def _read_card(path: Path) -> dict[str, Any]:
    from ..models.card_schema import read_card_file

    if not path.is_file():
        raise ModelError(f"{path}: no prototype bank here (a bank is NAME{BANK_SUFFIX}.json beside its .safetensors).")
    return read_card_file(path, "prototype_bank", "prototype bank card")


def check_bank(bank: PrototypeBank, model: Any) -> None:
    """:func:`check_bank_model` for a loaded model, :func:`check_bank_card` for a card alone."""
    (check_bank_model if hasattr(model, "card") else check_bank_card)(bank, model)


def check_bank_card(bank: PrototypeBank, card: Any) -> None:
    """Refuse a bank built for another model (other weights than ``card``'s), naming the model it needs."""
    from ..provenance import card_sha256

    if card_sha256(card) != bank.card["base_sha256"]:
        raise ModelError(
            f"the prototype bank {bank.path or bank.card['name']} was built for the model {bank.card['base_model']!r} "
            f"(weights sha256 {bank.card['base_sha256'][:12]}...); {card.name!r} has other weights. Choose "
            f"{bank.card['base_model']!r}, or build a bank for this model (medadapt prototype-bank)."
        )


def check_bank_model(bank: PrototypeBank, model: SegModel) -> None:
    """Refuse a bank built for another model (other weights), naming the model it needs.

    Raises
    ------
    ModelError
        The bank's base model differs, or its space does not exist in ``model``.
    """
    check_bank_card(bank, model.card)
    width = model.prototypes.dim if bank.space == "head" and model.prototypes is not None else model.decoder_channels
    if bank.space == "head" and model.prototypes is None or bank.vectors.shape[1] != width:
        raise ModelError(f"the prototype bank {bank.path} does not fit {model.card.name!r} (feature widths differ).")


def load_bank(path: str | Path, model: SegModel | None = None) -> PrototypeBank:
    """Read a bank (its card file, or the folder of a ``bank.prototypes.json``), checking its weights' sha256,
    and against ``model`` when given (:func:`check_bank_model`)."""
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    if path.is_dir():
        cards = sorted(path.glob(f"*{BANK_SUFFIX}.json"))
        if len(cards) != 1:
            raise ModelError(f"{path}: expected one *{BANK_SUFFIX}.json prototype bank in this folder, found {len(cards)}.")
        path = cards[0]
    card = _read_card(path)
    weights = path.with_name(card["weights_file"])
    if not weights.is_file() or sha256_file(weights) != card["weights_sha256"]:
        raise ModelError(f"the prototype bank's arrays {weights} are missing or changed since the bank was saved.")
    arrays = load_file(str(weights))
    try:
        bank = PrototypeBank(
            card, arrays["vectors"].astype(np.float32), arrays["patches"], arrays["patch_labels"],
            arrays["plane_vectors"].astype(np.float32), path,
        )
    except KeyError as err:
        raise ModelError(f"the prototype bank {weights} lacks the array {err}.") from err
    if len(bank.vectors) != len(card["prototypes"]) or len(bank.patches) != len(bank.vectors) or len(bank.plane_vectors) != len(card["planes"]):
        raise ModelError(f"the prototype bank {path}: its card and arrays disagree on the number of prototypes.")
    if model is not None:
        check_bank_model(bank, model)
    return bank


def save_bank(bank: PrototypeBank, path: str | Path, *, replace: bool = False) -> Path:
    """Write ``bank`` as ``path`` (``NAME.prototypes.json``) and its ``.safetensors`` beside it, each file
    atomically, the arrays first: an interrupted save leaves no card, never a card pointing at missing arrays.

    Raises
    ------
    OutputError
        The files exist (banks are not replaced unless ``replace``; a file that is not a bank never is), or the
        folder is not writable.
    """
    from safetensors.numpy import save_file

    from ..models.card_schema import validate_card
    from ..provenance import package_version

    path = Path(path).expanduser()
    if not path.name.endswith(BANK_SUFFIX + ".json"):
        path = path.with_name(path.name.removesuffix(".json") + BANK_SUFFIX + ".json")
    weights = path.with_name(path.name.removesuffix(".json") + ".safetensors")
    for existing in (path, weights):
        if existing.exists() and not replace:
            raise OutputError(f"{existing} already exists; prototype banks are never replaced. Choose another name.")
    if path.exists():
        _read_card(path)  # refuse to replace a file that is not a prototype bank
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"the folder {path.parent} could not be created ({err.strerror or err}).") from err
    check_output_path(path, what="prototype bank")
    check_output_path(weights, what="prototype bank arrays")
    card = dict(bank.card)
    card.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    card.setdefault("software", f"napari-medadapt {package_version('napari-medadapt')}")
    card.update(kind="prototype_bank", weights_file=weights.name, weights_sha256="0" * 64)
    validate_card(card, f"prototype bank {path}")
    arrays = {
        "vectors": np.ascontiguousarray(bank.vectors, dtype=np.float32),
        "patches": np.ascontiguousarray(bank.patches, dtype=np.float16),
        "patch_labels": np.ascontiguousarray(bank.patch_labels, dtype=np.uint8),
        "plane_vectors": np.ascontiguousarray(bank.plane_vectors, dtype=np.float16),
    }
    atomic_write(weights, lambda tmp: save_file(arrays, tmp, metadata={"medadapt": "prototype_bank"}))
    card["weights_sha256"] = sha256_file(weights)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=1), encoding="utf-8"))
    bank.card, bank.path = card, path
    return path
