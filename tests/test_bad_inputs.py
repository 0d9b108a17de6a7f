"""A corpus of malformed and unusual inputs, as users' disks hold them, through the reader, the writer, the
model-card loader and the command line.

For every input the contract is the same: either it works, or one clear message names the file (or field)
and the fix; no traceback, and nothing the user had is lost (inputs byte-identical, no partial or temporary
files, read-only files never replaced).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medadapt._reader import napari_get_reader, read_paths
from napari_medadapt.cli import CLIError, main
from napari_medadapt.cli.tts import read_points
from napari_medadapt.core.cases import load_case
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.files import check_output_path
from napari_medadapt.core.labelmaps import is_label_file, label_class_names, save_labels
from napari_medadapt.core.models import ModelCard, default_architecture, load_model, save_model
from napari_medadapt.core.volume import read_geometry

SHAPE = (10, 12, 8)
AFFINE = np.diag([0.9, 0.9, 2.0, 1.0])


def _valid_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 500, SHAPE).astype(np.int16) if data is None else data
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _edit_header(path: Path, edit: Callable[[bytearray], None]) -> Path:
    """Apply a byte edit to a valid uncompressed NIfTI-1 file (header fields at their standard offsets)."""
    _valid_nifti(path)
    raw = bytearray(path.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    return path


def _pack(fmt: str, offset: int, *values: float) -> Callable[[bytearray], None]:
    return lambda raw: struct.pack_into(fmt, raw, offset, *values)


def _both(*edits: Callable[[bytearray], None]) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        for one in edits:
            one(raw)

    return edit


# name -> header edit; dim at 40 (8 int16), datatype 70, bitpix 72, pixdim 76 (8 float32), vox_offset 108,
# scl_slope 112, qform_code 252, sform_code 254, quatern/offsets 256.., srow 280.., magic 344
DAMAGED_HEADERS: dict[str, Callable[[bytearray], None]] = {
    "huge_dims": _pack("<8h", 40, 3, 30000, 30000, 30000, 1, 1, 1, 1),
    "more_voxels_than_file": _pack("<8h", 40, 3, 1000, 1000, 100, 1, 1, 1, 1),
    "unknown_datatype": _pack("<h", 70, 999),
    "negative_dim": _pack("<h", 42, -5),
    "zero_dim": _pack("<h", 42, 0),
    "dim0_zero": _pack("<h", 40, 0),
    "dim0_seven_garbage": _pack("<8h", 40, 7, 10, 12, 8, 2, 3, 4, 5),
    "dim0_nine": _pack("<h", 40, 9),
    "vox_offset_beyond_file": _pack("<f", 108, 1e9),
    "nan_pixdim_no_orientation": _both(_pack("<h", 252, 0), _pack("<h", 254, 0), _pack("<f", 80, float("nan"))),
    "nan_qform": _both(_pack("<h", 252, 1), _pack("<h", 254, 0), _pack("<f", 256, float("nan"))),
    "zero_sform": _both(_pack("<h", 252, 0), _pack("<h", 254, 1), _pack("<12f", 280, *([0.0] * 12))),
    "bad_magic": lambda raw: raw.__setitem__(slice(344, 348), b"abc\0"),
    "truncated_voxels": lambda raw: raw.__delitem__(slice(600, None)),
    "header_only": lambda raw: raw.__delitem__(slice(348, None)),
    "empty_file": lambda raw: raw.__delitem__(slice(0, None)),
    "text_file": lambda raw: raw.__setitem__(slice(0, None), b"patient export, see attached DICOM\n" * 20),
}
# unusual but usable: these must load
USABLE_HEADERS: dict[str, Callable[[bytearray], None]] = {
    "nan_scl_slope": _pack("<f", 112, float("nan")),
    "wrong_bitpix": _pack("<h", 72, 3),
    "wrong_sizeof_hdr": _pack("<i", 0, 12),
    "no_orientation_codes": _both(_pack("<h", 252, 0), _pack("<h", 254, 0)),
    "negative_pixdim_no_orientation": _both(_pack("<h", 252, 0), _pack("<h", 254, 0), _pack("<f", 80, -1.0)),
}


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def _assert_clear(err: BaseException | str, *words: str) -> None:
    message = str(err)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("name", sorted(DAMAGED_HEADERS))
def test_damaged_headers_name_the_file_in_reader_and_cli(tmp_path, name, capsys):
    path = _edit_header(tmp_path / f"{name}.nii", DAMAGED_HEADERS[name])
    before = path.read_bytes()
    with pytest.raises(MedAdaptError) as caught:
        read_paths(str(path))
    _assert_clear(caught.value, str(path))
    assert len(str(caught.value)) < 600
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", "--image", f"flair={path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    _assert_clear(err, str(path), "error:")
    assert not out.exists() and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing else written


@pytest.mark.parametrize("name", sorted(USABLE_HEADERS))
def test_unusual_but_usable_headers_load(tmp_path, name):
    path = _edit_header(tmp_path / f"{name}.nii", USABLE_HEADERS[name])
    (data, kwargs, kind), = read_paths(str(path))
    assert kind == "image" and data.shape == SHAPE[::-1] and np.isfinite(data).all()


def test_damaged_compressed_files(tmp_path, capsys):
    valid = _valid_nifti(tmp_path / "valid.nii.gz")
    blob = valid.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "flipped.nii.gz").write_bytes(blob[:40] + bytes(b ^ 0xFF for b in blob[40:80]) + blob[80:])
    source = _edit_header(tmp_path / "huge_src.nii", DAMAGED_HEADERS["huge_dims"])
    with open(source, "rb") as raw, gzip.open(tmp_path / "huge.nii.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    for name in ("cut.nii.gz", "flipped.nii.gz", "huge.nii.gz"):
        with pytest.raises(MedAdaptError) as caught:
            read_paths(str(tmp_path / name))
        _assert_clear(caught.value, name)
    _assert_clear(caught.value, "memory")


# ------------------------------------------------------------------------------------------ label maps
def test_labels_saved_by_the_plugin_reopen_as_labels_with_their_class_names(tmp_path):
    image = _valid_nifti(tmp_path / "flair.nii.gz")
    geometry = read_geometry(image)
    labels = np.zeros(geometry.display_shape, np.uint8)
    labels[2:4, 3:6, 4:7] = 2
    names = {0: "background", 2: "edema"}
    saved = save_labels(labels, geometry, tmp_path / "manual.nii.gz", class_names=names)  # no "seg" in the name
    assert is_label_file(saved) and label_class_names(saved) == names
    (data, kwargs, kind), = read_paths(str(saved))
    assert kind == "labels" and kwargs["features"] == {"index": [0, 2], "class": ["background", "edema"]}
    np.testing.assert_array_equal(data, labels)
    # saving again replaces the old class table instead of adding a second one
    save_labels(labels, geometry, saved, class_names={2: "oedema"})
    assert label_class_names(saved) == {2: "oedema"}
    assert sum(e.get_code() == 6 for e in nib.load(str(saved)).header.extensions) == 1


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("flair_masked.nii.gz", np.random.default_rng(1).normal(100, 20, SHAPE).astype(np.float32), "image"),
        ("brainmask.nii.gz", np.ones(SHAPE, np.uint8), "labels"),
        ("aseg.nii.gz", np.ones(SHAPE, np.int16), "labels"),
        ("tumour_seg.nii.gz", np.ones(SHAPE, np.float32), "labels"),  # float, but whole numbers
        ("tumour_seg_prob.nii.gz", np.full(SHAPE, 0.25, np.float32), "image"),  # a probability map
        ("segmentation.nii.gz", np.zeros(SHAPE, np.uint8), "labels"),
        ("t1_segmented.nii.gz", np.ones(SHAPE, np.uint8), "labels"),
    ],
)
def test_label_maps_are_recognised_by_whole_words_and_content(tmp_path, name, data, kind):
    path = _valid_nifti(tmp_path / name, data)
    (_data, _kwargs, found), = read_paths(str(path))
    assert found == kind


def test_writer_refuses_read_only_files_and_inputs(tmp_path):
    image = _valid_nifti(tmp_path / "flair.nii.gz")
    geometry = read_geometry(image)
    labels = np.ones(geometry.display_shape, np.uint8)
    protected = save_labels(labels, geometry, tmp_path / "approved_seg.nii.gz")
    protected.chmod(0o444)
    before = protected.read_bytes()
    with pytest.raises(MedAdaptError) as caught:
        save_labels(labels * 2, geometry, protected)
    _assert_clear(caught.value, "read-only", str(protected))
    assert protected.read_bytes() == before
    image_bytes = image.read_bytes()
    with pytest.raises(MedAdaptError, match="also an input"):
        save_labels(labels, geometry, image, inputs=[image])
    assert image.read_bytes() == image_bytes
    read_only_folder = tmp_path / "archive"
    read_only_folder.mkdir()
    read_only_folder.chmod(0o555)
    with pytest.raises(MedAdaptError, match="read-only"):
        save_labels(labels, geometry, read_only_folder / "new.nii.gz")
    read_only_folder.chmod(0o755)
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))


# ------------------------------------------------------------------------------------------ case folders
def test_case_folders(tmp_path):
    nested = tmp_path / "cohort"
    (nested / "patient1").mkdir(parents=True)
    _valid_nifti(nested / "patient1" / "flair.nii.gz")
    assert napari_get_reader(str(nested)) is read_paths  # taken, to say which folder to open
    with pytest.raises(MedAdaptError) as caught:
        read_paths(str(nested))
    _assert_clear(caught.value, "patient1", "Open one of them")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None

    twice = tmp_path / "twice"
    twice.mkdir()
    _valid_nifti(twice / "flair.nii.gz")
    _valid_nifti(twice / "T2-FLAIR.nii.gz")
    with pytest.raises(MedAdaptError, match="read as 'flair'"):
        load_case(twice)

    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    _valid_nifti(labels_only / "seg.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(MedAdaptError, match="no image file"):
        load_case(labels_only)

    grids = tmp_path / "grids"
    grids.mkdir()
    _valid_nifti(grids / "t1.nii.gz")
    _valid_nifti(grids / "t2.nii.gz", affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MedAdaptError, match="not on one voxel grid"):
        load_case(grids)

    broken = tmp_path / "broken"
    broken.mkdir()
    _valid_nifti(broken / "t1.nii.gz")
    (broken / "t2.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    (broken / "notes.txt").write_text("not an image")
    volume, _labels = load_case(broken)  # a dangling link is not a file: skipped, like notes.txt
    assert volume.channels == ("t1",)


def test_case_members_keep_their_own_grid_and_codes(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    _valid_nifti(case / "t1.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] += 2e-5  # within the grid tolerance: one case
    t1c = nib.Nifti1Image(np.ones(SHAPE, np.int16), shifted)
    t1c.header.set_qform(shifted, code=1)
    t1c.header.set_sform(shifted, code=2)
    nib.save(t1c, str(case / "t1c.nii.gz"))
    layers = {kwargs["name"]: kwargs for _d, kwargs, _k in read_paths(str(case))}
    geometry = layers["t1c"]["metadata"]["medadapt"]["geometry"]
    saved = save_labels(np.ones(geometry.display_shape, np.uint8), geometry, tmp_path / "drawn.nii.gz")
    header = nib.load(str(saved)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(nib.load(str(saved)).affine, shifted, atol=1e-7)


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
    _assert_clear(caught.value, words, str(path))


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
    _assert_clear(caught.value, words, str(path))


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
    _assert_clear(caught.value, "is a folder")


# ------------------------------------------------------------------------------------------ output paths
@pytest.fixture
def case_files(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "case"
    folder.mkdir()
    return _valid_nifti(folder / "flair.nii.gz"), folder


def _forbid_model_loading(monkeypatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr("napari_medadapt.cli.segment.load_checked_model", fail)
    monkeypatch.setattr("napari_medadapt.cli.tts.load_checked_model", fail)
    monkeypatch.setattr("napari_medadapt.cli._common.load_images", fail)


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
                _no_traceback(err)
                _assert_clear(err, words)
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
                _no_traceback(err)
                _assert_clear(err, words, "--json")
    finally:
        read_only.chmod(0o755)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(labels), "--ref", str(labels), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"]["WT"]["dice"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case", "read_only", "report.json"]


def test_check_output_path_accepts_a_writable_new_file(tmp_path):
    assert check_output_path(tmp_path / "new.nii.gz") == tmp_path / "new.nii.gz"
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing


def test_sigterm_during_a_save_leaves_no_temporary_file(tmp_path):
    flair = _valid_nifti(tmp_path / "flair.nii.gz")
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


def test_what_else_a_users_disk_holds(tmp_path):
    case = tmp_path / "Patient 12 é"  # spaces and accents in folder names
    case.mkdir()
    _valid_nifti(case / "FLAIR.NII.GZ")  # upper-case extension
    (case / "._FLAIR.NII.GZ").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")  # a Mac's USB-drive copy
    (case / ".DS_Store").write_bytes(b"\x00")
    nib.save(nib.Nifti2Image(np.ones(SHAPE, np.int16), AFFINE), str(case / "t2.nii"))  # NIfTI-2
    layers = read_paths(str(case))
    assert [kwargs["name"] for _d, kwargs, _k in layers] == ["t2", "flair"]
    (tmp_path / "scan.hdr").write_bytes(b"analyze header")  # an Analyze pair is not offered to this reader
    assert napari_get_reader(str(tmp_path / "scan.hdr")) is None
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
