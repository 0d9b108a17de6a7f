"""A corpus of malformed inputs to the model loader and the command line: model cards, weight files,
keypoint CSVs, output paths, and signals. Each gives one clear message naming the file or field and the
fix, before any computation where it can, and loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _corpus import assert_clear, no_traceback, valid_nifti

from napari_medadapt.cli import CLIError, main
from napari_medadapt.cli import segment as cli_segment
from napari_medadapt.cli import tts as cli_tts
from napari_medadapt.cli.tts import read_points
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.files import check_output_path
from napari_medadapt.core.labelmaps import save_labels
from napari_medadapt.core.models import ModelCard, default_architecture, load_model, save_model
from napari_medadapt.core.volume import read_geometry


# ------------------------------------------------------------------------------------------ model cards
def _card_dict() -> dict:
    card = ModelCard(
        name="tinycard",
        architecture=default_architecture(2, 1, 2, filters=(4, 8, 16)),
        modalities=["flair"],
        labels=[0, 1],
    )
    return card.to_dict()


def _set(document: dict, dotted: str, value: object) -> dict:
    target = document
    *parents, last = dotted.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    return document


BAD_CARD_FIELDS = [
    ("format_version", "one"),
    ("format_version", 0),
    ("name", 5),
    ("weights_file", 5),
    ("weights_file", "../../elsewhere.safetensors"),
    ("weights_sha256", "not-a-hash"),
    ("architecture.spatial_dims", "2"),
    ("architecture.spatial_dims", 4),
    ("architecture.in_channels", -1),
    ("architecture.kernel_size", [3, 3]),
    ("architecture.strides", [1, [2, 2, 2]]),
    ("architecture.filters", [4, 8]),
    ("architecture.filters", "big"),
    ("architecture.res_block", "yes"),
    ("architecture.dropout", 2.0),
    ("architecture.normalizer", {"hidden": "x"}),
    ("architecture.normalizer", {"hiden": 8}),
    ("architecture.prototypes", {"per_class": 0}),
    ("architecture.filtres", [4, 8, 16]),
    ("intensity", "abc"),
    ("intensity.method", 5),
    ("intensity.method", "histogram"),
    ("intensity.lower", 99.9),
    ("intensity.window", [1]),
    ("voxel_size", "1mm"),
    ("voxel_size", [1, 2]),
    ("voxel_size", ["a", 1, 1]),
    ("voxel_size", [0, 1, 1]),
    ("modalities", "flair"),
    ("modalities", []),
    ("labels", ["a", "b"]),
    ("labels", [0, 300]),
    ("class_names", 3),
    ("class_names", ["only one"]),
    ("supported_subsets", [["t2"]]),
    ("postprocess", {"largest_component": "yes"}),
    ("postprocess", {"fill_holes": True}),
    ("regions", {"WT": [7]}),
    ("shift_score", [1, 2]),
]


@pytest.mark.parametrize(("field", "value"), BAD_CARD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v in BAD_CARD_FIELDS])
def test_model_cards_with_a_wrong_field_name_it(tmp_path, field, value):
    path = tmp_path / "tinycard.json"
    path.write_text(json.dumps(_set(_card_dict(), field, value)))
    with pytest.raises(MedAdaptError) as caught:
        ModelCard.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert field.split(".")[-1] in message or field.split(".")[0] in message, message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b"{\"name\": \"x\"", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"{\"a\":" * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (json.dumps({"name": "x"}).encode(), "architecture"),
        (b"\xff\xfe{\x00}\x00", "not valid JSON"),
        (json.dumps({**_card_dict(), "format_version": 99}).encode(), "update napari-medadapt"),
    ],
)
def test_model_card_files_that_are_not_cards(tmp_path, content, words):
    path = tmp_path / "card.json"
    path.write_bytes(content)
    with pytest.raises(MedAdaptError) as caught:
        ModelCard.load(path)
    assert_clear(caught.value, words, str(path))


def test_card_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "card.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_card_dict()).encode())
    assert ModelCard.load(path).name == "tinycard"


def test_weight_files_that_must_not_or_cannot_be_loaded(tmp_path, save_tiny_model):
    import torch

    card_path = save_tiny_model(tmp_path, ModelCard.from_dict(_card_dict()))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this ran",))

    def unverified_card(weights: str) -> None:  # a card without a checksum, as a user may write one
        document = {**_card_dict(), "name": Path(weights).stem, "weights_file": weights}
        (tmp_path / f"{Path(weights).stem}.json").write_text(json.dumps(document))

    torch.save({"weight": Payload()}, str(tmp_path / "evil.pt"))
    unverified_card("evil.pt")
    with pytest.raises(MedAdaptError) as caught:
        load_model(tmp_path / "evil.pt")
    message = str(caught.value)
    assert message.index("not a plain weight file") < 120 and "Do not trust" in message
    assert "weights_only" not in message

    (tmp_path / "text.pt").write_text("hello")
    unverified_card("text.pt")
    with pytest.raises(MedAdaptError, match="corrupt"):
        load_model(tmp_path / "text.pt")

    weights = card_path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(MedAdaptError, match="does not match its model card"):
        load_model(card_path)


# ------------------------------------------------------------------------------------------ keypoints
SOURCE_SHAPE = (20, 20, 10)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("i,j,k,kind\nnan,2,3,positive\n", "finite"),
        ("i,j,k,kind\ninf,2,3,positive\n", "finite"),
        ("i,j,k,kind\n-inf,2,3,negative\n", "finite"),
        ("i,j,k,kind\n1e308,2,3,positive\n", "outside the image"),
        ("i,j,k,kind\n-1,2,3,positive\n", "outside the image"),
        ("i,j,k,kind\nx,2,3,positive\n", "must be numbers"),
        ("i,j,k,kind\n1,2,3,maybe\n", "positive or negative"),
        ("i,j,k,kind\n1,2,3\n", "positive or negative"),
        ("i,j,k,kind\n", "no points"),
        ("", "header must be"),
        ("x,y,z,label\n1,2,3,positive\n", "header must be"),
    ],
)
def test_keypoint_csv_problems_name_the_line(tmp_path, content, words):
    path = tmp_path / "points.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CLIError) as caught:
        read_points(path, SOURCE_SHAPE)
    assert_clear(caught.value, words, str(path))


@pytest.mark.parametrize(
    "raw",
    [
        "\ufeffi,j,k,kind\n1,2,3,positive\n4,5,6,negative\n".encode(),  # Excel "CSV UTF-8"
        b"i;j;k;kind\n1;2;3;positive\n4;5;6;negative\n",  # European Excel
        b"i\tj\tk\tkind\n1\t2\t3\tpositive\n4\t5\t6\tnegative\n",
        "I, J, K, Kind, comment\n1,2,3,Positive,tumeur nécrosée\n4,5,6,negative,\n".encode("latin-1"),
        b"i,j,k,kind\r\n1.2,2,3,positive\r\n4,5,6,negative\r\n",
    ],
)
def test_keypoint_csvs_as_spreadsheets_write_them(tmp_path, raw):
    path = tmp_path / "points.csv"
    path.write_bytes(raw)
    positives, negatives = read_points(path, SOURCE_SHAPE)
    assert positives.tolist() == [[1, 2, 3]] and negatives.tolist() == [[4, 5, 6]]


def test_keypoint_path_that_is_a_folder(tmp_path):
    with pytest.raises(CLIError) as caught:
        read_points(tmp_path, SOURCE_SHAPE)
    assert_clear(caught.value, "is a folder")


# ------------------------------------------------------------------------------------------ output paths
@pytest.fixture
def case_files(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "case"
    folder.mkdir()
    return valid_nifti(folder / "flair.nii.gz"), folder


def _forbid_model_loading(monkeypatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    # where the commands look the helpers up (patching _common would leak into modules imported meanwhile)
    for command in (cli_segment, cli_tts):
        monkeypatch.setattr(command, "load_checked_model", fail)
        monkeypatch.setattr(command, "load_images", fail)


def test_output_paths_are_checked_before_the_model_runs(case_files, tmp_path, monkeypatch, capsys):
    flair, folder = case_files
    flair_bytes = flair.read_bytes()
    points = tmp_path / "points.csv"
    points.write_text("i,j,k,kind\n1,2,3,positive\n")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    existing = read_only / "old.nii.gz"
    existing.write_bytes(b"approved labels")
    existing.chmod(0o444)
    read_only.chmod(0o555)
    _forbid_model_loading(monkeypatch)
    cases = {
        str(flair): "also an input",
        str(folder / "missing" / "out.nii.gz"): "does not exist",
        str(read_only / "new.nii.gz"): "read-only",
        str(existing): "read-only",
        str(folder): "must be a .nii.gz",
        str(tmp_path / "dir.nii.gz"): "is a folder",
        str(flair / "out.nii.gz"): "not a folder",
    }
    (tmp_path / "dir.nii.gz").mkdir()
    try:
        for out, words in cases.items():
            for command in (
                ["segment", "--image", f"flair={flair}", "--out", out],
                ["tts", "--image", f"flair={flair}", "--points", str(points), "--out", out],
            ):
                assert main(command) == 2, command
                err = capsys.readouterr().err
                no_traceback(err)
                assert_clear(err, words)
    finally:
        read_only.chmod(0o755)
    assert flair.read_bytes() == flair_bytes and existing.read_bytes() == b"approved labels"
    assert points.read_text() == "i,j,k,kind\n1,2,3,positive\n"


def test_json_reports_into_missing_or_read_only_folders(case_files, tmp_path, capsys):
    flair, folder = case_files
    labels = folder / "seg.nii.gz"
    save_labels(np.ones(read_geometry(flair).display_shape, np.uint8), read_geometry(flair), labels)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for target, words in ((tmp_path / "missing" / "r.json", "does not exist"), (read_only / "r.json", "read-only")):
            for command in (
                ["evaluate", "--pred", str(labels), "--ref", str(labels), "--json", str(target)],
                ["shift-score", "--image", f"flair={flair}", "--json", str(target)],
            ):
                assert main(command) == 2
                err = capsys.readouterr().err
                no_traceback(err)
                assert_clear(err, words, "--json")
    finally:
        read_only.chmod(0o755)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(labels), "--ref", str(labels), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"]["WT"]["dice"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case", "read_only", "report.json"]


def test_check_output_path_accepts_a_writable_new_file(tmp_path):
    assert check_output_path(tmp_path / "new.nii.gz") == tmp_path / "new.nii.gz"
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing


@pytest.mark.slow
def test_sigterm_during_a_save_leaves_no_temporary_file(tmp_path):
    flair = valid_nifti(tmp_path / "flair.nii.gz")
    out = tmp_path / "labels.nii.gz"
    started = tmp_path / "saving"
    script = textwrap.dedent(
        f"""
        import sys, time
        import nibabel
        from pathlib import Path
        real_save = nibabel.save

        def slow_save(image, filename):
            real_save(image, filename)  # the temporary file exists now
            Path({str(started)!r}).write_text("1")
            time.sleep(60)

        nibabel.save = slow_save
        from napari_medadapt.cli import CLIError, main
        sys.exit(main(["segment", "--image", "flair={flair}", "--out", "{out}", "--device", "cpu"]))
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if started.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), "the save never started"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flair.nii.gz", "saving"]


def test_save_model_refuses_a_read_only_card(tmp_path, save_tiny_model):
    card = ModelCard.from_dict(_card_dict())
    card_path = save_tiny_model(tmp_path, card)
    card_path.chmod(0o444)
    model = load_model(card_path)
    with pytest.raises(MedAdaptError, match="read-only"):
        save_model(model, card_path)
    assert card_path.stat().st_mode & 0o777 == 0o444


