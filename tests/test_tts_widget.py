"""TTS dock: keypoint layers, live slice re-prediction, apply to volume, reset, wrong-geometry points."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadapt.core.models import ModelCard, default_architecture
from napari_medadapt.widgets.tts import (
    AFTER_LAYER,
    ATTENTION_AFTER_LAYER,
    BEFORE_LAYER,
    NEGATIVE_LAYER,
    POSITIVE_LAYER,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def model_path(tmp_path, save_tiny_model):
    card = ModelCard(
        name="tiny_tts_widget",
        architecture=default_architecture(2, 2, 2, filters=(8, 16, 32), res_block=False),
        modalities=["t1c", "flair"],
        labels=[0, 1],
    )
    return save_tiny_model(tmp_path, card)


def _wait(qtbot, handle):
    assert handle is not None
    with qtbot.waitSignal(handle.finished, timeout=60_000):
        pass


def test_dock_live_slice_apply_and_reset(plugin_viewer, open_plugin_dock, qtbot, model_path):
    viewer = plugin_viewer()
    rng = np.random.default_rng(0)
    for name in ("t1c", "flair"):
        viewer.add_image(rng.random((4, 32, 40)).astype(np.float32) + 0.1, name=name, scale=(2.0, 1.0, 1.0))
    dock = open_plugin_dock(viewer, "TTS keypoint muting")
    dock.live_check.setChecked(False)
    dock.model_box.setCurrentText(str(model_path))
    assert set(dock._modality_boxes) == {"t1c", "flair"}
    assert dock._modality_boxes["flair"].currentText() == "flair"

    positive, negative = dock.ensure_points_layers()
    assert positive.current_symbol.value == "disc" and negative.current_symbol.value == "x"
    viewer.dims.set_point(0, 2.0 * 2)  # world z = 4 mm -> slice 2
    positive.data = np.array([[2, 10, 12]])
    negative.data = np.array([[2, 25, 30]])
    _wait(qtbot, dock.predict_current_slice())
    assert dock.last_result.z == 2
    selection = dock.last_result.selection
    assert selection is not None and len(selection.kept) == 1  # 10 % of 8 channels -> 1
    # one row per kept channel, plus one line for the background channels that are never muted
    assert dock.kept_list.count() == 1 + (len(selection.background) > 0)
    assert dock.kept_list.item(0).text().startswith(f"channel {int(selection.kept[0])}")
    for name in (BEFORE_LAYER, AFTER_LAYER, ATTENTION_AFTER_LAYER):
        assert name in viewer.layers
    np.testing.assert_array_equal(viewer.layers[AFTER_LAYER].data[2], dock.last_result.labels)

    dock.keep_box.setValue(25)
    dock.artifact_check.setChecked(True)
    assert dock.alpha == pytest.approx(0.2)
    _wait(qtbot, dock.apply_to_volume())
    result = dock.last_result
    assert result.slice_selection.tolist() == [-1, -1, 0, -1]
    assert len(result.selections[0].kept) == 2
    np.testing.assert_array_equal(viewer.layers[AFTER_LAYER].data, result.labels)
    np.testing.assert_array_equal(viewer.layers[BEFORE_LAYER].data, result.baseline_labels)

    dock.background_check.setChecked(False)  # the published rule: nothing outside the top 25 % stays on
    _wait(qtbot, dock.apply_to_volume())
    assert dock.last_result.selections[0].background.size == 0
    assert dock.last_result.selections[0].mask.sum() == 2

    dock.reset()
    assert len(viewer.layers[POSITIVE_LAYER].data) == 0 and dock.kept_list.count() == 0


def test_dock_live_update_and_points_from_another_geometry(plugin_viewer, open_plugin_dock, qtbot, model_path):
    viewer = plugin_viewer()
    for name in ("t1c", "flair"):
        viewer.add_image(np.ones((3, 24, 24), np.float32), name=name)
    viewer.add_image(np.full((3, 24, 24), 2.0, np.float32), name="second flair")
    dock = open_plugin_dock(viewer, "TTS keypoint muting")
    dock.model_box.setCurrentText(str(model_path))
    dock._modality_boxes["flair"].setCurrentText("second flair")
    positive, negative = dock.ensure_points_layers()
    viewer.dims.set_point(0, 1.0)
    positive.data = np.array([[1, 5, 5]])
    negative.data = np.array([[1, 20, 20]])
    qtbot.waitUntil(lambda: dock.last_result is not None, timeout=60_000)
    assert dock.last_result.z == 1
    assert dock._modality_boxes["flair"].currentText() == "second flair"  # kept while result layers were added

    viewer.layers.remove(NEGATIVE_LAYER)
    viewer.add_points(np.array([[1, 60, 60]]), name=NEGATIVE_LAYER, ndim=3)
    assert dock.predict_current_slice() is None
    assert "outside image" in dock.status.text() and "another shape or geometry" in dock.status.text()
