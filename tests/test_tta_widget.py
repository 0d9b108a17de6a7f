"""Test-time adaptation dock on a crop of a real glioma case with a tiny model registered from a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_medadapt._worker import get_worker
from napari_medadapt.core.models import ModelCard, default_architecture

MODALITIES = ["t1", "t1c", "t2", "flair"]
CROP = (slice(72, 136), slice(64, 128), slice(80, 96))


@pytest.fixture(scope="module")
def crop_folder(tmp_path_factory, write_crops) -> Path:
    return write_crops(tmp_path_factory.mktemp("glioma_tta"), MODALITIES, CROP)


@pytest.fixture
def model_dir(register_tiny_model) -> Path:
    card = ModelCard(
        name="tinytta",
        architecture=default_architecture(2, 4, 4, filters=(4, 8, 16), res_block=False),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=["background", "necrosis", "edema", "enhancing"],
        shift_score={"typical_max": 0.5, "far_min": 1.5},
    )
    return register_tiny_model(card)


@pytest.fixture
def dock(open_dock, crop_folder, model_dir):
    return open_dock(crop_folder, "Test-time adaptation", "tinytta")


def test_inputs_are_matched_and_settings_read(dock):
    _, widget = dock
    assert not widget.status.text().startswith("Reset") and "not measured" in widget.shift_label.text()
    assert all(name is not None and modality in name for modality, name in widget.input_mapping().items())
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("tent"))
    widget.blocks_edit.setText("input, down2")
    settings = widget.settings()
    assert settings["method"] == "tent" and settings["blocks"] == ("input", "down2")
    widget.method_combo.setCurrentIndex(widget.method_combo.findData("normalizer"))
    assert not widget.blocks_edit.isEnabled() and widget.settings()["blocks"] is None


def test_measure_shift_rates_the_score(dock, qtbot):
    _, widget = dock
    widget.measure()
    with qtbot.waitSignal(widget.handle.finished, timeout=60000):
        pass
    assert widget.last_score is not None and widget.last_score > 0
    text = widget.shift_label.text().lower()
    assert "shift score" in text and any(c in text for c in ("typical", "unusual", "far"))


def test_adapt_and_segment_adds_layers_curve_and_volumes(dock, qtbot):
    viewer, widget = dock
    widget.iterations_spin.setValue(3)
    widget.lr_spin.setValue(0.005)
    layers_before = len(viewer.layers)
    widget.adapt()
    with qtbot.waitSignal(widget.handle.finished, timeout=120000):
        pass
    qtbot.waitUntil(lambda: len(widget.loss_plot.losses) == 4, timeout=5000)
    outcome = widget.last_outcome
    assert outcome is not None
    assert len(viewer.layers) == layers_before + 2
    assert viewer.layers[-1].name.startswith("tinytta after TTA") and viewer.layers[-2].name.endswith("before TTA")
    assert widget.loss_plot.losses == pytest.approx(outcome.result.loss_history)
    assert widget.volume_table.rowCount() == 3
    assert "Before:" in widget.shift_label.text() and "After:" in widget.shift_label.text()
    after = viewer.layers[-1].metadata["medadapt"]["provenance"]
    assert after["method"] == "segment+tta" and after["settings"]["tta"]["iterations"] == 3
    assert viewer.layers[-2].metadata["medadapt"]["provenance"]["method"] == "segment"
    widget.reset()
    assert widget.last_outcome is None and widget.loss_plot.losses == []
    assert widget.shift_label.text() == "Shift score: not measured."  # no stale "After" score
    assert widget.volume_table.rowCount() == 0 and widget.status.text().startswith("Reset")


def test_cancel_leaves_the_source_model_untouched(dock, qtbot):
    viewer, widget = dock
    worker = get_worker(viewer)
    loading = worker.submit(lambda *, ctx: worker.session.model(widget.card.path, ctx))  # the session's thread
    with qtbot.waitSignal(loading.finished, timeout=60000):
        pass
    model = loading.result
    source = {k: v.clone() for k, v in model.state_dict().items()}
    widget.iterations_spin.setValue(400)
    layers_before = len(viewer.layers)
    widget.adapt()
    handle = widget.handle
    qtbot.waitUntil(lambda: len(widget.loss_plot.losses) >= 2, timeout=60000)
    widget.cancel()
    with qtbot.waitSignal(handle.finished, timeout=60000):
        pass
    assert handle.cancelled and "Cancelled" in widget.status.text()
    assert len(viewer.layers) == layers_before and widget.last_outcome is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
