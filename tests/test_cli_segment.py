"""``medadapt segment`` and ``medadapt evaluate`` on crops of a real glioma case with a tiny model."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_medadapt.cli import main
from napari_medadapt.core.labelmaps import load_labels
from napari_medadapt.core.models import ModelCard, default_architecture
from napari_medadapt.core.volume import read_geometry

MODALITIES = ["t1", "t1c", "t2", "flair"]
TRAINING_CASE = "glioma_tcga_du7294"  # has seg_algorithms/ besides the fusion
CROP = (slice(72, 120), slice(64, 112), slice(100, 110))  # source (i, j, k) axes


@pytest.fixture(scope="module")
def case(tmp_path_factory, real_data, write_crops, save_tiny_model) -> Path:
    folder = write_crops(tmp_path_factory.mktemp("case"), [*MODALITIES, "seg_fusion"], CROP, case=TRAINING_CASE)
    # a second algorithm's labels as a "prediction" to evaluate
    algo = nib.load(str(real_data / "glioma_tcga_du7294" / "seg_algorithms" / "isen-20.nii.gz"))
    nib.save(algo.slicer[CROP], str(folder / "algo.nii.gz"))
    card = ModelCard(
        name="tinycli",
        architecture=default_architecture(2, 4, 4, filters=(4, 8, 16)),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        supported_subsets=[MODALITIES],
    )
    save_tiny_model(folder, card)
    return folder


def images(case: Path, names=MODALITIES) -> list[str]:
    return [arg for m in names for arg in ("--image", f"{m}={case / f'{m}.nii.gz'}")]


def test_segment_writes_labels_on_first_image_grid(case, tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    code = main(["segment", "--model", str(case / "tinycli.json"), *images(case), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "volume mL" in captured.out and "segment: 1/" in captured.err
    written = nib.load(str(out))
    source = nib.load(str(case / "t1.nii.gz"))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    labels = load_labels(out, read_geometry(case / "t1.nii.gz"))
    assert set(np.unique(labels)) <= {0, 1, 2, 4}


def test_segment_bad_inputs_are_clear_errors(case, tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    model = ["--model", str(case / "tinycli.json")]
    assert main(["segment", *model, *images(case, MODALITIES[:3]), "--out", str(out)]) == 2
    assert "needs FLAIR; got t1, t1c, t2" in capsys.readouterr().err
    shifted = tmp_path / "flair.nii.gz"
    image = nib.load(str(case / "flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:-2], image.affine), str(shifted))
    args = [*images(case, MODALITIES[:3]), "--image", f"flair={shifted}"]
    assert main(["segment", *model, *args, "--out", str(out)]) == 2
    assert "not on the voxel grid" in capsys.readouterr().err
    assert main(["segment", *model, "--image", "flair", "--out", str(out)]) == 2
    assert "MODALITY=PATH" in capsys.readouterr().err
    assert not out.exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    for suffix in (".json", ".safetensors"):
        (bad / f"tinycli{suffix}").write_bytes((case / f"tinycli{suffix}").read_bytes())
    (bad / "tinycli.safetensors").write_bytes(b"\0" * 64)
    assert main(["segment", "--model", str(bad / "tinycli.json"), *images(case), "--out", str(out)]) == 2
    assert "does not match its model card" in capsys.readouterr().err


def _constant_head(model, label_index: int):
    """A copy of ``model`` whose head predicts class ``label_index`` everywhere."""
    constant = model.copy()
    with torch.no_grad():
        constant.head.conv.conv.weight.zero_()
        constant.head.conv.conv.bias.zero_()
        constant.head.conv.conv.bias[label_index] = 5.0
    return constant


def test_segment_with_test_time_adaptation_uses_the_adapted_model(case, tmp_path, capsys, monkeypatch):
    from napari_medadapt.core.adapt.tta.methods import segmentation_change_warning
    from napari_medadapt.core.models import load_model, save_model

    # a source model that labels everything as class 2, so the whole-volume collapse check is deterministic
    source = _constant_head(load_model(case / "tinycli.json"), 2)
    card_path = save_model(source, tmp_path / "everywhere.safetensors", ModelCard.load(case / "tinycli.json"))
    calls = []

    def adapt(model, volume, method, ctx, on_loss=None):
        calls.append((method, volume.channels))
        # an "adapted" model that has collapsed to background
        return types.SimpleNamespace(
            model=_constant_head(model, 0), method=method, warnings=["example warning"],
            shift_score_before=2.0, shift_score_after=1.0,
        )

    module = types.ModuleType("napari_medadapt.core.adapt.tta.methods")
    module.adapt = adapt
    module.segmentation_change_warning = segmentation_change_warning
    monkeypatch.setitem(sys.modules, "napari_medadapt.core.adapt.tta.methods", module)
    out = tmp_path / "adapted.nii.gz"
    args = ["segment", "--model", str(card_path), *images(case), "--out", str(out), "--tta", "tent"]
    assert main(args) == 0, capsys.readouterr().err
    assert calls == [("tent", tuple(MODALITIES))]
    err = capsys.readouterr().err
    assert "example warning" in err
    assert "source model (before adaptation)" in err
    assert "in the whole volume" in err and "it may have collapsed" in err
    assert set(np.unique(np.asanyarray(nib.load(str(out)).dataobj))) == {0}
    # without the source pass: the adapted result only
    assert main([*args, "--no-source-check"]) == 0
    err = capsys.readouterr().err
    assert "source model (before adaptation)" not in err and "in the whole volume" not in err


def test_evaluate_prints_and_writes_json(case, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code = main(["evaluate", "--pred", str(case / "algo.nii.gz"), "--ref", str(case / "seg_fusion.nii.gz"),
                 "--json", str(report)])
    assert code == 0
    assert "WT" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert set(data["results"]) == {"WT", "TC", "ET"}
    assert 0.5 < data["results"]["WT"]["dice"] <= 1.0
    assert data["results"]["WT"]["hd95_status"] == "ok"
    assert main(["evaluate", "--pred", str(case / "seg_fusion.nii.gz"), "--ref", str(case / "seg_fusion.nii.gz"),
                 "--regions", "labels"]) == 0
    assert "1.0000" in capsys.readouterr().out


def test_segment_follows_card_postprocess_and_all_components_switches_it_off(case, tmp_path, capsys):
    from napari_medadapt.core.postprocess import keep_largest_component

    card = json.loads((case / "tinycli.json").read_text())
    card["postprocess"] = {"largest_component": True}
    shutil.copy(case / card["weights_file"], tmp_path / card["weights_file"])
    (tmp_path / "largest.json").write_text(json.dumps(card))
    geometry = read_geometry(case / "t1.nii.gz")
    outputs = {}
    for name, extra in (("largest", []), ("every", ["--all-components"])):
        out = tmp_path / f"{name}.nii.gz"
        argv = ["segment", "--model", str(tmp_path / "largest.json"), *images(case), "--out", str(out), *extra]
        assert main(argv) == 0, capsys.readouterr().err
        outputs[name] = load_labels(out, geometry)
    np.testing.assert_array_equal(outputs["largest"], keep_largest_component(outputs["every"])[0])
