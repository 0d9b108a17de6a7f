"""DICOM in napari: a folder opened with the plugin's reader (series dialog when several), a labels layer saved as
DICOM SEG from the viewer, and a DICOM SEG opened back as a Labels layer with its segment names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _dicom_series import affine_lps, base_dataset, rotation, sample_block, write_series

from napari_medadapt import _series_dialog
from napari_medadapt._reader import napari_get_reader, read_paths
from napari_medadapt.core.dicom import load_dicom

PLUGIN = "napari-medadapt"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("napari-study")
    data = sample_block((32, 28, 8))
    write_series(root / "a", data, affine_lps(rotation("z", 12)), modality="CT", intercept=-1024.0,
                 template=base_dataset("CT", description="LIVER", number=3))  # fmt: skip
    write_series(root / "b", data[:, :, :5], affine_lps(np.eye(3)),
                 template=base_dataset(description="AX FLAIR", number=6))  # fmt: skip
    return root


@pytest.fixture
def pick(monkeypatch):
    """``pick(rows)``: the series dialog selects those rows and is accepted (records what it was shown)."""
    shown = {}

    def install(rows):
        real = _series_dialog._dialog_class

        def auto_class():
            base = real()

            class Auto(base):
                def exec(self):
                    shown["items"] = [self.list.item(i).text() for i in range(self.list.count())]
                    shown["preselected"] = [i for i in range(self.list.count()) if self.list.item(i).isSelected()]
                    for i in range(self.list.count()):
                        self.list.item(i).setSelected(i in rows)
                    return 1

            return Auto

        monkeypatch.setattr(_series_dialog, "_dialog_class", auto_class)
        return shown

    return install


def test_reader_claims_dicom_folders_files_and_zips(study, tmp_path):
    import zipfile

    first = next(p for p in (study / "a").iterdir())
    assert napari_get_reader(str(study)) is not None and napari_get_reader(str(first)) is not None
    assert napari_get_reader(str(study / "missing.dcm")) is None
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        for file in (study / "b").iterdir():
            archive.write(file, f"b/{file.name}")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "not a scan")
    assert napari_get_reader(str(tmp_path / "export.zip")) is not None
    assert napari_get_reader(str(tmp_path / "other.zip")) is None
    ((data, kwargs, kind),) = read_paths(str(tmp_path / "export.zip"))
    assert kind == "image" and data.shape == (5, 28, 32) and kwargs["name"] == "flair"


def test_open_folder_choose_series_draw_save_seg_and_reopen(plugin_viewer, notifications, pick, study, tmp_path):
    shown = pick([0, 1])
    viewer = plugin_viewer(study)
    assert [layer.name for layer in viewer.layers] == ["ct #3", "flair #6"]
    assert "#3 CT 'LIVER'" in shown["items"][0] and shown["preselected"] == [0]  # the largest CT by default
    notifications.take("not on one grid", "warning")  # two series, two grids: placed in scanner space
    image = viewer.layers["ct #3"]
    volume, _notes = load_dicom(f"{study}#3")
    np.testing.assert_array_equal(image.data, volume.data[0])
    dicom = image.metadata["medadapt"]["dicom"]
    assert dicom["patient"]["name"] == "Doe^Jane" and dicom["series_number"] == 3
    # a labels layer made with napari's "new labels": the image's grid and series are found in the viewer
    drawn = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="organ", features={"index": [1, 2],
                              "class": ["liver", "spleen"]})  # fmt: skip
    drawn.data[2:5, 4:12, 6:20] = 1
    drawn.data[6, 10:20, 10:14] = 2
    out = tmp_path / "organ.dcm"
    drawn.save(str(out), plugin=PLUGIN)
    assert out.is_file()
    (reopened,) = viewer.open(str(out), plugin=PLUGIN)  # on the exact grid of the open CT: no warning
    assert reopened.features["class"].tolist() == ["liver", "spleen"]
    np.testing.assert_array_equal(reopened.data, drawn.data)
    np.testing.assert_allclose(reopened.scale, image.scale)
    # without the series beside it the SEG spans only its frames; with it, the exact grid
    ((labels, _kwargs, kind),) = read_paths(str(out))
    assert kind == "labels" and labels.max() == 2
    from napari_medadapt.core.dicom.seg import read_seg

    back, geometry, names = read_seg(out, f"{study}#3")
    np.testing.assert_array_equal(back, np.asarray(drawn.data))
    assert geometry.matches(volume.geometry) and names == {1: "liver", 2: "spleen"}


def test_default_series_without_a_choice_is_named_in_a_note(plugin_viewer, notifications, monkeypatch, study):
    monkeypatch.setattr(_series_dialog, "ask_series", lambda series, default: None)  # e.g. the dialog cancelled
    viewer = plugin_viewer(study)
    assert [layer.name for layer in viewer.layers] == ["ct"]
    assert "largest CT series" in notifications.take("largest", "warning")


def test_seg_saved_from_a_dock_result_records_the_series_not_the_patient(make_napari_viewer, study, tmp_path):
    import json

    from napari_medadapt._reader import read_paths
    from napari_medadapt._writer import write_labels
    from napari_medadapt.core.dicom import list_series, uid_hash

    viewer = make_napari_viewer()
    layers = read_paths(f"{study}#3")
    image = viewer.add_image(layers[0][0], **layers[0][1])
    labels = np.zeros(image.data.shape, np.uint8)
    labels[3, 4:9, 5:15] = 2
    draft = {"method": "segment", "inputs": {"ct": str(study)}, "model": {"name": "glioma2d", "sha256": "ab" * 32},
             "settings": {}, "device": "cpu"}  # fmt: skip
    metadata = {"medadapt": {**image.metadata["medadapt"], "provenance": draft}}
    (written,) = write_labels(str(tmp_path / "result.dcm"), labels, {"metadata": metadata, "name": "Segmentation"})
    record = json.loads((tmp_path / "result.provenance.json").read_text())
    (ct,) = [s for s in list_series(study) if s.number == 3]
    assert record["inputs"]["ct"]["dicom_series_uid_sha256"] == uid_hash(ct.uid)
    text = json.dumps(record)
    assert "Doe" not in text and "PAT-12345" not in text and ct.uid not in text
    write_labels(str(tmp_path / "result.nii.gz"), labels, {"metadata": metadata, "name": "Segmentation"})
    record = json.loads((tmp_path / "result.provenance.json").read_text())  # saved as NIfTI: the same entry
    assert record["inputs"]["ct"]["dicom_series_uid_sha256"] == uid_hash(ct.uid)
    import highdicom as hd

    seg = hd.seg.segread(written)
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "glioma2d" and seg.SegmentSequence[0].SegmentLabel == "label 2"


def test_a_folder_with_its_seg_opens_image_and_labels(study, tmp_path):
    import shutil

    from napari_medadapt.core.dicom.seg import write_seg

    shutil.copytree(study / "a", tmp_path / "export")
    volume, _notes = load_dicom(tmp_path / "export")
    labels = np.zeros(volume.geometry.display_shape, np.uint8)
    labels[1:4, 5:9, 6:12] = 5
    write_seg(labels, volume.geometry, tmp_path / "export", tmp_path / "export" / "seg.dcm", class_names={5: "liver"})
    (image, _k1, kind1), (seg, kwargs, kind2) = read_paths(str(tmp_path / "export"))
    assert (kind1, kind2) == ("image", "labels")
    np.testing.assert_array_equal(seg, labels)
    assert kwargs["features"]["class"] == ["liver"]
