"""DICOM on the command line: ``medadapt convert`` both ways, ``segment --image ct=FOLDER --out labels.dcm``, and
privacy (patient identifiers never in the output streams or provenance records)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _dicom_series import PATIENT, affine_lps, base_dataset, rotation, sample_block, write_series

from napari_medadapt.cli import main
from napari_medadapt.core.dicom import list_series, load_dicom, uid_hash
from napari_medadapt.core.labelmaps import label_class_names, load_labels, save_labels
from napari_medadapt.core.volume import load_volume, read_geometry

IDENTIFIERS = [PATIENT["PatientID"], "Doe", "Jane", PATIENT["PatientBirthDate"]]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A CT series (oblique, nested, 2 mm slices) and a smaller MR series in one folder."""
    root = tmp_path_factory.mktemp("study")
    data = sample_block((32, 28, 10))
    write_series(root / "ct", data, affine_lps(rotation("y", 10)), modality="CT", nested=True, intercept=-1024.0,
                 template=base_dataset("CT", description="ABDOMEN 2mm", number=4))  # fmt: skip
    write_series(root / "mr", data[:, :, :4], affine_lps(np.eye(3)), template=base_dataset(description="T2", number=9))
    return root


def _no_identifiers(*texts: str) -> None:
    for text in texts:
        for identifier in IDENTIFIERS:
            assert identifier not in text


