"""SAM dock: prompts on the displayed slice (axial and coronal), refinement, candidates, box, commit/undo,
clear, propagation with a stop slice, precompute/resume, and clear messages for unusable inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _data import SAMPLE_CASE

from napari_medadapt._reader import medadapt_metadata
from napari_medadapt.core.provenance import read_provenance
from napari_medadapt.core.sam import MaskPrediction, PromptableModel, SamPredictor, make_prompts
from napari_medadapt.core.sam.small_model import SMALL_WEIGHTS
from napari_medadapt.core.volume import Geometry, load_volume
from napari_medadapt.widgets import sam_prompts as sp

pytestmark = pytest.mark.gui

DATA = SAMPLE_CASE
CROP = (slice(78, 94), slice(33, 133), slice(30, 130))  # around the tumour; slice 10 = display z 88


@pytest.fixture(scope="module")
def flair():
    volume = load_volume(DATA / "flair.nii.gz")
    crop = np.ascontiguousarray(volume.data[0][CROP])
    geometry = Geometry.from_display_grid(crop.shape, volume.geometry.spacing, (0.0, 0.0, 0.0))
    return crop, geometry


@pytest.fixture(scope="module")
def untrained_model():
    """``None`` when the bundled sam-small weights are in the checkout (the docks load them as users do);
    otherwise a randomly initialised model of that architecture, which the docks are given instead."""
    if SMALL_WEIGHTS.is_file():
        return None
    import torch

    from napari_medadapt.core.sam.small_model import build_small_sam

    torch.manual_seed(0)
    return PromptableModel(build_small_sam(), "sam-small", "untrained-test-model", dense_prompts=True)


@pytest.fixture(scope="module")
def predictor(untrained_model):
    return SamPredictor(untrained_model or "sam-small", device="cpu")


@pytest.fixture
def make_dock(untrained_model, open_plugin_dock):
    def make(viewer):
        dock = open_plugin_dock(viewer, "Segment Anything")
        # these tests drive clicks, candidates and propagation modes: the small model (the default, LiteMedSAM,
        # is box-first; see test_litemedsam_widget.py)
        combo = dock.model_panel.model_combo
        combo.setCurrentIndex(combo.findData("sam-small"))
        if untrained_model is not None:
            dock.workspace.use(dock.model_choice, SamPredictor(untrained_model))
        return dock

    return make


def _add_flair(viewer, flair):
    crop, geometry = flair
    return viewer.add_image(
        crop, name="flair", scale=geometry.spacing, metadata=medadapt_metadata(geometry, "flair"),
        contrast_limits=(float(np.percentile(crop, 0.5)), float(np.percentile(crop, 99.5))),
    )


def _wait(qtbot, handle):
    assert handle is not None
    if not handle.done:
        with qtbot.waitSignal(handle.finished, timeout=60_000):
            pass
    assert handle.state.value == "done", handle.error


def _settle(qtbot, dock):
    """Let the dock react to layer events (its 20 ms timer) and wait for the job it submits."""
    qtbot.wait(40)
    _wait(qtbot, dock.update_preview() or dock._predict_handle)


def test_points_box_candidates_commit_undo_clear(plugin_viewer, qtbot, make_dock, flair, predictor, tmp_path):
    viewer = plugin_viewer()
    image = _add_flair(viewer, flair)
    dock = make_dock(viewer)
    assert dock.image_combo.currentText() == "flair" and dock.model_choice.name == "sam-small"
    points, boxes = dock.ensure_prompt_layers()
    viewer.dims.set_point(0, 10 * image.scale[0])

    points.add([10, 50, 50])
    _settle(qtbot, dock)
    preview = viewer.layers[sp.PREVIEW_LAYER]
    window = tuple(float(v) for v in image.contrast_limits)
    expected = predictor.predict(flair[0][10], window, points=[[50, 50]])
    assert preview.data[10].any()
    assert not np.delete(preview.data, 10, axis=0).any()  # that slice only
    np.testing.assert_array_equal(preview.data[10] > 0, expected.mask)
    # an ambiguous single click: three candidates with their predicted IoU; choosing one shows it
    assert dock.candidate_combo.isEnabled() and dock.candidate_combo.count() == 3
    other = (expected.best + 1) % 3
    dock.choose_candidate(other)
    np.testing.assert_array_equal(preview.data[10] > 0, expected.masks[other])
    dock.choose_candidate(expected.best)

    # commit: a new Labels layer on the image's grid, one undo step
    dock.commit_panel.label_spin.setValue(3)
    active = viewer.layers.selection.active
    written = dock.commit()
    labels = viewer.layers["SAM labels"]
    assert viewer.layers.selection.active is active  # the new labels layer does not take the prompt tool away
    assert written == int((preview.data > 0).sum()) > 0
    np.testing.assert_array_equal(labels.data == 3, preview.data > 0)
    assert labels.metadata["medadapt"]["geometry"].matches(flair[1])
    labels.undo()
    assert not labels.data.any()
    # only background: existing labels are kept
    r, c = np.argwhere(preview.data[10])[0]
    labels.data[10, r, c] = 7
    dock.commit_panel.target_combo.setCurrentText("SAM labels")
    dock.commit_panel.background_check.setChecked(True)
    dock.commit()
    assert labels.data[10, r, c] == 7 and np.count_nonzero(labels.data == 3) == written - 1
    draft = labels.metadata["medadapt"]["provenance"]  # saved from napari, the layer carries its record
    assert draft["method"] == "segment-anything" and [o["label"] for o in draft["settings"]["objects"]] == [3, 3]
    saved = tmp_path / "sam.nii.gz"
    labels.save(str(saved), plugin="napari-medadapt")
    record = read_provenance(saved)
    assert record["method"] == "segment-anything" and record["model"]["name"] == dock.model_choice.name
    assert record["settings"]["objects"][0]["axial_planes"]

    # 'T' on the points layer toggles the next point's polarity; a negative click refines the mask
    toggle = next(binding for key, binding in points.keymap.items() if str(key) == "T")
    toggle(points)
    assert dock.polarity.negative_radio.isChecked()
    before = preview.data[10].copy()
    points.add([10, int(np.argwhere(before)[0][0]), int(np.argwhere(before)[0][1])])
    _settle(qtbot, dock)
    assert points.features["positive"].tolist() == [True, False]
    assert [s.value for s in points.symbol] == ["disc", "x"]
    refined = predictor.predict(
        flair[0][10], window, points=[[50, 50], points.data[1, 1:]], labels=[1, 0],
        mask_input=expected.feedback,
    )
    np.testing.assert_array_equal(preview.data[10] > 0, refined.mask)
    assert not np.array_equal(preview.data[10], before)

    # a box on another slice
    viewer.dims.set_point(0, 12 * image.scale[0])
    boxes.add_rectangles(np.array([[12, 30, 30], [12, 30, 70], [12, 70, 70], [12, 70, 30]], float))
    _settle(qtbot, dock)
    boxed = predictor.predict(flair[0][12], window, box=(30, 30, 70, 70))
    np.testing.assert_array_equal(preview.data[12] > 0, boxed.mask)
    assert preview.data[12].any()
    assert dock.results.predictions[(0, 12)].masks.shape[0] == 1  # a box is not ambiguous: one mask

    # propagation with the real model: between the annotated slices 10 and 12, and 2 slices beyond them
    dock.propagation_panel.range_spin.setValue(2)
    _wait(qtbot, dock.propagate())
    result = dock.results.last_propagation
    assert set(result.slices) <= set(range(8, 15)) and {10, 12} <= set(result.slices)
    assert {s.source for s in result.stats if s.index in (10, 12)} == {"seed"}
    assert [s.source for s in result.stats if s.index == 11] == ["interpolated"]
    np.testing.assert_array_equal(preview.data > 0, result.mask)

    dock.clear()
    assert len(points.data) == 0 and len(boxes.data) == 0 and not preview.data.any()
    assert not dock.candidate_combo.isEnabled()
    assert labels.data[10, r, c] == 7  # committed labels stay


def test_coronal_plane_prompts_map_to_the_coronal_slice(
    plugin_viewer, notifications, qtbot, make_dock, flair, predictor
):
    viewer = plugin_viewer()
    image = _add_flair(viewer, flair)
    dock = make_dock(viewer)
    viewer.dims.order = (1, 0, 2)  # coronal: rows = z, cols = x; slider on y
    viewer.dims.set_point(1, 40 * image.scale[1])
    points, _boxes = dock.ensure_prompt_layers()
    points.add([9, 40, 45])
    _settle(qtbot, dock)
    assert points.features["plane"].tolist() == [1]
    preview = viewer.layers[sp.PREVIEW_LAYER].data
    window = tuple(float(v) for v in image.contrast_limits)
    expected = predictor.predict(flair[0][:, 40, :], window, points=[[9, 45]])
    np.testing.assert_array_equal(preview[:, 40, :] > 0, expected.mask)
    assert expected.mask.any() and not np.delete(preview, 40, axis=1).any()
    # back to axial: the coronal point is not a prompt of the axial slice through it
    viewer.dims.order = (0, 1, 2)
    viewer.dims.set_point(0, 9 * image.scale[0])
    assert dock.update_preview() is None
    viewer.dims.ndisplay = 3
    points.add([9, 20, 20])
    assert dock.update_preview() is None and "2D view" in dock.status.text()
    notifications.take("2D view")


class BrightPredictor:
    """Test double of ``SamPredictor`` (to test the dock's propagation wiring without relying on a model's
    quality): the bright voxels inside the box, or connected to the positive clicks."""

    model = SimpleNamespace(fallback_reason=None, weights_hash="stand-in")

    def is_cached(self, image, window) -> bool:
        return True  # it has no embeddings to compute, so propagation never prefetches

    def embedding(self, image, window) -> None:
        """Nothing to embed; the dock calls this to prepare the displayed slice ahead of the first click."""

    def predict(self, image, window, prompts=None, *, points=None, labels=None, box=None, mask_input=None,
                multimask=None):
        from scipy import ndimage

        if prompts is None:
            prompts = make_prompts(points, labels, box, mask_input, shape=image.shape)
        bright = image > (window[0] + window[1]) / 2
        if prompts.box is not None:
            r0, c0, r1, c1 = (int(v) for v in prompts.box)
            mask = np.zeros_like(bright)
            mask[r0 : r1 + 1, c0 : c1 + 1] = bright[r0 : r1 + 1, c0 : c1 + 1]
        else:
            regions, _ = ndimage.label(bright)
            positive = prompts.points[prompts.labels == 1].astype(int)
            mask = np.isin(regions, [regions[r, c] for r, c in positive if regions[r, c]])
        return MaskPrediction(mask, mask[None], np.array([0.9]), 0, np.zeros((1, 16, 16), np.float32))


def _sphere_volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:24, :64, :64]
    ball = (z - 12) ** 2 / 36 + (y - 32) ** 2 / 144 + (x - 32) ** 2 / 144 <= 1.0
    return (np.where(ball, 600.0, 100.0) + rng.normal(0, 10, ball.shape)).astype(np.float32)


def test_precompute_resumes_and_propagation_fills_neighbours_and_stops(plugin_viewer, qtbot, make_dock):
    volume = _sphere_volume()
    viewer = plugin_viewer()
    viewer.add_image(volume, name="sphere", contrast_limits=(0.0, 800.0))
    dock = make_dock(viewer)
    _wait(qtbot, dock.precompute())
    assert "24 computed, 0 already cached" in dock.status.text()
    _wait(qtbot, dock.precompute())  # resumes: nothing left to embed
    assert "0 computed, 24 already cached" in dock.status.text()

    dock.workspace.use(dock.model_choice, BrightPredictor())
    dock.propagation_panel.mode_combo.setCurrentText("box")
    points, boxes = dock.ensure_prompt_layers()
    viewer.dims.set_point(0, 12)
    boxes.add_rectangles(np.array([[12, 16, 16], [12, 16, 48], [12, 48, 48], [12, 48, 16]], float))
    _settle(qtbot, dock)
    preview = viewer.layers[sp.PREVIEW_LAYER]
    assert preview.data[12].any() and not np.delete(preview.data, 12, axis=0).any()
    # a negative-only click on slice 15 marks where the object must stop going up
    dock.polarity.toggle()
    viewer.dims.set_point(0, 15)
    points.add([15, 32, 32])
    _settle(qtbot, dock)
    assert not preview.data[15].any()
    dock.propagation_panel.range_spin.setValue(4)
    _wait(qtbot, dock.propagate())
    result = dock.results.last_propagation
    assert result.stopped == {"down": "range", "up": "stop-slice"}
    assert result.slices == list(range(8, 15))
    np.testing.assert_array_equal(preview.data > 0, result.mask)
    assert dock.results.table.rowCount() == len(result.stats) == 7

    # without the stop mark and the range, it stops where the ball ends
    points.data = np.zeros((0, 3))
    _settle(qtbot, dock)
    dock.propagation_panel.range_spin.setValue(0)
    _wait(qtbot, dock.propagate())
    result = dock.results.last_propagation
    assert set(result.stopped.values()) <= {"empty", "iou", "area"}
    filled = [z for z in range(24) if preview.data[z].any()]
    assert filled == result.slices and 6 <= filled[0] < 10 and 14 < filled[-1] <= 18


@pytest.mark.parametrize(
    ("data", "kwargs", "words"),
    [
        (np.zeros((40, 50), np.float32), {}, "2D data"),
        (np.zeros((40, 50, 3), np.uint8), {"rgb": True}, "RGB"),
        (np.zeros((2, 6, 40, 50), np.float32), {}, "4D data"),
    ],
)
def test_unusable_images_give_a_message_and_change_nothing(
    plugin_viewer, notifications, qtbot, make_dock, data, kwargs, words
):
    viewer = plugin_viewer()
    viewer.add_image(data, name="picture", **kwargs)
    dock = make_dock(viewer)
    names = [layer.name for layer in viewer.layers]
    assert dock.ensure_prompt_layers() is None
    assert dock.precompute() is None and dock.propagate() is None
    assert words in dock.status.text()
    assert [layer.name for layer in viewer.layers] == names
    notifications.take(words)  # shown once, not again for each button
    assert not notifications.problems()


def test_points_outside_or_from_another_grid(plugin_viewer, notifications, qtbot, make_dock, flair):
    viewer = plugin_viewer()
    image = _add_flair(viewer, flair)
    dock = make_dock(viewer)
    points, boxes = dock.ensure_prompt_layers()
    viewer.dims.set_point(0, 10 * image.scale[0])
    points.add([10, 50, 50])
    _settle(qtbot, dock)
    preview = viewer.layers[sp.PREVIEW_LAYER].data.copy()
    shown = dock.status.text()
    boxes.add_rectangles(np.array([[10, 20, 20]] * 4, float))  # what a box is at the press of the mouse
    qtbot.wait(40)
    assert dock.update_preview() is None and dock.status.text() == shown
    points.add([10, 50, 180])  # beyond the 100 columns
    qtbot.wait(40)
    assert dock.update_preview() is None
    assert "outside image 'flair'" in dock.status.text()
    notifications.take("outside image 'flair'")
    np.testing.assert_array_equal(viewer.layers[sp.PREVIEW_LAYER].data, preview)

    small = viewer.add_image(np.ones((8, 30, 30), np.float32), name="other")
    dock.image_combo.setCurrentText(small.name)
    assert dock.update_preview() is None
    assert "another volume" in dock.status.text()
    notifications.take("another volume")
    dock.clear()  # starts over on the chosen image's grid
    assert points.metadata["medadapt"]["shape"] == (8, 30, 30)


def test_click_interrupts_precompute_which_resumes(plugin_viewer, qtbot, make_dock):
    viewer = plugin_viewer()
    viewer.add_image(_sphere_volume(), name="sphere", contrast_limits=(0.0, 800.0))
    dock = make_dock(viewer)
    points, _boxes = dock.ensure_prompt_layers()
    viewer.dims.set_point(0, 12)
    precompute = dock.precompute()
    points.add([12, 32, 32])
    _settle(qtbot, dock)
    assert precompute.superseded  # the click went first ...
    assert viewer.layers[sp.PREVIEW_LAYER].data[12].any()
    qtbot.waitUntil(lambda: "Embeddings ready" in dock.status.text(), timeout=60_000)  # ... then it resumed
    stats = dock._long_handle.result.value
    assert stats.computed + stats.cached == 24 and stats.cached >= 1


def test_missing_checkpoint_and_gpu_fallback_messages(
    plugin_viewer, notifications, qtbot, make_dock, monkeypatch, tmp_path
):
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path))
    viewer = plugin_viewer()
    viewer.add_image(_sphere_volume(), name="sphere", contrast_limits=(0.0, 800.0))
    dock = make_dock(viewer)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData("medsam-vit-b"))
    assert "put the file in place first" in dock.model_combo.currentText()
    points, _boxes = dock.ensure_prompt_layers()
    viewer.dims.set_point(0, 12)
    points.add([12, 32, 32])
    qtbot.wait(40)
    handle = dock.update_preview() or dock._predict_handle
    with qtbot.waitSignal(handle.finished, timeout=60_000):
        pass
    assert handle.state.value == "failed"
    assert "medsam_vit_b.pth" in dock.status.text() and str(tmp_path) in dock.status.text()
    notifications.take("medsam_vit_b.pth")  # once, although preparing the model and the click both met it
    assert not notifications.problems()
    assert sp.PREVIEW_LAYER not in viewer.layers or not viewer.layers[sp.PREVIEW_LAYER].data.any()

    fallback = BrightPredictor()
    fallback.model = SimpleNamespace(fallback_reason="The GPU ran out of memory; continuing on the CPU.", weights_hash="stand-in")
    dock.workspace.use(dock.model_choice, fallback)
    points.add([12, 30, 30])
    _settle(qtbot, dock)
    notifications.take("The GPU ran out of memory; continuing on the CPU.", "warning")
    assert viewer.layers[sp.PREVIEW_LAYER].data[12].any()


def test_neighbours_are_embedded_after_a_pause_in_the_scroll_direction(plugin_viewer, qtbot, make_dock, flair):
    """After the user pauses on a slice, its neighbours (the scroll direction first) are embedded in the background,
    so prompting on the next slice costs only the decoder; a prompt stops the prefetch."""
    from napari_medadapt.core.sam import slice_key

    viewer = plugin_viewer()
    image = _add_flair(viewer, flair)
    dock = make_dock(viewer)
    points, _boxes = dock.ensure_prompt_layers()
    _wait(qtbot, dock._embed_displayed_slice())  # the model is loaded, the displayed slice embedded
    viewer.dims.set_point(0, 10 * image.scale[0])
    viewer.dims.set_point(0, 11 * image.scale[0])  # scrolling towards higher slices
    assert dock.prefetch.direction == 1 and dock.prefetch.timer.isActive()
    qtbot.waitUntil(lambda: dock.prefetch.handle is not None, timeout=5_000)  # after the pause
    _wait(qtbot, dock.prefetch.handle)
    crop = flair[0]
    predictor = dock.workspace._predictor
    window = dock.workspace.window(crop, dock._window_spec(image))
    keys = {i: slice_key(crop[i], window, predictor.model.model_hash) for i in range(crop.shape[0])}
    assert all(keys[i] in predictor.cache for i in (10, 11, 12, 13))  # 12 and 13 ahead, 10 behind
    assert keys[14] not in predictor.cache and keys[9] not in predictor.cache

    # a prompt goes first: a waiting prefetch is dropped quietly (no notification), the mask comes back
    import threading

    from napari_medadapt._worker import get_worker

    release = threading.Event()
    blocker = get_worker(viewer, dock).submit(lambda ctx: release.wait(30), description="hold the worker")
    viewer.dims.set_point(0, 3 * image.scale[0])
    viewer.dims.set_point(0, 2 * image.scale[0])  # now scrolling down: 1 and 0 ahead, 3 behind
    qtbot.waitUntil(lambda: dock.prefetch.handle is not None and dock.prefetch.handle.state.value == "queued",
                    timeout=5_000)
    prefetch = dock.prefetch.handle
    points.add([2, 50, 50])
    qtbot.wait(40)
    predict = dock.update_preview() or dock._predict_handle
    release.set()
    _wait(qtbot, blocker)
    _wait(qtbot, predict)
    assert prefetch.superseded and viewer.layers[sp.PREVIEW_LAYER].data[2].any()
    assert keys[1] not in predictor.cache and keys[0] not in predictor.cache
