"""Segment dock on a crop of a real glioma case with a tiny model registered from a temp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medadapt.core.models import ModelCard, default_architecture

MODALITIES = ["t1", "t1c", "t2", "flair"]
CROP = (slice(72, 120), slice(64, 112), slice(90, 114))


@pytest.fixture(scope="module")
def crop_folder(tmp_path_factory, write_crops) -> Path:
    return write_crops(tmp_path_factory.mktemp("glioma"), [*MODALITIES, "seg_fusion"], CROP)


@pytest.fixture
def model_dir(register_tiny_model) -> Path:
    card = ModelCard(
        name="tinywidget",
        architecture=default_architecture(2, 4, 4, filters=(4, 8, 16)),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=["background", "necrosis", "edema", "enhancing"],
        supported_subsets=[MODALITIES, ["t1c", "t2", "flair"]],
    )
    return register_tiny_model(card)


@pytest.fixture
def dock(open_dock, crop_folder, model_dir):
    return open_dock(crop_folder, "Segment volume", "tinywidget")


def _run(qtbot, widget):
    widget.run()
    assert widget.handle is not None
    qtbot.waitUntil(lambda: widget.handle is None, timeout=60000)


def test_auto_match_run_new_layer_and_table(dock, qtbot):
    viewer, widget = dock
    assert widget.input_mapping() == {m: m for m in MODALITIES}
    widget.confidence_check.setChecked(True)
    _run(qtbot, widget)
    layer = viewer.layers["tinywidget labels"]
    prediction = widget.last_prediction
    assert layer.data.shape == viewer.layers["t1"].data.shape
    np.testing.assert_array_equal(layer.data, prediction.labels)
    assert tuple(layer.scale) == tuple(viewer.layers["t1"].scale)
    assert widget.volume_table.rowCount() == 3
    assert widget.volume_table.item(1, 1).text() == "edema"
    assert float(widget.volume_table.item(1, 2).text()) == pytest.approx(prediction.volumes_ml[2], abs=0.01)
    confidence = viewer.layers["confidence"].data
    assert confidence.shape == layer.data.shape and 0.25 <= confidence.min() <= confidence.max() <= 1.0


def test_saved_labels_carry_their_provenance(dock, qtbot, tmp_path):
    from napari_medadapt.core.provenance import read_provenance

    viewer, widget = dock
    _run(qtbot, widget)
    layer = viewer.layers["tinywidget labels"]
    layer.save(str(tmp_path / "saved.nii.gz"), plugin="napari-medadapt")
    record = read_provenance(tmp_path / "saved.nii.gz")
    assert record["method"] == "segment" and record["model"]["name"] == "tinywidget" and record["model"]["sha256"]
    assert set(record["inputs"]) == set(MODALITIES) and all(e["sha256"] for e in record["inputs"].values())
    assert record["settings"]["largest_component"] is widget.largest_check.isChecked()


def test_replace_existing_labels_is_undoable(dock, qtbot):
    viewer, widget = dock
    target = viewer.layers["seg_fusion"]
    original = np.array(target.data)
    assert widget.output_combo.findText("seg_fusion") < 0  # a reference is written into only when picked so
    widget.output_combo.setCurrentText("replace: seg_fusion")
    _run(qtbot, widget)
    np.testing.assert_array_equal(target.data, widget.last_prediction.labels)
    assert "tinywidget labels" not in viewer.layers
    target.undo()
    np.testing.assert_array_equal(target.data, original)


def test_missing_input_and_optional_input(dock, qtbot, notifications):
    viewer, widget = dock
    widget.set_input("flair", "none")
    widget.run()
    assert widget.handle is None and "needs FLAIR" in widget.status.text()
    notifications.take("needs FLAIR")
    assert "tinywidget labels" not in viewer.layers
    widget.set_input("flair", "flair")
    widget.set_input("t1", "none")
    _run(qtbot, widget)
    assert widget.last_prediction.missing == ("t1",)


def test_cancel_leaves_layers_untouched(dock, qtbot):
    viewer, widget = dock
    names = [layer.name for layer in viewer.layers]
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.handle is None, timeout=60000)
    assert "Cancelled" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == names
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_largest_region_option_follows_card_and_cleans_islands(dock, qtbot):
    from napari_medadapt.core.postprocess import keep_largest_component

    viewer, widget = dock
    assert not widget.largest_check.isChecked()  # this card asks for no post-processing
    _run(qtbot, widget)
    every_region = widget.last_prediction.labels
    widget.largest_check.setChecked(True)
    _run(qtbot, widget)
    np.testing.assert_array_equal(widget.last_prediction.labels, keep_largest_component(every_region)[0])
