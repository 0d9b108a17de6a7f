"""``medadapt fewshot``: fit from a support label file, save and apply the adapter, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_fewshot import _blob_volume, fewshot_card

from napari_medadapt.cli import main
from napari_medadapt.core.labelmaps import load_labels, save_labels
from napari_medadapt.core.volume import read_geometry, save_image


@pytest.fixture
def case(tmp_path, save_tiny_model) -> Path:
    volume, labels = _blob_volume()
    save_image(volume.data[0], volume.geometry, tmp_path / "ct.nii.gz")
    painted = np.zeros_like(labels)
    painted[[5, 8, 11]] = labels[[5, 8, 11]]
    save_labels(painted, volume.geometry, tmp_path / "painted.nii.gz")
    card = fewshot_card("tinyfs")
    save_tiny_model(tmp_path, card)
    return tmp_path


def _run(case: Path, *extra: str) -> int:
    return main(["fewshot", "--model", str(case / "tinyfs.json"), "--image", f"ct={case / 'ct.nii.gz'}", *extra])


def test_fit_save_and_apply(case, capsys):
    out, report = case / "out.nii.gz", case / "fit.json"
    code = _run(case, "--support", str(case / "painted.nii.gz"), "--out", str(out), "--steps", "40",
                "--save-adapter", str(case / "adapter"), "--json", str(report))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "support: axial" in captured.err and "leave-one-slice-out Dice" in captured.err
    labels = load_labels(out, read_geometry(case / "ct.nii.gz"))
    painted = load_labels(case / "painted.nii.gz", read_geometry(case / "ct.nii.gz"))
    np.testing.assert_array_equal(labels[[5, 8, 11]], painted[[5, 8, 11]])  # the support slices copied
    figures = json.loads(report.read_text())
    assert [p["index"] for p in figures["support"]] == [5, 8, 11] and figures["classes"] == [1, 2]
    assert set(figures["leave_one_out_dice"]) == {"5", "8", "11"} and (case / "adapter" / "adapter.json").is_file()
    applied = case / "applied.nii.gz"
    assert _run(case, "--adapter", str(case / "adapter"), "--out", str(applied)) == 0
    assert load_labels(applied).shape == labels.shape


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ((), "give --support"),
        (("--support", "{case}/painted.nii.gz", "--adapter", "{case}"), "give --support"),
        (("--support", "{case}/painted.nii.gz", "--steps", "0"), "--steps must be at least 1"),
        (("--support", "{case}/ct.nii.gz", "--out", "{case}/ct.nii.gz"), "input"),
        (("--adapter", "{case}"), "no few-shot adapter here"),
        (("--support", "{case}/painted.nii.gz", "--channel", "ct"), "--channel picks the image"),
    ],
)
def test_refusals_name_the_problem(case, capsys, extra, words):
    args = [a.format(case=case) for a in extra]
    if "--out" not in args:
        args += ["--out", str(case / "o.nii.gz")]
    assert _run(case, *args) == 2
    assert words in capsys.readouterr().err
    assert not (case / "o.nii.gz").exists()


def test_support_on_another_grid_is_refused(case, capsys):
    volume, labels = _blob_volume()
    other = volume.geometry.__class__.from_display_grid((16, 40, 30))
    save_labels(labels[:, :, :30], other, case / "other.nii.gz")
    assert _run(case, "--support", str(case / "other.nii.gz"), "--out", str(case / "o.nii.gz")) == 2
    assert "not on the image grid" in capsys.readouterr().err