def test_convert_dicom_to_nifti_keeps_values_and_geometry(study, tmp_path, capsys):
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", "--image", str(study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "largest CT series" in err and "T2" in err  # the choice, with the other series named
    _no_identifiers(err)
    volume, _notes = load_dicom(study)
    written = load_volume(out)
    assert nib.load(out).get_data_dtype() == np.int16
    assert written.geometry.matches(volume.geometry)
    np.testing.assert_array_equal(written.data, volume.data)
    out_mr = tmp_path / "mr.nii.gz"
    assert main(["convert", "--image", str(study), "--series", "9", "--out", str(out_mr)]) == 0
    assert load_volume(out_mr).data.shape == (1, 4, 28, 32)
    assert main(["convert", "--image", str(study), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "#4 CT 'ABDOMEN 2mm'" in listed and "#9 MR 'T2'" in listed
    _no_identifiers(listed)


def test_convert_labels_to_seg_and_back(study, tmp_path, capsys):
    volume, _notes = load_dicom(study)
    labels = np.zeros(volume.geometry.display_shape, np.uint8)
    labels[2:5, 3:12, 4:20] = 1
    labels[6:8, 10:20, 10:30] = 3
    nifti = save_labels(labels, volume.geometry, tmp_path / "labels.nii.gz", class_names={1: "liver", 3: "spleen"})
    seg = tmp_path / "labels.dcm"
    code = main(["convert", "--labels", str(nifti), "--reference", str(study), "--series", "4", "--out", str(seg),
                 "--algorithm", "manual:1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "labels.provenance.json").read_text())
    (ct,) = [s for s in list_series(study) if s.modality == "CT"]
    assert record["inputs"]["reference"]["dicom_series_uid_sha256"] == uid_hash(ct.uid)
    _no_identifiers(json.dumps(record))
    back = tmp_path / "back.nii.gz"
    assert main(["convert", "--seg", str(seg), "--reference", str(study), "--out", str(back)]) == 0
    assert "liver, spleen" in capsys.readouterr().err
    np.testing.assert_array_equal(load_labels(back, volume.geometry), labels)
    assert label_class_names(back) == {1: "liver", 3: "spleen"}
    # labels on another grid than the reference: refused, nothing written
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), other)
    code = main(["convert", "--labels", str(other), "--reference", str(study), "--out", str(tmp_path / "x.dcm")])
    assert code == 2 and "not on the grid" in capsys.readouterr().err and not (tmp_path / "x.dcm").exists()


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory, save_tiny_model) -> Path:
    from napari_medadapt.core.models import ModelCard, default_architecture

    folder = tmp_path_factory.mktemp("model")
    card = ModelCard(name="tinyct", architecture=default_architecture(2, 1, 3, filters=(4, 8, 16)), modalities=["ct"],
                     labels=[0, 1, 2], class_names=["background", "liver", "spleen"], supported_subsets=[["ct"]])  # fmt: skip
    save_tiny_model(folder, card)
    return folder / "tinyct.json"


def test_segment_a_dicom_folder_writes_a_seg_and_private_provenance(study, ct_model, tmp_path, capsys):
    import highdicom as hd

    out = tmp_path / "labels.dcm"
    code = main(["segment", "--model", str(ct_model), "--image", f"ct={study}", "--series", "ABDOMEN", "--out",
                 str(out), "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    _no_identifiers(captured.out, captured.err)
    seg = hd.seg.segread(out)
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "tinyct"
    assert {d.SegmentLabel for d in seg.SegmentSequence} <= {"liver", "spleen"}
    record = json.loads((tmp_path / "labels.provenance.json").read_text())
    (ct,) = [s for s in list_series(study) if s.modality == "CT"]
    assert record["inputs"]["ct"]["dicom_series_uid_sha256"] == uid_hash(ct.uid)
    assert ct.uid not in json.dumps(record)
    _no_identifiers(json.dumps(record))
    # the same as NIfTI, on the DICOM grid
    nifti = tmp_path / "labels.nii.gz"
    assert main(["segment", "--model", str(ct_model), "--image", f"ct={study}#4", "--out", str(nifti)]) == 0
    volume, _notes = load_dicom(study)
    assert read_geometry(nifti).matches(volume.geometry)


def test_seg_output_needs_a_dicom_input(tmp_path, capsys, ct_model):
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), image)
    code = main(["segment", "--model", str(ct_model), "--image", f"ct={image}", "--out", str(tmp_path / "x.dcm")])
    assert code == 2 and "needs a DICOM series" in capsys.readouterr().err


def test_series_option_follows_each_image(study, tmp_path):
    from napari_medadapt.cli import build_parser
    from napari_medadapt.cli._common import load_images, parse_images

    args = build_parser().parse_args(["segment", "--image", f"ct={study}", "--series", "4", "--image",
                                      f"t2={study}", "--series", "T2", "--out", "x.nii.gz"])  # fmt: skip
    images = parse_images(args.image)
    assert images == {"ct": f"{study}#4", "t2": f"{study}#T2"}
    with pytest.raises(Exception, match="not on the voxel grid"):  # two series, two grids
        load_images(images)


def test_a_cohort_of_dicom_folders_is_segmented_with_private_records(study, ct_model, tmp_path, capsys):
    from napari_medadapt.core.batch.manifest import read
    from napari_medadapt.core.provenance import read_provenance

    csv = tmp_path / "cohort.csv"
    csv.write_text(f"case_id,ct\ncase1,{study}#ABDOMEN\ncase2,{study / 'ct'}\n")
    out = tmp_path / "results"
    assert main(["batch", "segment", "--cases", str(csv), "--out", str(out), "--model", str(ct_model)]) == 0
    records = [r for r in read(out) if r.get("status") == "done"]
    assert sorted(r["case_id"] for r in records) == ["case1", "case2"]
    ct = load_dicom(f"{study}#ABDOMEN", name="ct")[0]
    for record in records:
        labels = out / record["output"]
        assert load_labels(labels).shape == ct.data.shape[1:]
        entry = read_provenance(labels)["inputs"]["ct"]
        assert entry["dicom_series_uid_sha256"] == uid_hash(list_series(study / "ct")[0].uid)
        _no_identifiers(labels.with_name(labels.name.replace(".nii.gz", ".provenance.json")).read_text(),
                        (out / "manifest.jsonl").read_text())
    assert main(["batch", "segment", "--cases", str(csv), "--out", str(out), "--model", str(ct_model)]) == 0
    assert "2 already done" in capsys.readouterr().out  # resumed: the series' identity is stable
    csv.write_text(f"case_id,ct,reference\ncase1,{study}#ABDOMEN,{study}\n")
    from napari_medadapt.core.batch.cohort import CohortError, read_cohort

    with pytest.raises(CohortError, match="reference .* is DICOM"):
        read_cohort(csv)


def test_bench_dicom_compares_with_simpleitk_on_a_small_series(tmp_path, capsys):
    report, markdown = tmp_path / "dicom.json", tmp_path / "dicom.md"
    code = main(["bench", "dicom", "--slices", "6", "--size", "32", "--repeats", "1", "--json", str(report), "--md",
                 str(markdown)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads(report.read_text())
    assert all(series["identical"] for series in result["series"].values())
    assert "| axial |" in markdown.read_text()


def test_preprocess_reads_dicom_series(tmp_path, capsys):
    series = tmp_path / "t2"
    write_series(series, sample_block((32, 28, 10)), affine_lps(rotation("x", 8)),
                 template=base_dataset(description="T2 AX", number=3))  # fmt: skip
    out = tmp_path / "prepared"
    out.mkdir()
    code = main(["preprocess", "--image", f"t2={series}", "--no-strip", "--n4", "off", "--out-dir", str(out),
                 "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    t2 = load_dicom(series, name="t2")[0]
    prepared = load_volume(out / "t2.nii.gz")
    np.testing.assert_allclose(prepared.data[0], t2.data[0], atol=1e-3)
    np.testing.assert_allclose(prepared.geometry.display_affine, t2.geometry.display_affine, atol=1e-3)
    _no_identifiers(captured.out, captured.err, (out / "preprocess.json").read_text())
