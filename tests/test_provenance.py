"""Provenance records: in the label file's header and its sidecar, from the CLI and from a dock's layer saved
in napari; ``medadapt provenance`` prints them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_fewshot import _blob_volume

from napari_medadapt.cli import main
from napari_medadapt.core.files import OutputError
from napari_medadapt.core.labelmaps import label_class_names, save_labels, sidecar_path
from napari_medadapt.core.provenance import FORMAT, provenance_record, read_provenance
from napari_medadapt.core.volume import save_image


def test_record_is_in_the_header_and_the_sidecar(tmp_path):
    volume, labels = _blob_volume()
    image = save_image(volume.data[0], volume.geometry, tmp_path / "ct.nii.gz")
    record = provenance_record("segment", inputs={"ct": image, "drawn": None}, model={"name": "m", "sha256": "ab"},
                               settings={"largest_component": True}, device="cpu")
    assert record["format"] == FORMAT and record["inputs"]["ct"]["sha256"] and record["inputs"]["drawn"]["sha256"] is None
    assert "napari-medadapt" in record["software"] and "torch" in record["software"]
    out = save_labels(labels, volume.geometry, tmp_path / "labels.nii.gz", class_names={1: "one", 2: "two"},
                      provenance=record)
    assert label_class_names(out) == {1: "one", 2: "two"}  # one extension holds both
    assert read_provenance(out) == record
    sidecar = sidecar_path(out)
    assert sidecar.name == "labels.provenance.json" and json.loads(sidecar.read_text()) == record
    sidecar.unlink()
    assert read_provenance(out) == record  # the header alone suffices
    (tmp_path / "other.provenance.json").write_text('{"kind": "something else"}')
    with pytest.raises(OutputError, match="not a napari-medadapt provenance record"):  # never another file
        save_labels(labels, volume.geometry, tmp_path / "other.nii.gz", provenance=record)
    assert not (tmp_path / "other.nii.gz").exists()  # refused before anything was written
    assert (tmp_path / "other.provenance.json").read_text() == '{"kind": "something else"}'
    save_labels(labels, volume.geometry, out, provenance=record)  # its own earlier record is replaced


def test_cli_outputs_carry_records_and_provenance_prints_them(tmp_path, capsys, save_tiny_model):
    from test_fewshot import fewshot_card

    volume, labels = _blob_volume()
    save_image(volume.data[0], volume.geometry, tmp_path / "ct.nii.gz")
    painted = np.zeros_like(labels)
    painted[[5, 11]] = labels[[5, 11]]
    save_labels(painted, volume.geometry, tmp_path / "painted.nii.gz")
    card = save_tiny_model(tmp_path, fewshot_card("tinyprov"))
    image = ["--image", f"ct={tmp_path / 'ct.nii.gz'}", "--model", str(card)]
    assert main(["segment", *image, "--out", str(tmp_path / "seg.nii.gz")]) == 0
    assert main(["fewshot", *image, "--support", str(tmp_path / "painted.nii.gz"), "--out",
                 str(tmp_path / "fs.nii.gz"), "--steps", "5", "--no-leave-one-out"]) == 0
    capsys.readouterr()
    assert main(["provenance", str(tmp_path / "fs.nii.gz")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "fewshot" and record["model"]["name"] == "tinyprov"
    assert record["model"]["sha256"] and record["inputs"]["support"]["sha256"]
    assert [p["index"] for p in record["settings"]["support"]] == [5, 11] and record["settings"]["steps"] == 5
    segment = read_provenance(tmp_path / "seg.nii.gz")
    assert segment["method"] == "segment" and segment["settings"]["tta"] == "none"
    assert main(["provenance", str(tmp_path / "painted.nii.gz")]) == 2
    assert "carries no provenance record" in capsys.readouterr().err
