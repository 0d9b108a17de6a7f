"""What a user meets around the docks: all docks on a laptop screen, File > Open without a reader dialog,
upright coronal/sagittal views, class names on hover, each dock's own progress bar with Cancel, one model
load shared by every dock, saved labels that reopen as labels and never replace a scan."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtWidgets import QDockWidget

from napari_medadapt._worker import get_worker
from napari_medadapt.core.models import ModelCard, default_architecture
from napari_medadapt.widgets._dock import NIFTI_PATTERNS, PLUGIN_NAME, _camera

pytestmark = pytest.mark.gui
DOCKS = ("Segment volume", "Segment Anything", "Test-time adaptation", "TTS keypoint muting")
MODALITIES = ["t1", "t1c", "t2", "flair"]
CROP = (slice(72, 120), slice(64, 112), slice(96, 104))


@pytest.fixture(scope="module")
def case(tmp_path_factory, write_crops) -> Path:
    return write_crops(tmp_path_factory.mktemp("case"), [*MODALITIES, "seg_fusion"], CROP)


@pytest.fixture
def tiny_model(register_tiny_model) -> str:
    card = ModelCard(
        name="tinyview",
        architecture=default_architecture(2, 4, 4, filters=(4, 8, 16)),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=["background", "necrosis", "edema", "enhancing"],
        regions={"whole tumour (WT)": [1, 2, 4]},
    )
    register_tiny_model(card)
    return card.name


def test_all_docks_fit_a_laptop_screen(plugin_viewer, open_plugin_dock, case, qtbot):
    viewer = plugin_viewer(case)
    docks = [open_plugin_dock(viewer, name) for name in DOCKS]  # stacked, as the Plugins menu adds them
    window = docks[0].window()
    window.show()
    window.resize(1366, 768)
    frames = [dock.parentWidget() for dock in docks]
    while not isinstance(frames[0], QDockWidget):
        frames = [frame.parentWidget() for frame in frames]
    qtbot.waitUntil(lambda: all(len(window.tabifiedDockWidgets(f)) == 3 for f in frames), timeout=5000)
    qtbot.waitUntil(lambda: docks[-1].height() > 500)  # one group of tabs; the dock opened last in front
    assert window.minimumSizeHint().height() <= 768 and window.height() <= 768
    for dock in docks:
        # however short a dock is, its content keeps its natural size and scrolls: nothing is squashed
        assert dock.widgetResizable() and dock.body.minimumSizeHint().height() > 0
    assert docks[-1].body.height() >= docks[-1].body.minimumSizeHint().height()


def test_file_open_uses_the_plugin_without_asking(plugin_viewer, open_plugin_dock, notifications, case):
    from napari.settings import get_settings

    viewer = plugin_viewer()
    plugins = get_settings().plugins
    plugins.extension2reader = {"*.nii": "some-other-reader"}  # a choice the user made stays
    open_plugin_dock(viewer, "Segment volume")
    assert plugins.extension2reader == {"*.nii": "some-other-reader", "*.nii.gz": PLUGIN_NAME}
    assert any("open with MedAdapt" in text for text in notifications.messages("info"))
    (flair,) = viewer.open(str(case / "flair.nii.gz"), plugin=None)  # what File > Open does
    assert flair.metadata["medadapt"]["modality"] == "flair"
    assert set(NIFTI_PATTERNS) == {"*.nii", "*.nii.gz"}


def test_coronal_and_sagittal_views_are_upright_and_centred(plugin_viewer, open_plugin_dock, case):
    from napari_medadapt.core.sam import PropagationResult
    from napari_medadapt.widgets.sam_results import STOP_REASONS

    viewer = plugin_viewer(case)
    sam = open_plugin_dock(viewer, "Segment Anything")
    assert sam.image_combo.currentText() == "flair"  # not t1, the first layer: a glioma shows on FLAIR
    reasons = {"empty", "iou", "area", "intensity", "stop-slice", "range", "edge"}  # every stop is explained
    assert all(f'"{r}"' in PropagationResult.__doc__ for r in reasons) and reasons <= set(STOP_REASONS)
    viewer.scene.camera.center = (0.0, 1000.0, 1000.0)  # looking somewhere else
    viewer.dims.order = (1, 0, 2)  # coronal: rows are the head's inferior-superior axis
    assert tuple(str(v) for v in viewer.scene.camera.orientation2d) == ("up", "right")
    shape = viewer.layers["flair"].data.shape
    low, high = viewer.layers["flair"].extent.world
    assert low[0] <= viewer.scene.camera.center[-2] <= high[0]  # re-centred on the volume
    viewer.dims.order = (2, 0, 1)  # sagittal
    assert tuple(str(v) for v in viewer.scene.camera.orientation2d) == ("up", "right")
    viewer.dims.order = (0, 1, 2)  # axial again: anterior at the top, as napari shows it
    assert tuple(str(v) for v in viewer.scene.camera.orientation2d) == ("down", "right")
    assert shape == viewer.layers["flair"].data.shape


def test_segment_names_classes_and_shares_the_model_with_tta(plugin_viewer, open_plugin_dock, case, tiny_model, qtbot):
    viewer = plugin_viewer(case)
    segment = open_plugin_dock(viewer, "Segment volume")
    segment.model_combo.setCurrentIndex(segment.model_combo.findText(tiny_model))
    segment.run()
    qtbot.waitUntil(lambda: segment.handle is None, timeout=60_000)
    labels = viewer.layers[f"{tiny_model} labels"]
    value = next(v for v in (2, 1, 4) if (labels.data == v).any())
    voxel = np.argwhere(labels.data == value)[0]
    status = labels.get_status(tuple(voxel), world=False)
    name = {1: "necrosis", 2: "edema", 4: "enhancing"}[int(value)]
    assert f"class: {name}" in status["coordinates"]
    table = segment.volume_table
    assert not table.item(0, 0).icon().isNull()  # a colour swatch as in the labels layer
    assert table.item(table.rowCount() - 1, 1).text() == "whole tumour (WT)"
    total = sum(ml for _label, _name, ml in segment.last_prediction.volume_rows())
    assert float(table.item(table.rowCount() - 1, 2).text()) == pytest.approx(total, abs=0.02)

    tta = open_plugin_dock(viewer, "Test-time adaptation")
    tta.model_combo.setCurrentIndex(tta.model_combo.findText(tiny_model))
    tta.iterations_spin.setValue(1)
    tta.adapt()
    with qtbot.waitSignal(tta.handle.finished, timeout=120_000):
        pass
    session = get_worker(viewer).session
    assert session.loads == 1 and session.hits == 1  # one model load, the source result reused
    np.testing.assert_array_equal(viewer.layers[f"{tiny_model} before TTA"].data, labels.data)

    # the adapted model is a model of every dock now
    variant = tta.last_outcome.variant
    assert segment.model_combo.findText(variant) >= 0
    tts = open_plugin_dock(viewer, "TTS keypoint muting")
    assert tts.model_box.findText(variant) >= 0
    segment.model_combo.setCurrentIndex(segment.model_combo.findText(variant))
    segment.run()
    qtbot.waitUntil(lambda: segment.handle is None, timeout=60_000)
    adapted = viewer.layers[f"{variant} labels"]
    np.testing.assert_array_equal(adapted.data, viewer.layers[f"{tiny_model} after TTA (bn_affine)"].data)
    assert session.loads == 1 and session.hits == 2  # the adapted model's result, reused as well


def test_every_dock_shares_one_load_of_the_bundled_model(plugin_viewer, open_plugin_dock, case, qtbot):
    viewer = plugin_viewer(case)
    segment, tta, tts = (open_plugin_dock(viewer, name) for name in ("Segment volume", "Test-time adaptation", "TTS keypoint muting"))
    assert {dock.inputs.card.name for dock in (segment, tta, tts)} == {"glioma2d"}
    segment.run()
    qtbot.waitUntil(lambda: segment.handle is None, timeout=120_000)
    tta.measure()
    with qtbot.waitSignal(tta.handle.finished, timeout=120_000):
        pass
    points = tts.ensure_keypoint_layer()
    viewer.dims.set_point(0, 4 * viewer.layers["flair"].scale[0])
    points.add([4, 24, 24])
    qtbot.waitUntil(lambda: tts.last_result is not None, timeout=120_000)
    session = get_worker(viewer).session
    assert session.loads == 1  # glioma2d read once for three docks
    assert session.hits == 1  # TTS's "before" is the Segment dock's result


def test_a_docks_progress_bar_estimates_and_cancels(plugin_viewer, open_plugin_dock, qtbot):
    viewer = plugin_viewer()
    dock = open_plugin_dock(viewer, "Segment volume")

    def slow(*, ctx):
        for step in range(40):
            ctx.progress(step, 40, f"step {step}")
            time.sleep(0.1)

    handle = dock.job_panel.track(get_worker(viewer, dock).submit(slow, description="slow job"))
    qtbot.waitUntil(lambda: not dock.job_panel.isHidden() and "left" in dock.job_panel.label.text(), timeout=10_000)
    assert dock.job_panel.bar.maximum() == 40 and "elapsed" in dock.job_panel.label.text()
    dock.job_panel.cancel_button.click()
    with qtbot.waitSignal(handle.finished, timeout=10_000):
        pass
    assert handle.cancelled and dock.job_panel.isHidden()


def test_saved_labels_reopen_as_labels_and_never_replace_a_scan(plugin_viewer, notifications, case, tmp_path):
    viewer = plugin_viewer(case)
    reference = viewer.layers["seg_fusion"]
    classes = {"index": [0, 1, 2, 4], "class": ["background", "necrosis", "edema", "enhancing"]}
    manual = viewer.add_labels(np.array(reference.data), name="manual", features=classes)
    manual.metadata = dict(reference.metadata)
    out = tmp_path / "manual.nii.gz"
    manual.save(str(out), plugin=PLUGIN_NAME)
    (reopened,) = viewer.open(str(out), plugin=PLUGIN_NAME)
    assert type(reopened).__name__ == "Labels"
    assert reopened.features["class"].tolist() == classes["class"]
    flair = case / "flair.nii.gz"
    before = flair.read_bytes()
    with pytest.raises(Exception, match="also an input"):
        manual.save(str(flair), plugin=PLUGIN_NAME)
    assert flair.read_bytes() == before and np.asarray(nib.load(str(flair)).dataobj).dtype != np.uint8


def test_opening_a_dock_refits_the_view(plugin_viewer, open_plugin_dock, qtbot):
    from _data import SAMPLE_CASE

    viewer = plugin_viewer()
    viewer.open(str(SAMPLE_CASE / "flair.nii.gz"), plugin=PLUGIN_NAME)
    window = viewer.window._qt_window
    window.show()
    window.resize(1100, 1000)  # a canvas whose width limits the view once a dock takes its share
    qtbot.wait(100)
    viewer.reset_view()  # the whole scan on the canvas without docks
    extent = np.ptp(np.asarray(viewer.layers.extent.world)[:, -2:], axis=0)

    def whole_scan_visible() -> bool:
        canvas = np.asarray(viewer.canvas.size, dtype=float)
        return bool(np.all(canvas / _camera(viewer).zoom >= extent * 0.99))

    assert whole_scan_visible()
    width = viewer.canvas.size[1]
    open_plugin_dock(viewer, "Segment Anything")  # a wide dock narrows the canvas
    qtbot.waitUntil(lambda: viewer.canvas.size[1] < 0.8 * width, timeout=5000)
    qtbot.waitUntil(whole_scan_visible, timeout=5000)
