"""TTS dock opened from the Plugins menu: one keypoint layer (polarity per point, any plane), live
re-prediction of the changed slices from cached features, "before" equal to the Segment dock's result, apply to
volume (only keypoint slices), reset, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadapt._worker import get_worker
from napari_medadapt.core.inference import predict_volume
from napari_medadapt.core.models import ModelCard, default_architecture, load_model
from napari_medadapt.widgets.tts import (
    AFTER_LAYER,
    ATTENTION_AFTER_LAYER,
    BEFORE_LAYER,
    KEYPOINTS_LAYER,
)

pytestmark = pytest.mark.gui
DOCK = "TTS keypoint muting"


@pytest.fixture
def model_path(tmp_path, save_tiny_model):
    card = ModelCard(
        name="tiny_tts_widget",
        architecture=default_architecture(2, 2, 2, filters=(8, 16, 32), res_block=False),
        modalities=["t1c", "flair"],
        labels=[0, 1],
        class_names=["background", "tumour"],
        postprocess={"largest_component": True},
    )
    return save_tiny_model(tmp_path, card)


def _wait(qtbot, handle):
    assert handle is not None
    with qtbot.waitSignal(handle.finished, timeout=60_000):
        pass
    assert handle.state.value == "done", handle.error


def _images(viewer):
    rng = np.random.default_rng(0)
    for name in ("t1c", "flair"):
        viewer.add_image(rng.random((4, 32, 40)).astype(np.float32) + 0.1, name=name, scale=(2.0, 1.0, 1.0))


def test_dock_live_slice_apply_and_reset(plugin_viewer, open_plugin_dock, qtbot, model_path):
    viewer = plugin_viewer()
    _images(viewer)
    dock = open_plugin_dock(viewer, DOCK)
    dock.live_check.setChecked(False)
    dock.model_box.setCurrentText(str(model_path))
    assert set(dock.inputs.modality_boxes) == {"t1c", "flair"}
    assert dock.inputs.modality_boxes["flair"].currentText() == "flair"

    points = dock.ensure_keypoint_layer()
    assert points.current_symbol.value == "disc"
    viewer.dims.set_point(0, 2.0 * 2)  # world z = 4 mm -> slice 2
    points.add([2, 10, 12])
    dock.polarity.toggle()  # the next keypoint is negative
    assert points.current_symbol.value == "x"
    points.add([2, 25, 30])
    assert points.features["positive"].tolist() == [True, False]
    _wait(qtbot, dock.apply_to_volume())
    result = dock.last_result
    assert result.slices == [2]
    selection = result.selections[2]
    assert (selection.n_positive, selection.n_negative) == (1, 1)
    assert len(selection.kept) == 1  # 10 % of 8 channels -> 1
    # one row per kept channel, plus one line for the background channels that are never muted
    assert dock.kept_list.count() == 1 + (len(selection.background) > 0)
    assert dock.kept_list.item(0).text().startswith(f"channel {int(selection.kept[0])}")
    for name in (BEFORE_LAYER, AFTER_LAYER, ATTENTION_AFTER_LAYER):
        assert name in viewer.layers
    # "before" is the model's ordinary segmentation, post-processed as its card says (what Segment shows)
    volume = dock._volume(dock.inputs.chosen_layers())
    segmented = predict_volume(load_model(model_path), volume, return_probabilities=False)
    np.testing.assert_array_equal(viewer.layers[BEFORE_LAYER].data, segmented.labels)
    np.testing.assert_array_equal(viewer.layers[AFTER_LAYER].data, result.after)
    assert viewer.layers[BEFORE_LAYER].features["class"].tolist() == ["background", "tumour"]
    # the keypoint layer stays above the result layers, and stays the active one
    qtbot.waitUntil(lambda: [layer.name for layer in viewer.layers][-1] == KEYPOINTS_LAYER)
    assert viewer.layers.selection.active.name == KEYPOINTS_LAYER
    _wait(qtbot, dock.apply_to_volume())
    assert dock.last_result.slices == []  # nothing changed since: nothing recomputed

    dock.keep_box.setValue(25)
    dock.artifact_check.setChecked(True)
    assert dock.alpha == pytest.approx(0.2)
    _wait(qtbot, dock.apply_to_volume())
    result = dock.last_result
    assert result.slices == [2] and sorted(result.selections) == [2]  # only the slice with keypoints
    assert len(result.selections[2].kept) == 2
    # other slices keep "before", except islands the 3D post-processing removes once slice 2 changed
    others, before = result.after[[0, 1, 3]], segmented.labels[[0, 1, 3]]
    assert np.all((others == before) | (others == 0))
    np.testing.assert_array_equal(viewer.layers[AFTER_LAYER].data, result.after)
    record = viewer.layers[AFTER_LAYER].metadata["medadapt"]["provenance"]  # what the writer completes on save
    assert record["method"] == "tts" and record["settings"]["keep"] == dock.keep_fraction
    assert len(record["settings"]["positives_zyx"]) + len(record["settings"]["negatives_zyx"]) >= 1

    dock.background_check.setChecked(False)  # the published rule: nothing outside the top 25 % stays on
    _wait(qtbot, dock.apply_to_volume())
    assert dock.last_result.selections[2].background.size == 0
    assert dock.last_result.selections[2].mask.sum() == 2

    dock.per_slice_check.setChecked(False)  # one mask from every keypoint, for every slice
    _wait(qtbot, dock.apply_to_volume())
    assert sorted(dock.last_result.selections) == [0, 1, 2, 3]

    dock.live_check.setChecked(True)  # live: emptying the keypoint layers must not start a re-prediction
    running = dock.apply_to_volume()
    dock.reset()
    assert len(viewer.layers[KEYPOINTS_LAYER].data) == 0 and dock.kept_list.count() == 0
    with qtbot.waitSignal(running.finished, timeout=60_000):
        pass
    qtbot.wait(200)
    assert dock.status.text().startswith("Reset")  # neither the running job nor a re-prediction replaced it
    assert dock.last_result is None


def test_live_keypoints_reuse_features_and_the_segment_docks_result(
    plugin_viewer, open_plugin_dock, qtbot, model_path
):
    viewer = plugin_viewer()
    _images(viewer)
    segment = open_plugin_dock(viewer, "Segment volume")
    segment.add_model_file(model_path)
    segment.run()
    qtbot.waitUntil(lambda: segment.handle is None, timeout=60_000)
    session = get_worker(viewer).session
    assert session.loads == 1

    dock = open_plugin_dock(viewer, DOCK)
    dock.model_box.setCurrentText(str(model_path))
    points = dock.ensure_keypoint_layer()
    viewer.dims.set_point(0, 2.0)  # slice 1
    points.add([1, 10, 12])
    qtbot.waitUntil(lambda: dock.last_result is not None, timeout=60_000)
    assert session.loads == 1 and session.hits == 1  # the Segment dock's model and result, reused
    assert "only positive keypoints" in dock.status.text()
    live = dock._workspace._live
    dock.polarity.toggle()
    points.add([1, 25, 30])
    qtbot.waitUntil(lambda: dock.last_result is not None and 1 in dock.last_result.selections
                    and dock.last_result.selections[1].n_negative == 1, timeout=60_000)
    assert dock._workspace._live is live and live.slices.cached_slices == [1]  # features from the cache
    assert session.hits == 1  # "before" was not looked up again
    np.testing.assert_array_equal(
        viewer.layers[BEFORE_LAYER].data, viewer.layers[f"{segment.card.name} labels"].data
    )


def test_dock_live_update_and_points_from_another_geometry(plugin_viewer, open_plugin_dock, qtbot, model_path):
    viewer = plugin_viewer()
    for name in ("t1c", "flair"):
        viewer.add_image(np.ones((3, 24, 24), np.float32), name=name)
    viewer.add_image(np.full((3, 24, 24), 2.0, np.float32), name="second flair")
    dock = open_plugin_dock(viewer, DOCK)
    dock.model_box.setCurrentText(str(model_path))
    dock.inputs.modality_boxes["flair"].setCurrentText("second flair")
    points = dock.ensure_keypoint_layer()
    viewer.dims.set_point(0, 1.0)
    points.add([1, 5, 5])
    dock.polarity.toggle()
    points.add([1, 20, 20])
    qtbot.waitUntil(lambda: dock.last_result is not None and dock.last_result.slices == [1], timeout=60_000)
    assert dock.inputs.modality_boxes["flair"].currentText() == "second flair"  # kept while result layers were added

    viewer.layers.remove(KEYPOINTS_LAYER)
    viewer.add_points(np.array([[1, 60, 60]]), name=KEYPOINTS_LAYER, ndim=3)  # a layer the user made
    assert dock.update_muting() is None
    assert "outside image" in dock.status.text() and "press Delete" in dock.status.text()


def test_keypoints_in_the_coronal_view_mute_their_axial_slices(plugin_viewer, open_plugin_dock, qtbot, model_path):
    viewer = plugin_viewer()
    _images(viewer)
    dock = open_plugin_dock(viewer, DOCK)
    dock.model_box.setCurrentText(str(model_path))
    points = dock.ensure_keypoint_layer()
    viewer.dims.order = (1, 0, 2)  # coronal: rows are z, columns x; the slider moves along y
    viewer.dims.set_point(1, 10)
    points.add([1, 10, 12])  # (z, y, x) of the volume, clicked on coronal plane y = 10
    dock.polarity.toggle()
    points.add([1, 10, 30])
    points.add([3, 10, 30])
    assert points.features["plane"].tolist() == [1, 1, 1]  # placed in the coronal plane
    qtbot.waitUntil(lambda: dock.last_result is not None and sorted(dock.last_result.selections) == [1, 3],
                    timeout=60_000)
    result = dock.last_result
    assert (result.selections[1].n_positive, result.selections[1].n_negative) == (1, 1)
    assert "slice 3" in dock.status.text() or "slice 1" in dock.status.text()
    points.selected_data = {2}
    points.remove_selected()  # slice 3 loses its keypoint: it returns to "before", slice 1 is not recomputed
    qtbot.waitUntil(lambda: sorted(dock.last_result.selections) == [1], timeout=60_000)
    assert dock.last_result.slices == [3]
    after, before = viewer.layers[AFTER_LAYER].data[3], viewer.layers[BEFORE_LAYER].data[3]
    assert np.all((after == before) | (after == 0))  # "before", less islands the 3D post-processing removes


def test_unusable_inputs_give_messages(plugin_viewer, open_plugin_dock, notifications, model_path):
    viewer = plugin_viewer()
    dock = open_plugin_dock(viewer, DOCK)
    dock.model_box.setCurrentText(str(model_path))
    assert dock.ensure_keypoint_layer() is None  # no image open: a message, no traceback
    notifications.take("Assign image layers")
    viewer.add_image(np.zeros((40, 50), np.float32), name="flair")  # a 2D picture assigned as FLAIR
    viewer.add_image(np.zeros((40, 50), np.float32), name="t1c")
    assert dock.ensure_keypoint_layer() is None
    notifications.take("2D data")
    assert dock.apply_to_volume() is None  # the same problem again: in the status, not a second toast
    assert "2D data" in dock.status.text() and not notifications.problems()
    assert KEYPOINTS_LAYER not in viewer.layers
