"""Segment Anything 3D objects dock, opened from the Plugins menu: a 3D box segments the object in its slab, a
click on a coronal slice changes the object along the coronal axis, scribbles and lassos correct it, Cancel
changes nothing, Undo per object, the list names each object with its volume in mL, and a copy into a Labels
layer is undoable."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _data import SAMPLE_CASE
from test_objects3d import BrightPredictor, _blob

from napari_medadapt._reader import medadapt_metadata
from napari_medadapt.core.volume import Geometry, load_volume
from napari_medadapt.widgets import objects3d as o3
from napari_medadapt.widgets import objects3d_prompts as op

pytestmark = pytest.mark.gui

DOCK = "Segment Anything 3D objects"


def _wait(qtbot, dock):
    """Wait until every job of the dock has ended."""
    qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)
    qtbot.wait(20)


def _open(plugin_viewer, open_plugin_dock, data, spacing, name="scan", predictor=None):
    viewer = plugin_viewer()
    geometry = Geometry.from_display_grid(data.shape, spacing, (0.0, 0.0, 0.0))
    image = viewer.add_image(data, name=name, scale=spacing, metadata=medadapt_metadata(geometry, "flair"),
                             contrast_limits=(float(data.min()), float(data.max())))
    dock = open_plugin_dock(viewer, DOCK)
    combo = dock.model_panel.model_combo
    combo.setCurrentIndex(combo.findData("sam-small"))
    if predictor is not None:  # a stand-in whose answers are known exactly (the object logic is the product's)
        dock.sam.use(dock.model_panel.choice, predictor)
    dock.window_combo.setCurrentText("layer contrast limits")
    return viewer, image, dock


def _draw_box(viewer, dock, axis_index, rect):
    shapes = dock.ensure_prompt_layers()
    z = axis_index
    r0, c0, r1, c1 = rect
    shapes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float))
    return shapes


def test_box_on_the_glioma_fills_its_slab_and_reports_millilitres(plugin_viewer, open_plugin_dock, qtbot):
    volume = load_volume(SAMPLE_CASE / "flair.nii.gz")
    crop = np.ascontiguousarray(volume.data[0][70:100, 33:133, 30:130])  # around the tumour
    viewer, image, dock = _open(plugin_viewer, open_plugin_dock, crop, volume.geometry.spacing, "flair")
    viewer.dims.set_point(0, 18 * image.scale[0])
    _draw_box(viewer, dock, 18, (30, 30, 75, 75))
    assert dock.box_panel.segment_button.isEnabled()
    dock.box_panel.first_spin.setValue(12)
    dock.box_panel.last_spin.setValue(24)
    _wait(qtbot, dock)  # the slab's embeddings started as soon as the rectangle existed
    dock.segment_box()
    _wait(qtbot, dock)
    objects = viewer.layers[o3.OBJECTS_LAYER]
    zs = np.flatnonzero((objects.data > 0).any(axis=(1, 2)))
    assert zs.size > 3 and zs.min() >= 12 and zs.max() <= 24  # the 3D object, inside its slab
    ((name, ml, steps),) = dock.objects_table.rows()
    expected = (objects.data == 1).sum() * np.prod(volume.geometry.spacing) / 1000
    assert name == "object 1" and float(ml) == pytest.approx(expected, abs=0.01) and steps == "1"
    assert "mL" in dock.status.text()
    assert objects.features["class"].tolist()[-1] == "object 1"
    assert len(viewer.layers[op.SHAPES_LAYER].data) == 0  # the box became the object


def test_clicks_scribbles_lasso_cancel_undo_and_copy(plugin_viewer, open_plugin_dock, qtbot, notifications):
    blob = _blob()
    data = (blob * 200 + 20).astype(np.uint8)
    viewer, image, dock = _open(plugin_viewer, open_plugin_dock, data, (2.0, 1.0, 1.0), predictor=BrightPredictor())
    points = dock.ensure_prompt_layers() and viewer.layers[op.CLICKS_LAYER]

    # a click with no object yet starts one (the stand-in answers clicks alone)
    viewer.dims.set_point(0, 12 * 2.0)
    points.add([12, 20, 14])
    _wait(qtbot, dock)
    first = viewer.layers[o3.OBJECTS_LAYER].data == 1
    assert first.any() and len(np.flatnonzero(first.any(axis=(1, 2)))) > 3  # the whole object, not one slice
    assert dock.objects_table.rows()[0][2] == "1"

    # a negative scribble on axial slice 12 cuts the object's rows >= 20 there and the change travels on
    scribbles = viewer.layers[op.SCRIBBLES_LAYER]
    stroke = np.zeros(data.shape, np.uint8)
    stroke[12, 20:30, 10:20] = 2
    scribbles.data = stroke
    scribbles.events.paint(value=[])  # the end of a brush stroke
    _wait(qtbot, dock)
    assert not scribbles.data.any()  # applied, then emptied
    after = viewer.layers[o3.OBJECTS_LAYER].data == 1
    assert after.sum() < first.sum() and dock.objects_table.rows()[0][2] == "2"

    # Undo gives the object back as it was before the scribble
    dock.objects_table.table.selectRow(0)
    dock.undo()
    _wait(qtbot, dock)
    np.testing.assert_array_equal(viewer.layers[o3.OBJECTS_LAYER].data == 1, first)

    # a click on a coronal slice is a coronal click (the change travels along y)
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 24)
    points.add([12, 24, 14])
    _wait(qtbot, dock)
    assert points.features["plane"].iloc[-1] == 1 and dock.objects_table.rows()[0][2] == "2"
    dock.undo()
    _wait(qtbot, dock)

    # a new object from a lasso on a sagittal slice; the objects never overlap
    dock.new_object()
    viewer.dims.order = (2, 0, 1)
    shapes = viewer.layers[op.SHAPES_LAYER]
    shapes.add_polygons(np.array([[2, 2, 14], [2, 38, 14], [22, 38, 14], [22, 2, 14]], float))  # on x = 14
    _wait(qtbot, dock)
    rows = dock.objects_table.rows()
    assert [r[0] for r in rows] == ["object 1", "object 2"] and float(rows[1][1]) > 0
    labels = viewer.layers[o3.OBJECTS_LAYER].data
    assert set(np.unique(labels)) == {0, 1, 2}

    # a cancelled click changes nothing (it waits behind another job, so Cancel comes before it runs)
    before = labels.copy()
    dock.objects_table.table.selectRow(0)
    viewer.dims.order = (0, 1, 2)
    gate = threading.Event()
    blocker = dock.worker.submit(lambda ctx: gate.wait(30), description="another dock's job")
    points.add([19, 20, 14])
    dock.cancel()
    gate.set()
    _wait(qtbot, dock)
    qtbot.waitUntil(lambda: blocker.done, timeout=10_000)
    np.testing.assert_array_equal(viewer.layers[o3.OBJECTS_LAYER].data, before)

    # rename, copy into a new Labels layer (undoable)
    dock.objects_table.table.item(0, 0).setText("tumour")
    _wait(qtbot, dock)
    assert dock.objects_table.rows()[0][0] == "tumour"
    dock.objects_table.table.selectRow(0)
    dock.commit_panel.label_spin.setValue(4)
    written = dock.commit()
    target = viewer.layers["SAM labels"]
    assert written == int((viewer.layers[o3.OBJECTS_LAYER].data == 1).sum()) > 0
    np.testing.assert_array_equal(target.data == 4, viewer.layers[o3.OBJECTS_LAYER].data == 1)
    draft = target.metadata["medadapt"]["provenance"]  # the model that made it, recorded for the writer
    assert draft["method"] == "segment-anything" and draft["settings"]["objects"][0]["label"] == 4
    target.undo()
    assert not target.data.any()


def test_what_a_new_user_gets_wrong(plugin_viewer, open_plugin_dock, qtbot, notifications, monkeypatch):
    blob = _blob()
    data = (blob * 200 + 20).astype(np.uint8)
    viewer, image, dock = _open(plugin_viewer, open_plugin_dock, data, (2.0, 1.0, 1.0), predictor=BrightPredictor())
    other = viewer.add_image(data[::-1].copy(), name="other", scale=(2.0, 1.0, 1.0))
    dock.image_combo.setCurrentText("scan")
    points = dock.ensure_prompt_layers() and viewer.layers[op.CLICKS_LAYER]

    # Undo and Segment box with nothing to act on: messages, nothing runs
    dock.undo()
    assert "Select the object to undo" in notifications.take("Select the object to undo")
    dock.segment_box()
    notifications.take("Draw a rectangle around the object first")

    # a click in the 3D view is refused with the fix
    viewer.dims.ndisplay = 3
    points.add([12, 20, 14])
    assert "2D view" in notifications.take("prompts need the 2D view")
    _wait(qtbot, dock)
    assert dock.objects_table.rows() == []
    viewer.dims.ndisplay = 2

    # one object; a blank name is refused and the old one kept
    viewer.dims.set_point(0, 12 * 2.0)
    points.add([12, 20, 15])
    _wait(qtbot, dock)
    dock.objects_table.table.item(0, 0).setText("  ")
    notifications.take("An object needs a name")
    assert dock.objects_table.rows()[0][0] == "object 1"

    # a positive click inside the object changes nothing and says so
    before = viewer.layers[o3.OBJECTS_LAYER].data.copy()
    points.add([12, 20, 14])
    _wait(qtbot, dock)
    assert "did not change" in dock.status.text()
    np.testing.assert_array_equal(viewer.layers[o3.OBJECTS_LAYER].data, before)

    # Remove asks first (No keeps it); a drawn lasso is removed once applied
    monkeypatch.setattr(o3, "confirm_remove", lambda parent, name: False)
    dock.objects_table.table.selectRow(0)
    dock.remove()
    assert "was kept" in dock.status.text() and len(dock.objects_table.rows()) == 1
    viewer.layers[op.SHAPES_LAYER].add_polygons(np.array([[12, 2, 2], [12, 2, 8], [12, 8, 8], [12, 8, 2]], float))
    _wait(qtbot, dock)
    qtbot.waitUntil(lambda: len(viewer.layers[op.SHAPES_LAYER].data) == 0, timeout=5_000)
    kept = viewer.layers[o3.OBJECTS_LAYER].data.copy()

    # choosing another image: its own (no) objects, no prompts of the first image left, the image shown
    other.visible = False
    dock.image_combo.setCurrentText("other")
    _wait(qtbot, dock)
    assert other.visible and dock.objects_table.rows() == []
    assert len(points.data) == 0 and not viewer.layers[o3.OBJECTS_LAYER].data.any()
    dock.image_combo.setCurrentText("scan")
    _wait(qtbot, dock)
    assert [r[0] for r in dock.objects_table.rows()] == ["object 1"]  # the first image's object comes back
    np.testing.assert_array_equal(viewer.layers[o3.OBJECTS_LAYER].data, kept)

    # closing the image frees its objects
    key = str(image.unique_id)
    assert dock.editor.snapshot(key).objects
    viewer.layers.remove(image)
    _wait(qtbot, dock)
    assert dock.editor.snapshot(key).objects == [] and dock.image_combo.currentText() == "other"


def test_queued_interactions_new_object_and_the_cancel_button(plugin_viewer, open_plugin_dock, qtbot, notifications):
    blob = _blob()
    data = (blob * 200 + 20).astype(np.uint8)
    data[:, 30:36, 30:36] = 220  # a second bright object
    viewer, image, dock = _open(plugin_viewer, open_plugin_dock, data, (2.0, 1.0, 1.0), predictor=BrightPredictor())
    points = dock.ensure_prompt_layers() and viewer.layers[op.CLICKS_LAYER]
    viewer.dims.set_point(0, 12 * 2.0)
    gate = threading.Event()
    blocker = dock.worker.submit(lambda ctx: gate.wait(30), description="another dock's job")
    points.add([12, 20, 14])  # a new object, queued behind the other job
    points.add([12, 21, 14])  # queued too: it goes to the same (not yet made) object
    dock.new_object()
    points.add([12, 32, 32])  # the user asked for a new object: this one starts it
    gate.set()
    _wait(qtbot, dock)
    rows = dock.objects_table.rows()
    assert [r[0] for r in rows] == ["object 1", "object 2"] and [r[2] for r in rows] == ["2", "1"]
    assert dock._active == 2 and dock.objects_table.selected == 2  # not taken back by the first job's result
    labels = viewer.layers[o3.OBJECTS_LAYER].data
    assert labels[12, 20, 14] == 1 and labels[12, 32, 32] == 2

    # the dock's Cancel button stops every queued interaction, not only the newest
    gate.clear()
    blocker = dock.worker.submit(lambda ctx: gate.wait(30), description="another dock's job")
    before = labels.copy()
    points.add([12, 2, 2])  # a positive click for object 2 on the background (it would grow its box), then one more
    points.add([5, 20, 14])
    dock.cancel_button.click()
    gate.set()
    _wait(qtbot, dock)
    qtbot.waitUntil(lambda: blocker.done, timeout=10_000)
    np.testing.assert_array_equal(viewer.layers[o3.OBJECTS_LAYER].data, before)
    assert [r[2] for r in dock.objects_table.rows()] == ["2", "1"]


def test_closing_the_viewer_with_interactions_queued(plugin_viewer, open_plugin_dock, qtbot):
    blob = _blob()
    data = (blob * 200 + 20).astype(np.uint8)
    viewer, image, dock = _open(plugin_viewer, open_plugin_dock, data, (2.0, 1.0, 1.0), predictor=BrightPredictor())
    points = dock.ensure_prompt_layers() and viewer.layers[op.CLICKS_LAYER]
    viewer.dims.set_point(0, 12 * 2.0)
    gate = threading.Event()
    dock.worker.submit(lambda ctx: gate.wait(30), description="another dock's job")
    points.add([12, 20, 14])
    viewer.close()  # the dock's jobs end cancelled while its widgets go: no callback may touch them
    gate.set()
    qtbot.wait(200)
