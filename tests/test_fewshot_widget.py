"""Few-shot dock, opened from the Plugins menu: paint three slices, adapt, accept, suggest, save and apply."""

from __future__ import annotations

import numpy as np
import pytest
from test_fewshot import _blob_volume, fewshot_card

from napari_medadapt.core.provenance import read_provenance

DOCK = "Few-shot adapter"


@pytest.fixture
def painted_viewer(plugin_viewer, register_tiny_model):
    card = fewshot_card()
    register_tiny_model(card)
    volume, labels = _blob_volume()
    viewer = plugin_viewer()
    viewer.add_image(volume.data[0], name="ct")
    painted = np.zeros_like(labels)
    painted[[5, 8, 11]] = labels[[5, 8, 11]]
    viewer.add_labels(painted, name="painted")
    return viewer, labels


def _adapt(widget, qtbot) -> None:
    widget.adapt()
    with qtbot.waitSignal(widget.handle.finished, timeout=120000):
        pass


def test_adapt_accept_suggest_save_and_apply(painted_viewer, open_plugin_dock, qtbot, tmp_path):
    viewer, labels = painted_viewer
    widget = open_plugin_dock(viewer, DOCK)
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("tinyct"))
    widget.labels_combo.setCurrentText("painted")
    assert "3 slice(s): axial 5 (labels 1, 2); axial 8" in widget.support_label.text()
    assert not widget.accept_button.isEnabled()
    widget.steps_spin.setValue(120)
    _adapt(widget, qtbot)
    result = widget.result
    assert result is not None and result.support.indices == [5, 8, 11]
    with qtbot.waitSignal(widget.handle.finished, timeout=120000):  # then the leave-one-slice-out check
        pass
    assert set(result.leave_one_out) == {5, 8, 11}
    qtbot.waitUntil(lambda: len(widget.loss_plot.losses) == 120, timeout=5000)
    assert viewer.layers[-2].name == "few-shot adapter (painted)" and viewer.layers[-1].name.endswith("probability")
    np.testing.assert_array_equal(viewer.layers["few-shot adapter (painted)"].data, result.predicted)
    saved = tmp_path / "fewshot.nii.gz"  # saved from napari with the plugin's writer: with its provenance
    viewer.layers["few-shot adapter (painted)"].save(str(saved), plugin="napari-medadapt")
    record = read_provenance(saved)
    assert record["method"] == "fewshot" and record["model"]["name"] == "tinyct" and record["device"]
    assert [p["index"] for p in record["settings"]["support"]] == [5, 8, 11]
    assert record["settings"]["napari_layer"] == "few-shot adapter (painted)"
    assert "Leave-one-slice-out Dice axial 5:" in widget.status.text()
    assert widget.labels_combo.currentText() == "painted"  # the result layer is not offered as painted slices

    layer = viewer.layers["painted"]
    before = np.array(layer.data)
    changed = widget.accept()
    after = np.asarray(layer.data)
    assert changed > 0 and "painted slices untouched" in widget.status.text()
    np.testing.assert_array_equal(after[[5, 8, 11]], before[[5, 8, 11]])  # never over the user's slices
    free = np.ones(16, bool)
    free[[5, 8, 11]] = False
    np.testing.assert_array_equal(after[free], result.predicted[free])
    layer.undo()
    np.testing.assert_array_equal(np.asarray(layer.data), before)

    index = widget.suggest()
    assert index is not None and index not in (5, 8, 11)
    assert round(viewer.dims.point[0]) == index

    folder = widget.save_adapter(str(tmp_path / "adapter"))
    assert folder is not None and (tmp_path / "adapter" / "adapter.json").is_file()
    layers = len(viewer.layers)
    widget.apply_adapter(folder)
    with qtbot.waitSignal(widget.handle.finished, timeout=60000):
        pass
    assert len(viewer.layers) == layers + 2
    np.testing.assert_array_equal(viewer.layers[-2].data, result.predicted)


def test_mark_empty_and_refusals(painted_viewer, open_plugin_dock, notifications, qtbot):
    viewer, _labels = painted_viewer
    widget = open_plugin_dock(viewer, DOCK)
    widget.labels_combo.setCurrentText("painted")
    viewer.dims.set_point(0, 14)
    widget.mark_empty()
    assert "axial 14 (annotated empty)" in widget.support_label.text()
    widget.clear_marks()
    assert "axial 14" not in widget.support_label.text()
    viewer.layers["painted"].data = np.zeros_like(viewer.layers["painted"].data)
    widget.update_support()
    assert "no labelled slice" in widget.support_label.text()
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("tinyct"))
    _adapt(widget, qtbot)
    assert "no labelled slice" in notifications.take("no labelled slice")
    assert widget.result is None and not widget.accept_button.isEnabled()


def test_foundation_model_segments_any_image(painted_viewer, open_plugin_dock, qtbot):
    viewer, labels = painted_viewer
    widget = open_plugin_dock(viewer, DOCK)
    widget.backbone_combo.setCurrentIndex(widget.backbone_combo.findData("litemedsam"))
    assert widget.image_combo.isVisible() or not widget.inputs.isVisible()
    full = widget.method_combo.model().item(widget.method_combo.findData("full"))
    assert not full.isEnabled()
    widget.image_combo.setCurrentText("ct")
    widget.labels_combo.setCurrentText("painted")
    widget.steps_spin.setValue(30)
    _adapt(widget, qtbot)
    assert widget.result is not None and widget.result.settings["backbone"] == "promptable"
    assert viewer.layers[-2].data.shape == labels.shape
