"""``medadapt explain`` and ``medadapt prototype-bank``: outputs as documented, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_explain import labelled_cases, phantom_volume, tiny_card  # noqa: F401 (fixture)

from napari_medadapt.cli import main
from napari_medadapt.core.labelmaps import save_labels
from napari_medadapt.core.volume import read_geometry, save_image


@pytest.fixture
def case(tmp_path) -> tuple[Path, np.ndarray]:
    volume, labels = phantom_volume()
    for c, modality in enumerate(volume.channels):
        save_image(volume.data[c], volume.geometry, tmp_path / f"{modality}.nii.gz")
    save_labels(labels, volume.geometry, tmp_path / "seg.nii.gz")
    return tmp_path, labels


def _images(folder: Path) -> list[str]:
    return [arg for m in ("t1", "t1c", "t2", "flair") for arg in ("--image", f"{m}={folder / f'{m}.nii.gz'}")]


def test_explain_a_voxel(case, capsys):
    folder, labels = case
    zyx = np.argwhere(labels == 2)[len(np.argwhere(labels == 2)) // 2]
    ijk = read_geometry(folder / "flair.nii.gz").display_index_to_source(zyx[None])[0]
    out = folder / "why"
    code = main(["explain", *_images(folder), "--voxel", ",".join(map(str, ijk)), "--out-dir", str(out), "--top-k", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "top prototypes" in captured.out
    record = json.loads((out / "explanation.json").read_text())
    assert record["target"] == {"kind": "voxel", "zyx": [int(v) for v in zyx]}
    assert record["model"] == "glioma2d" and record["projected"] is True and len(record["matches"]) == 3
    for match in record["matches"]:
        assert {"id", "class_name", "similarity", "source", "heatmap", "thumbnail"} <= set(match)
        assert (out / match["heatmap"]).is_file() and (out / match["thumbnail"]).is_file()
        assert {"case", "plane", "y", "x"} <= set(match["source"])
    assert len(record["similar_planes"]) == 3 and "Similar training slices" in (out / "report.html").read_text()
    assert set(record["localisation"]["activation_precision_vs_prediction"]) == {str(m["id"]) for m in record["matches"]}
    assert (out / "report.html").read_text().count("<img") == 4 and (out / "heatmaps.png").is_file()
    heat = read_geometry(out / f"heatmap_prototype_{record['matches'][0]['id']}.nii.gz")
    assert heat.matches(read_geometry(folder / "flair.nii.gz"))  # on the source grid
    provenance = record["provenance"]
    assert provenance["method"] == "explain" and provenance["model"]["name"] == "glioma2d"
    assert provenance["model"]["sha256"] and provenance["inputs"]["flair"]["sha256"]
    assert provenance["settings"]["top_k"] == 3 and provenance["software"]["napari-medadapt"]
    assert provenance["inputs"]["bank"]["sha256"]  # the model's own bank, found beside it


def test_explain_a_region_forget_and_baselines(case, capsys):
    folder, labels = case
    out = folder / "region"
    code = main([
        "explain", *_images(folder), "--region", str(folder / "seg.nii.gz"), "--label-values", "2",
        "--out-dir", str(out), "--forget", "20,21", "--baselines",
    ])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "explanation.json").read_text())
    assert record["target"]["voxels"] == int((labels == 2).sum()) and (out / "evidence.nii.gz").is_file()
    assert record["forget"]["forgotten"] == [20, 21] and record["forget"]["changed_voxels"] >= 0
    assert {"occlusion", "gradient"} == set(record["baselines"]) and (out / "occlusion.nii.gz").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--voxel", "0,0,99"], "outside the image"),
        (["--voxel", "1,2"], "3 comma-separated"),
        (["--region", "SEG", "--label-values", "7"], "no voxel with label values [7]"),
        (["--voxel", "1,1,1", "--top-k", "0"], "at least 1"),
    ],
)
def test_bad_targets_are_refused(case, capsys, extra, message):
    folder, _labels = case
    extra = [str(folder / "seg.nii.gz") if e == "SEG" else e for e in extra]
    code = main(["explain", *_images(folder), *extra, "--out-dir", str(folder / "x")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (folder / "x" / "explanation.json").exists()


def test_model_without_bank_says_how_to_build_one(case, save_tiny_model, labelled_cases, capsys):  # noqa: F811
    folder, _labels = case
    card = save_tiny_model(folder, tiny_card())
    args = ["explain", "--model", str(card), *_images(folder), "--voxel", "1,1,1", "--out-dir", str(folder / "x")]
    assert main(args) == 2
    assert "medadapt prototype-bank --model tinyglioma" in capsys.readouterr().err
    bank = folder / "tiny.prototypes.json"
    assert main(["prototype-bank", "--model", str(card), "--cases", str(labelled_cases), "--out", str(bank), "--per-class", "2"]) == 0
    assert "8 prototypes from 2 case(s)" in capsys.readouterr().out
    assert main(["prototype-bank", "--model", str(card), "--cases", str(labelled_cases), "--out", str(bank)]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert main([*args, "--bank", str(bank)]) == 0, capsys.readouterr().err
    assert main(["explain", *_images(folder), "--voxel", "1,1,1", "--bank", str(bank), "--out-dir", str(folder / "y")]) == 2
    assert "built for the model 'tinyglioma'" in capsys.readouterr().err
