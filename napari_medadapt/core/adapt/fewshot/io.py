"""Saving a few-shot adapter and applying it to another volume of the same study without retraining.

An adapter is a folder holding ``adapter.safetensors`` (only the weights the fit trained: the head, and for
``ft_last``/``full`` the backbone weights it changed) and ``adapter.json``, a card of kind ``fewshot_adapter``
(:mod:`~napari_medadapt.core.models.card_schema`): base model and its weights' sha256, backbone tap, classes,
the slices used, settings, metrics, date. Loading checks both checksums and refuses an adapter made for another
base model, naming the model it needs. Nothing is unpickled.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelError
from ...files import OutputError, atomic_write, check_output_path
from ...hashing import sha256_file
from ...jobs import ensure_context

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from ...jobs import JobContext
    from ...models import SegModel
    from ...session import ModelSession
    from ...volume import Volume
    from .fit import FewShotResult

ADAPTER_CARD = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


def _trained_state(result: FewShotResult) -> dict[str, Any]:
    """The weights a fit trained: the head (a promptable backbone's whole adapted model), and for
    ``ft_last``/``full`` the backbone weights it changed."""
    model = result.model
    if result.settings["backbone"] == "promptable":
        prefixes: tuple[str, ...] = ("",)
    elif result.method in ("adapter", "linear_probe"):
        prefixes = ("network.output_block.",)
    elif result.method == "ft_last":
        prefixes = (f"network.upsamples.{len(model.network.upsamples) - 1}.", "network.output_block.")
    else:
        prefixes = ("",)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def adapter_card(result: FewShotResult, name: str | None = None) -> dict[str, Any]:
    """The card of ``result``'s adapter (without the weight file's checksum)."""
    from ...provenance import package_version

    source = result.settings["base_model"]
    if not result.settings.get("base_sha256"):
        raise ModelError(
            f"the adapter was fitted on {source!r}, a model that exists only in this session (an adapted copy): "
            "fit it on a saved or registered model to save it."
        )
    metrics: dict[str, Any] = {"leave_one_out_dice": {str(k): round(v, 4) for k, v in result.leave_one_out.items()}}
    if result.history:
        metrics["final_loss"] = round(result.history[-1]["loss"], 5)
    return {
        "format_version": 1,
        "kind": "fewshot_adapter",
        "name": name or f"{source} few-shot {result.method}",
        "base_model": source,
        "base_sha256": result.settings["base_sha256"],
        "backbone": result.settings["backbone"],
        "tap": "decoder" if result.settings["backbone"] == "segmentation" else "image_embedding",
        "method": result.method,
        "channels": int(result.settings["channels"]),
        "spatial_dims": int(result.settings["spatial_dims"]),
        "labels": [0, *result.classes],
        "class_names": [result.class_names[i] for i in (0, *result.classes)],
        "support": result.support.as_records(),
        "settings": {
            k: v for k, v in result.settings.items()
            if k not in ("base_model", "base_sha256", "backbone", "channels", "spatial_dims")
        },
        "metrics": metrics,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": f"napari-medadapt {package_version('napari-medadapt')}",
    }


def save_adapter(result: FewShotResult, folder: str | Path, name: str | None = None) -> Path:
    """Write the adapter of ``result`` into ``folder`` (created); returns the card's path.

    Raises
    ------
    OutputError
        ``folder`` already holds an adapter (choose another folder; adapters are never replaced), or it is not
        writable.
    """
    from safetensors.torch import save_file

    from ...models.card_schema import validate_card

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--save-adapter {folder}: this is a file; give a folder for the adapter.")
    if (folder / ADAPTER_CARD).exists() or (folder / ADAPTER_WEIGHTS).exists():
        raise OutputError(
            f"{folder} already holds an adapter; adapters are never replaced. Choose another folder."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"the adapter folder {folder} could not be created ({err.strerror or err}).") from err
    weights_path = check_output_path(folder / ADAPTER_WEIGHTS, what="adapter")
    card_path = check_output_path(folder / ADAPTER_CARD, what="adapter card")
    state = _trained_state(result)
    card = adapter_card(result, name)
    validate_card({**card, "weights_file": ADAPTER_WEIGHTS, "weights_sha256": "0" * 64}, f"adapter card {card_path}")
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"medadapt": "fewshot_adapter"}))
    card["weights_file"] = ADAPTER_WEIGHTS
    card["weights_sha256"] = sha256_file(weights_path)
    validate_card(card, f"adapter card {card_path}")
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2), encoding="utf-8"))
    return card_path


def read_adapter_card(folder: str | Path) -> dict[str, Any]:
    """The checked card of the adapter in ``folder`` (or the card file itself)."""
    from ...models.card_schema import read_card_file

    path = Path(folder).expanduser()
    card_path = path if path.suffix == ".json" else path / ADAPTER_CARD
    if not card_path.is_file():
        raise ModelError(f"{path}: no few-shot adapter here (expected {ADAPTER_CARD} from --save-adapter).")
    card = read_card_file(card_path, "fewshot_adapter", "few-shot adapter card")
    card["path"] = str(card_path)
    return card


def _checked_weights(card: dict[str, Any], base_name: str, base_sha256: str | None) -> dict[str, Any]:
    from safetensors.torch import load_file

    if base_sha256 != card["base_sha256"]:
        raise ModelError(
            f"the adapter {card['path']} was made for the model {card['base_model']!r} (weights sha256 "
            f"{card['base_sha256'][:12]}...); {base_name!r} has other weights. Choose {card['base_model']!r}."
        )
    weights = Path(card["path"]).with_name(card["weights_file"])
    if not weights.is_file() or sha256_file(weights) != card["weights_sha256"]:
        raise ModelError(f"the adapter weights {weights} are missing or changed since the adapter was saved.")
    return load_file(str(weights))


def _load_state(module: Any, state: dict[str, Any], what: str) -> None:
    own = module.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ModelError(f"the adapter weights do not fit {what} ({wrong[0]}).")
    module.load_state_dict(state, strict=False)


def load_adapter(folder: str | Path, base: SegModel) -> SegModel:
    """The adapted copy of the segmentation model ``base`` described by the adapter in ``folder``.

    Raises
    ------
    ModelError
        Not an adapter, a changed weight file, or an adapter made for another base model (the message names
        the model it needs).
    """
    from ...provenance import model_sha256
    from .backbone import adapted_copy
    from .train import FewShotHead

    card = read_adapter_card(folder)
    if card["backbone"] != "segmentation":
        raise ModelError(f"the adapter {card['path']} works on {card['base_model']!r} features, not on a segmentation model.")
    state = _checked_weights(card, base.card.name, model_sha256(base))
    if base.decoder_channels != card["channels"] or base.spatial_dims != card["spatial_dims"]:
        raise ModelError(f"the adapter {card['path']} does not fit {base.card.name!r} (feature channels differ).")
    head = FewShotHead(card["channels"], len(card["labels"]), card["spatial_dims"], adapter=card["method"] == "adapter")
    adapted = adapted_copy(base, head, tuple(card["labels"][1:]), card["method"])
    _load_state(adapted, state, repr(base.card.name))
    adapted.card = replace(adapted.card, name=card["name"], class_names=list(card["class_names"] or adapted.card.class_names))
    return adapted.eval()


def apply_adapter(
    folder: str | Path,
    volume: Volume,
    session: ModelSession,
    *,
    model: str | Path | None = None,
    modalities: Mapping[str, str | None] | None = None,
    channel: str | None = None,
    device: Any = None,
    ctx: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Segment ``volume`` with a saved adapter (no retraining): ``(labels, probabilities, card)``.

    Nothing is painted on the new volume, so with the adapter's post-processing the largest connected component
    is kept (the fit kept the components touching the paint). The base model (``model``, a name or path;
    default: the adapter's ``base_model`` by name) comes from
    ``session`` (loaded once for a whole study) and must be the one the adapter was made for; a promptable
    backbone embeds the
    volume's ``channel`` (default: the channel the adapter was fitted on when the volume has it, else the first).
    """
    from ...device import select_device
    from .backbone import SegBackbone
    from .train import FewShotHead

    card = read_adapter_card(folder)
    classes = tuple(card["labels"][1:])
    largest = bool(card["settings"].get("largest_component", False))
    torch_device = select_device(device)
    if card["backbone"] == "segmentation":
        base = session.model(model or card["base_model"], ctx)
        backbone: Any = SegBackbone(base, volume, modalities)
        adapted: Any = load_adapter(folder, base)
    else:
        from ...sam.workspace import ModelChoice
        from .sam import SamBackbone

        predictor = session.sam.predictor(ModelChoice(str(model or card["base_model"])), ensure_context(ctx), [])
        state = _checked_weights(card, predictor.model.name, predictor.model.weights_hash)
        adapted = FewShotHead(card["channels"], len(card["labels"]), 2, adapter=card["method"] == "adapter")
        _load_state(adapted, state, repr(card["base_model"]))
        fitted = card["settings"].get("channel")
        backbone = SamBackbone(predictor, volume, channel or (fitted if fitted in volume.channels else None))
    labels, probs = backbone.predict(adapted, classes, torch_device, ctx, largest, session)
    return labels, probs, card
