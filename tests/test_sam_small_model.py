"""The bundled small model loads (sha256 checked) and segments a real held-out tumour from a box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data import SAMPLE_CASE

from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.sam import SamPredictor, box_from_mask, iou, load_sam, resolve_window
from napari_medadapt.core.sam.small_model import (
    SMALL_CARD,
    SMALL_WEIGHTS,
    load_small_sam,
    read_small_card,
    sha256_file,
)

CASE = SAMPLE_CASE


def test_bundled_weights_match_their_card() -> None:
    card = json.loads(SMALL_CARD.read_text())
    assert sha256_file(SMALL_WEIGHTS) == card["weights_sha256"]
    assert "glioma_tcga_fg6692" not in " ".join(card["training_data"]["cases"])
    read = read_small_card()  # the one card type, documentation fields kept
    assert read.sha256 == read.weights_sha256 == card["weights_sha256"] and read.encoder == "small"
    assert read.extra["training_data"] == card["training_data"] and read.card_path == str(SMALL_CARD)


def test_unreadable_card_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "sam_small.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError, match="Cannot read the model card"):
        read_small_card(broken)
    with pytest.raises(ModelError, match="Cannot read the model card"):
        load_small_sam(SMALL_WEIGHTS, tmp_path / "missing.json")


def test_tampered_weights_are_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "sam_small.safetensors"
    data = bytearray(SMALL_WEIGHTS.read_bytes())
    data[-1] ^= 0xFF
    broken.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_small_sam(broken, SMALL_CARD)


def test_box_prompt_on_held_out_tumour_beats_chance() -> None:
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.volume import load_volume

    volume = load_volume(CASE / "flair.nii.gz")
    labels = load_labels(CASE / "seg_fusion.nii.gz", volume.geometry)
    tumour = np.isin(labels, [1, 2, 4])
    z = int(np.argmax(tumour.sum(axis=(1, 2))))
    image = volume.data[0, z]
    target = tumour[z]
    window = resolve_window(volume.data[0], "mri-auto")
    predictor = SamPredictor(load_sam("sam-small", device="cpu"))
    box = box_from_mask(target)
    pred = predictor.predict(image, window, box=box)
    r0, c0, r1, c1 = box
    filled_box = np.zeros_like(target)
    filled_box[r0 : r1 + 1, c0 : c1 + 1] = True
    rng = np.random.default_rng(0)
    random_in_box = filled_box & (rng.random(target.shape) < target.sum() / filled_box.sum())
    chance = iou(random_in_box, target)  # a random mask of the right size inside the box
    score = iou(pred.mask, target)
    # measured with the bundled weights: 0.49 (chance 0.30, the filled box 0.46)
    assert score > 0.4 and score > chance + 0.1, (score, chance)
    assert score > iou(filled_box, target) - 0.05
