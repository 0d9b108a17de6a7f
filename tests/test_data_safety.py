"""What a new user must never lose or get wrong, through the docks as opened from the Plugins menu: a scan replaced
by the writer, a result taken as a model input, a result of a closed image, results stacking up, a reference
written into without asking."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medadapt.core.models import ModelCard, default_architecture

MODALITIES = ["t1", "t1c", "flair"]
CROP = (slice(72, 120), slice(64, 112), slice(90, 114))


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory, write_crops) -> Path:
    return write_crops(tmp_path_factory.mktemp("case"), [*MODALITIES, "seg_fusion"], CROP)


@pytest.fixture
def model(register_tiny_model) -> ModelCard:
    card = ModelCard(
        name="tinysafe",
        architecture=default_architecture(2, 3, 4, filters=(4, 8, 16)),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=["background", "necrosis", "edema", "enhancing"],
    )
    register_tiny_model(card)
    return card


@pytest.fixture
def segment_dock(open_dock, case_folder, model):
    return open_dock(case_folder, "Segment volume", model.name)


def _run(qtbot, widget) -> None:
    widget.run()
    assert widget.handle is not None
    qtbot.waitUntil(lambda: widget.handle is None, timeout=60000)


# ------------------------------------------------------------------------------------------ the writer
def test_writer_refuses_a_closed_input_of_the_labels(segment_dock, qtbot, tmp_path, case_folder):
    viewer, widget = segment_dock
    _run(qtbot, widget)
    scan = case_folder / "t1.nii.gz"
    before = scan.read_bytes()
    viewer.layers.remove("t1")  # its file is still an input of the labels' provenance
    with pytest.raises(Exception, match="also an input"):
        viewer.layers["tinysafe labels"].save(str(scan), plugin="napari-medadapt")
    assert scan.read_bytes() == before
    assert not (case_folder / "t1.provenance.json").exists()


def test_writer_asks_before_replacing_a_file_it_did_not_write(segment_dock, qtbot, tmp_path, monkeypatch):
    import napari_medadapt._writer as writer

    viewer, widget = segment_dock
    _run(qtbot, widget)
    layer = viewer.layers["tinysafe labels"]
    other = tmp_path / "other_scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(other))
    before = other.read_bytes()
    asked: list[str] = []

    def answer(value: bool):
        def confirm(path: Path, reason: str) -> bool:
            asked.append(f"{path}: {reason}")
            return value

        return confirm

    monkeypatch.setattr(writer, "confirm_replace", answer(False))
    with pytest.raises(Exception, match="not a label map saved by napari-medadapt"):
        layer.save(str(other), plugin="napari-medadapt")
    assert other.read_bytes() == before and len(asked) == 1 and "other_scan" in asked[0]
    monkeypatch.setattr(writer, "confirm_replace", answer(True))
    layer.save(str(other), plugin="napari-medadapt")
    assert nib.load(str(other)).header.get_intent()[0] == "label" and len(asked) == 2
    layer.save(str(other), plugin="napari-medadapt")  # now our label map: replaced without a question
    assert len(asked) == 2


# ------------------------------------------------------------------------------------------ inputs
def test_results_are_never_offered_as_inputs_and_choices_stay(plugin_viewer, case_folder, model, open_plugin_dock,
                                                              qtbot):
    viewer = plugin_viewer(case_folder)
    docks = {name: open_plugin_dock(viewer, name) for name in ("Segment volume", "Test-time adaptation")}
    for widget in docks.values():
        widget.model_combo.setCurrentIndex(widget.model_combo.findText(model.name))
        assert widget.inputs.input_mapping()["flair"] == "flair"
    segment = docks["Segment volume"]
    segment.confidence_check.setChecked(True)
    _run(qtbot, segment)
    # a result image whose name says FLAIR (as a dock once named its probability maps) is never an input
    from napari_medadapt.widgets._layers import mark_result

    viewer.add_image(np.zeros(viewer.layers["flair"].data.shape, np.float32), name="flair probability",
                     **mark_result({}, "fewshot", model.name, "probability"))  # fmt: skip
    for widget in docks.values():
        assert widget.inputs.input_mapping()["flair"] == "flair"
        box = widget.inputs.modality_boxes["flair"]
        offered = [box.itemText(i) for i in range(box.count())]
        assert "flair probability" not in offered and "confidence" not in offered
    # a user's choice is kept when a newer layer of that modality comes
    segment.set_input("t1", "t1c")
    viewer.open(str(case_folder / "t1.nii.gz"), plugin="napari-medadapt")  # "t1 [1]"
    assert segment.inputs.input_mapping()["t1"] == "t1c"


def test_same_file_twice_says_which_layer_is_used(segment_dock, case_folder):
    viewer, widget = segment_dock
    viewer.open(str(case_folder / "flair.nii.gz"), plugin="napari-medadapt")
    used = widget.inputs.input_mapping()["flair"]
    note = widget.inputs.input_note.text()
    assert widget.inputs.input_note.isVisibleTo(widget) and "2 layers are FLAIR" in note and f"'{used}' is used" in note


# ------------------------------------------------------------------------------------------ results
def test_a_new_run_replaces_the_previous_result_undoably(segment_dock, qtbot):
    viewer, widget = segment_dock
    _run(qtbot, widget)
    layer = viewer.layers["tinysafe labels"]
    first = np.array(layer.data)
    layer.data_setitem(tuple(np.array([[0], [0], [0]])), np.array([9], layer.data.dtype))  # the user edits it
    widget.largest_check.setChecked(not widget.largest_check.isChecked())
    _run(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names.count("tinysafe labels") == 1 and "tinysafe labels [1]" not in names
    assert layer.data[0, 0, 0] == widget.last_prediction.labels[0, 0, 0]
    layer.undo()  # the previous result (with the user's edit) comes back
    assert layer.data[0, 0, 0] == 9
    layer.undo()
    np.testing.assert_array_equal(layer.data, first)
    widget.keep_check.setChecked(True)
    _run(qtbot, widget)
    assert "tinysafe labels [1]" in viewer.layers


def test_references_are_written_into_only_when_picked_explicitly(segment_dock, qtbot):
    viewer, widget = segment_dock
    entries = [widget.output_combo.itemText(i) for i in range(widget.output_combo.count())]
    assert entries == ["new Labels layer", "replace: seg_fusion"]
    _run(qtbot, widget)
    entries = [widget.output_combo.itemText(i) for i in range(widget.output_combo.count())]
    assert entries == ["new Labels layer", "tinysafe labels", "replace: seg_fusion"]


def test_a_result_of_a_closed_image_is_dropped(segment_dock, qtbot, notifications):
    viewer, widget = segment_dock
    names = [layer.name for layer in viewer.layers]
    widget.run()
    viewer.layers.remove("flair")  # before the result reaches the viewer
    qtbot.waitUntil(lambda: widget.handle is None, timeout=60000)
    assert "dropped" in widget.status.text() and "'flair'" in widget.status.text()
    notifications.take("was closed while it ran", severity="info")
    assert [layer.name for layer in viewer.layers] == [n for n in names if n != "flair"]


# ------------------------------------------------------------------------------------------ opening cases
def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, slope: float | None = None) -> Path:
    image = nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))
    return path


def test_a_near_integer_scaled_mask_or_a_damaged_file_never_blocks_a_case(tmp_path, notifications, plugin_viewer):
    folder = tmp_path / "case"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _nifti(folder / "flair.nii.gz", rng.random((16, 16, 8), dtype=np.float32))
    _nifti(folder / "t1.nii.gz", rng.random((16, 16, 8), dtype=np.float32))
    mask = np.zeros((16, 16, 8), np.int32)
    mask[4:12, 4:12, 2:6] = 1
    _nifti(folder / "brain_mask.nii.gz", mask, slope=0.99999997)  # as some converters write masks
    viewer = plugin_viewer(folder)
    assert [layer.name for layer in viewer.layers] == ["t1", "flair", "brain_mask"]
    assert set(np.unique(viewer.layers["brain_mask"].data)) == {0, 1}
    assert notifications.problems() == []

    (folder / "t2.nii.gz").write_bytes(nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.eye(4)).to_bytes()[:400])
    viewer.layers.clear()
    viewer.open(str(folder), plugin="napari-medadapt")
    assert [layer.name for layer in viewer.layers] == ["t1", "flair", "brain_mask"]
    notifications.take("t2.nii.gz was not opened", "warning")


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/real/glioma_tcga_fg6692_raw").is_dir(),
                    reason="the raw export of the real glioma is not beside the repository")
def test_raw_files_opened_together_overlay_in_scanner_space(plugin_viewer, notifications, open_plugin_dock, model):
    raw = Path(__file__).resolve().parents[2] / "shared/data/real/glioma_tcga_fg6692_raw"
    viewer = plugin_viewer()
    viewer.open([str(raw / "flair.nii.gz"), str(raw / "t1.nii.gz"), str(raw / "t1c.nii.gz")], plugin="napari-medadapt")
    for name in ("t1.nii.gz", "t1c.nii.gz"):
        assert "tilted by up to 14 degrees" in notifications.take(f"{name} is not on one grid", "warning")
    flair, t2 = viewer.layers["flair"], None
    viewer.open(str(raw / "t2.nii.gz"), plugin="napari-medadapt")  # no tilt: placed exactly
    notifications.take("t2.nii.gz is not on one grid", "warning")
    t2 = viewer.layers["t2"]
    grid_flair, grid_t2 = (layer.metadata["medadapt"]["geometry"] for layer in (flair, t2))
    index = np.array([12.0, 100.0, 80.0])  # a voxel of t2: the same scanner position in napari's world as in the files
    world = np.asarray(t2.data_to_world(index))
    scanner_t2 = grid_t2.display_affine @ np.append(index, 1.0)
    scanner_from_world = grid_flair.display_affine @ np.append(world / np.asarray(grid_flair.spacing), 1.0)
    np.testing.assert_allclose(scanner_from_world[:3], scanner_t2[:3], atol=1e-3)
    t1 = viewer.layers["t1"]  # tilted by 14 degrees: its centre voxel sits exactly where the scanner put it
    grid_t1 = t1.metadata["medadapt"]["geometry"]
    centre = (np.asarray(grid_t1.display_shape, float) - 1.0) / 2.0
    world = np.asarray(t1.data_to_world(centre))
    scanner_from_world = grid_flair.display_affine @ np.append(world / np.asarray(grid_flair.spacing), 1.0)
    np.testing.assert_allclose(scanner_from_world[:3], (grid_t1.display_affine @ np.append(centre, 1.0))[:3], atol=1e-3)
    widget = open_plugin_dock(viewer, "Segment volume")
    widget.model_combo.setCurrentIndex(widget.model_combo.findText(model.name))
    widget.run()
    message = notifications.take("Prepare scans first")
    assert "affine" not in message and "different grids" in message and widget.handle is None


def test_a_painted_few_shot_result_never_becomes_flair_in_any_dock(plugin_viewer, case_folder, model, open_plugin_dock,
                                                                   qtbot):
    viewer = plugin_viewer(case_folder)
    names = ("Segment volume", "Test-time adaptation", "Few-shot adapter", "Prototype explanations")
    docks = {name: open_plugin_dock(viewer, name) for name in names}
    for widget in docks.values():
        widget.model_combo.setCurrentIndex(widget.model_combo.findText(model.name))
        assert widget.inputs.input_mapping()["flair"] == "flair"
    viewer.layers.selection.active = viewer.layers["flair"]
    painted = viewer.add_labels(np.zeros(viewer.layers["flair"].data.shape, np.uint8), name="flair - Labels")
    reference = viewer.layers["seg_fusion"].data
    for z in (6, 12, 18):
        painted.data[z] = (reference[z] > 0).astype(np.uint8)
    fewshot = docks["Few-shot adapter"]
    fewshot.labels_combo.setCurrentText("flair - Labels")
    fewshot.steps_spin.setValue(10)
    for _refit in range(2):  # and again on a refit
        fewshot.adapt()
        qtbot.waitUntil(lambda: not fewshot.busy, timeout=120000)
        assert fewshot.result is not None
        for name, widget in docks.items():
            assert widget.inputs.input_mapping()["flair"] == "flair", name
            box = widget.inputs.modality_boxes["flair"]
            offered = [box.itemText(i) for i in range(box.count())]
            assert not [text for text in offered if "probability" in text], name
    results = [layer.name for layer in viewer.layers if layer.metadata.get("medadapt", {}).get("role") == "result"]
    assert results and not [name for name in results if "flair" in name.lower()]


def test_a_damaged_scan_in_a_raw_folder_is_left_out(tmp_path, notifications, plugin_viewer):
    folder = tmp_path / "raw"
    folder.mkdir()
    rng = np.random.default_rng(1)
    _nifti(folder / "flair.nii.gz", rng.random((16, 16, 8), dtype=np.float32))
    _nifti(folder / "t2.nii.gz", rng.random((12, 16, 8), dtype=np.float32))  # another grid: a raw export
    import gzip

    raw = nib.Nifti1Image(rng.random((16, 12, 8), dtype=np.float32), np.eye(4)).to_bytes()
    (folder / "t1.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a good header, half the voxels
    viewer = plugin_viewer(folder)
    assert sorted(layer.name for layer in viewer.layers) == ["flair", "t2"]
    notifications.take("t1.nii.gz was not opened", "warning")
    notifications.take("not on one grid", "warning")


def test_a_result_of_another_case_is_never_replaced(segment_dock, qtbot, tmp_path, case_folder):
    viewer, widget = segment_dock
    _run(qtbot, widget)
    first = viewer.layers["tinysafe labels"]
    before = np.array(first.data)
    other = tmp_path / "other"
    other.mkdir()
    for name in MODALITIES:  # the same shape and spacing, another patient (other files)
        image = nib.load(str(case_folder / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine, image.header), str(other / f"{name}.nii.gz"))
    for name in MODALITIES:
        viewer.open(str(other / f"{name}.nii.gz"), plugin="napari-medadapt")
        widget.set_input(name, f"{name} [1]")
    _run(qtbot, widget)
    assert "tinysafe labels [1]" in viewer.layers  # a new layer: the first case's result is kept as it was
    np.testing.assert_array_equal(first.data, before)
