"""Prepare scans dock opened from the Plugins menu: the raw case as exported (each sequence on its own grid)
prepared into brain-only layers on the FLAIR grid, the Segment dock warning before and using them after; bad
choices give messages."""

from __future__ import annotations

import numpy as np
import pytest
from _data import REAL_DATA, needs_real_data

from napari_medadapt.widgets.preprocess import MASK_LAYER

pytestmark = pytest.mark.gui
DOCK = "Prepare scans"


def _wait(qtbot, handle, timeout=120_000):
    assert handle is not None
    with qtbot.waitSignal(handle.finished, timeout=timeout):
        pass
    assert handle.state.value == "done", handle.error


def test_bad_choices_give_messages(plugin_viewer, open_plugin_dock, notifications):
    viewer = plugin_viewer()
    dock = open_plugin_dock(viewer, DOCK)
    assert dock.run() is None
    notifications.take("Tick the sequences")
    volume = np.zeros((8, 32, 32), np.float32)
    viewer.add_image(volume, name="flair")
    viewer.add_image(volume, name="flair second")  # two FLAIRs of one patient
    assert dock.sequence_list.count() == 2 and dock.reference_combo.currentText() == "flair"
    assert dock.run() is None
    notifications.take("Two ticked layers are flair")
    dock.sequence_list.item(0).setCheckState(dock.sequence_list.item(0).checkState().Unchecked)
    assert dock.run() is None
    notifications.take("Tick the reference sequence 'flair' too")
    viewer.add_image(np.zeros((32, 32), np.float32), name="t1")  # a 2D picture
    dock.sequence_list.item(2).setCheckState(dock.sequence_list.item(0).checkState().Checked)
    assert dock.run() is None
    notifications.take("2D data")


@needs_real_data
@pytest.mark.slow
def test_raw_export_is_prepared_and_segmented(plugin_viewer, open_plugin_dock, notifications, qtbot, tmp_path):
    viewer = plugin_viewer()
    viewer.open(str(REAL_DATA / "glioma_tcga_fg6692_raw"), plugin="napari-medadapt")
    notifications.take("not on one grid", "warning")
    assert {layer.name for layer in viewer.layers} == {"flair", "t1", "t1c", "t2"}
    segment = open_plugin_dock(viewer, "Segment volume")
    assert not segment.inputs.input_warning.isHidden()  # said before anything runs
    assert "not skull-stripped" in segment.inputs.input_warning.text()

    dock = open_plugin_dock(viewer, DOCK)
    assert dock.reference_combo.currentText() == "flair" and dock.sequence_list.count() == 4
    _wait(qtbot, dock.run())
    prepared = dock.last_result
    assert prepared.reference == "flair" and len(prepared.registrations) == 3
    for name in ("flair", "t1", "t1c", "t2"):
        layer = viewer.layers[f"{name} prepared"]
        assert layer.data.shape == viewer.layers["flair"].data.shape
        assert not viewer.layers[name].visible  # the originals are hidden, never changed
    assert viewer.layers[MASK_LAYER].data.any()
    assert dock.report_list.count() >= 5 and "head overlap" in dock.report_list.item(0).text()
    assert "Brain extracted on t1" in dock.status.text()

    raw_folder = REAL_DATA / "glioma_tcga_fg6692_raw"
    assert dock.save_to(str(raw_folder)) == []  # would write flair.nii.gz over the scan it came from
    notifications.take("flair.nii.gz")
    written = dock.save_to(str(tmp_path))
    assert [p.name for p in written] == ["flair.nii.gz", "t1.nii.gz", "t1c.nii.gz", "t2.nii.gz", "brain_mask.nii.gz",
                                         "preprocess.json"]  # fmt: skip

    qtbot.waitUntil(lambda: segment.inputs.input_mapping()["flair"] == "flair prepared")
    assert segment.inputs.input_warning.isHidden()  # the prepared layers are brain-only
    segment.run()
    qtbot.waitUntil(lambda: segment.handle is None, timeout=120_000)
    labels = viewer.layers[f"{segment.card.name} labels"]
    assert labels.data.shape == viewer.layers["flair"].data.shape and labels.data.any()
    assert not np.any(labels.data[~viewer.layers[MASK_LAYER].data.astype(bool)])  # nothing outside the brain
