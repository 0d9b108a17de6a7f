"""Few-shot dock, opened from the Plugins menu: paint three slices, adapt, accept, suggest, save and apply."""

from __future__ import annotations

import numpy as np
import pytest
from test_fewshot import _blob_volume, fewshot_card

from napari_medadapt.core.provenance import read_provenance

DOCK = "Few-shot adapter"
LABELS, PROBABILITY = "few-shot tinyct labels", "few-shot tinyct probability"


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
    assert viewer.layers[-2].name == LABELS and viewer.layers[-1].name == PROBABILITY
    np.testing.assert_array_equal(viewer.layers[LABELS].data, result.predicted)
    saved = tmp_path / "fewshot.nii.gz"  # saved from napari with the plugin's writer: with its provenance
    viewer.layers[LABELS].save(str(saved), plugin="napari-medadapt")
    record = read_provenance(saved)
    assert record["method"] == "fewshot" and record["model"]["name"] == "tinyct" and record["device"]
    assert [p["index"] for p in record["settings"]["support"]] == [5, 8, 11]
    assert record["settings"]["napari_layer"] == LABELS
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
    reasons = widget.suggest_panel.reasons.text()  # why, in the dock
    assert reasons.startswith(f"Suggested: axial slice {index}: ") and "from the nearest painted slice" in reasons
    assert "mean uncertainty" in reasons and f"axial slice {index}" in widget.status.text()

    folder = widget.save_adapter(str(tmp_path / "adapter"))
    assert folder is not None and (tmp_path / "adapter" / "adapter.json").is_file()
    layers = len(viewer.layers)
    widget.apply_adapter(folder)
    with qtbot.waitSignal(widget.handle.finished, timeout=60000):
        pass
    assert len(viewer.layers) == layers + 2
    np.testing.assert_array_equal(viewer.layers[-2].data, result.predicted)


def _results(viewer) -> tuple[list, list]:
    from napari.layers import Image, Labels

    from napari_medadapt.widgets._layers import is_result_layer

    ours = [layer for layer in viewer.layers if is_result_layer(layer)]
    return [la for la in ours if isinstance(la, Labels)], [la for la in ours if isinstance(la, Image)]


def test_adapt_again_replaces_the_results_undoably_and_refits_from_the_previous_adapter(
    painted_viewer, open_plugin_dock, qtbot
):
    from napari_medadapt.core.adapt.fewshot.warm import warm_steps

    viewer, labels = painted_viewer
    widget = open_plugin_dock(viewer, DOCK)
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("tinyct"))
    widget.labels_combo.setCurrentText("painted")
    widget.steps_spin.setValue(40)
    _adapt(widget, qtbot)
    first = widget.result
    assert first is not None and not first.warm_started and len(first.history) == 40
    assert [la.name for la in _results(viewer)[0]] == [LABELS] and [la.name for la in _results(viewer)[1]] == [PROBABILITY]
    assert all("painted" not in la.name for la in viewer.layers if la.name != "painted")
    assert widget.labels_combo.findText(LABELS) < 0 and widget.image_combo.findText(PROBABILITY) < 0  # not inputs

    assert widget.adapt_button.isEnabled()  # the leave-one-slice-out check does not hold Adapt back
    more = np.array(viewer.layers["painted"].data)
    more[13] = labels[13]
    viewer.layers["painted"].data = more  # one more slice, painted while the leave-one-slice-out check runs
    widget.update_support()
    widget.adapt()  # cancels the check of the previous fit, starts from the previous adapter
    assert widget.status.text().startswith("Refitting from the previous adapter: about ")
    with qtbot.waitSignal(widget.handle.finished, timeout=120000):
        pass
    second = widget.result
    assert second is not first and second.warm_started and len(second.history) == warm_steps(40) == 10
    assert second.support.indices == [5, 8, 11, 13] and "Refitted from the previous adapter" in widget.status.text()
    result_labels, result_probs = _results(viewer)
    assert len(result_labels) == 1 and len(result_probs) == 1  # replaced, not stacked
    layer = result_labels[0]
    assert layer.name == LABELS
    np.testing.assert_array_equal(layer.data, second.predicted)
    assert not np.array_equal(first.predicted, second.predicted)
    layer.undo()  # Ctrl+Z: the previous result
    np.testing.assert_array_equal(layer.data, first.predicted)
    layer.redo()
    with qtbot.waitSignal(widget.handle.finished, timeout=120000):  # the check of the refit
        pass

    widget.keep_check.setChecked(True)  # keep earlier results: new layers
    _adapt(widget, qtbot)
    result_labels, result_probs = _results(viewer)
    assert len(result_labels) == 2 and len(result_probs) == 2
    np.testing.assert_array_equal(result_labels[0].data, second.predicted)
    np.testing.assert_array_equal(result_labels[1].data, widget.result.predicted)


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


def test_results_on_a_sequence_placed_by_an_affine_lie_on_it(painted_viewer, open_plugin_dock, qtbot):
    viewer, labels = painted_viewer
    tilt = np.eye(4)
    tilt[1, 1] = tilt[2, 2] = np.cos(0.2)
    tilt[1, 2], tilt[2, 1] = -np.sin(0.2), np.sin(0.2)
    tilt[:3, 3] = (4.0, -7.0, 12.0)
    viewer.layers["ct"].affine = tilt  # a raw sequence opened in scanner space, tilted
    viewer.layers["painted"].affine = tilt
    widget = open_plugin_dock(viewer, DOCK)
    widget.backbone_combo.setCurrentIndex(widget.backbone_combo.findData("litemedsam"))
    widget.image_combo.setCurrentText("ct")
    widget.labels_combo.setCurrentText("painted")
    widget.steps_spin.setValue(10)
    _adapt(widget, qtbot)
    for name in (widget.result_layer_name, "few-shot litemedsam probability"):
        assert np.allclose(viewer.layers[name].affine.affine_matrix, tilt), name
