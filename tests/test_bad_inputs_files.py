"""A corpus of malformed and unusual files, as users' disks hold them, through the reader, the writer and
the command line: damaged NIfTI headers, label maps, case folders.

For every input the contract is the same: either it works, or one clear message names the file and the
fix; no traceback, and nothing the user had is lost (inputs byte-identical, no partial or temporary files,
read-only files never replaced).
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest
from _corpus import AFFINE, SHAPE, assert_clear, both, edit_header, no_traceback, pack, valid_nifti

from napari_medadapt._reader import napari_get_reader, read_into_viewer, read_paths
from napari_medadapt.cli import main
from napari_medadapt.core.cases import load_case
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.labelmaps import is_label_file, label_class_names, save_labels
from napari_medadapt.core.volume import read_geometry

DAMAGED_HEADERS: dict[str, Callable[[bytearray], None]] = {
    "huge_dims": pack("<8h", 40, 3, 30000, 30000, 30000, 1, 1, 1, 1),
    "more_voxels_than_file": pack("<8h", 40, 3, 1000, 1000, 100, 1, 1, 1, 1),
    "unknown_datatype": pack("<h", 70, 999),
    "negative_dim": pack("<h", 42, -5),
    "zero_dim": pack("<h", 42, 0),
    "dim0_zero": pack("<h", 40, 0),
    "dim0_seven_garbage": pack("<8h", 40, 7, 10, 12, 8, 2, 3, 4, 5),
    "dim0_nine": pack("<h", 40, 9),
    "vox_offset_beyond_file": pack("<f", 108, 1e9),
    "nan_pixdim_no_orientation": both(pack("<h", 252, 0), pack("<h", 254, 0), pack("<f", 80, float("nan"))),
    "nan_qform": both(pack("<h", 252, 1), pack("<h", 254, 0), pack("<f", 256, float("nan"))),
    "zero_sform": both(pack("<h", 252, 0), pack("<h", 254, 1), pack("<12f", 280, *([0.0] * 12))),
    "bad_magic": lambda raw: raw.__setitem__(slice(344, 348), b"abc\0"),
    "truncated_voxels": lambda raw: raw.__delitem__(slice(600, None)),
    "header_only": lambda raw: raw.__delitem__(slice(348, None)),
    "empty_file": lambda raw: raw.__delitem__(slice(0, None)),
    "text_file": lambda raw: raw.__setitem__(slice(0, None), b"patient export, see attached DICOM\n" * 20),
}
# unusual but usable: these must load
USABLE_HEADERS: dict[str, Callable[[bytearray], None]] = {
    "nan_scl_slope": pack("<f", 112, float("nan")),
    "wrong_bitpix": pack("<h", 72, 3),
    "wrong_sizeof_hdr": pack("<i", 0, 12),
    "no_orientation_codes": both(pack("<h", 252, 0), pack("<h", 254, 0)),
    "negative_pixdim_no_orientation": both(pack("<h", 252, 0), pack("<h", 254, 0), pack("<f", 80, -1.0)),
}




@pytest.mark.parametrize("name", sorted(DAMAGED_HEADERS))
def test_damaged_headers_name_the_file_in_reader_and_cli(tmp_path, name, capsys):
    path = edit_header(tmp_path / f"{name}.nii", DAMAGED_HEADERS[name])
    before = path.read_bytes()
    with pytest.raises(MedAdaptError) as caught:
        read_paths(str(path))
    assert_clear(caught.value, str(path))
    assert len(str(caught.value)) < 600
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", "--image", f"flair={path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert_clear(err, str(path), "error:")
    assert not out.exists() and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing else written


@pytest.mark.parametrize("name", sorted(USABLE_HEADERS))
def test_unusual_but_usable_headers_load(tmp_path, name):
    path = edit_header(tmp_path / f"{name}.nii", USABLE_HEADERS[name])
    (data, kwargs, kind), = read_paths(str(path))
    assert kind == "image" and data.shape == SHAPE[::-1] and np.isfinite(data).all()


def test_damaged_compressed_files(tmp_path, capsys):
    valid = valid_nifti(tmp_path / "valid.nii.gz")
    blob = valid.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "flipped.nii.gz").write_bytes(blob[:40] + bytes(b ^ 0xFF for b in blob[40:80]) + blob[80:])
    source = edit_header(tmp_path / "huge_src.nii", DAMAGED_HEADERS["huge_dims"])
    with open(source, "rb") as raw, gzip.open(tmp_path / "huge.nii.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    for name in ("cut.nii.gz", "flipped.nii.gz", "huge.nii.gz"):
        with pytest.raises(MedAdaptError) as caught:
            read_paths(str(tmp_path / name))
        assert_clear(caught.value, name)
    assert_clear(caught.value, "memory")


# ------------------------------------------------------------------------------------------ label maps
def test_labels_saved_by_the_plugin_reopen_as_labels_with_their_class_names(tmp_path):
    image = valid_nifti(tmp_path / "flair.nii.gz")
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
    path = valid_nifti(tmp_path / name, data)
    (_data, _kwargs, found), = read_paths(str(path))
    assert found == kind


def test_writer_refuses_read_only_files_and_inputs(tmp_path):
    image = valid_nifti(tmp_path / "flair.nii.gz")
    geometry = read_geometry(image)
    labels = np.ones(geometry.display_shape, np.uint8)
    protected = save_labels(labels, geometry, tmp_path / "approved_seg.nii.gz")
    protected.chmod(0o444)
    before = protected.read_bytes()
    with pytest.raises(MedAdaptError) as caught:
        save_labels(labels * 2, geometry, protected)
    assert_clear(caught.value, "read-only", str(protected))
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
    valid_nifti(nested / "patient1" / "flair.nii.gz")
    assert napari_get_reader(str(nested)) is read_into_viewer  # taken, to say which folder to open
    with pytest.raises(MedAdaptError) as caught:
        read_paths(str(nested))
    assert_clear(caught.value, "patient1", "Open one of them")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None

    twice = tmp_path / "twice"
    twice.mkdir()
    valid_nifti(twice / "flair.nii.gz")
    valid_nifti(twice / "T2-FLAIR.nii.gz")
    with pytest.raises(MedAdaptError, match="read as 'flair'"):
        load_case(twice)

    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    valid_nifti(labels_only / "seg.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(MedAdaptError, match="no image file"):
        load_case(labels_only)

    grids = tmp_path / "grids"
    grids.mkdir()
    valid_nifti(grids / "t1.nii.gz")
    valid_nifti(grids / "t2.nii.gz", affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MedAdaptError, match="not on one voxel grid"):
        load_case(grids)

    broken = tmp_path / "broken"
    broken.mkdir()
    valid_nifti(broken / "t1.nii.gz")
    (broken / "t2.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    (broken / "notes.txt").write_text("not an image")
    volume, _labels = load_case(broken)  # a dangling link is not a file: skipped, like notes.txt
    assert volume.channels == ("t1",)


def test_case_members_keep_their_own_grid_and_codes(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    valid_nifti(case / "t1.nii.gz")
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


def test_what_else_a_users_disk_holds(tmp_path):
    case = tmp_path / "Patient 12 é"  # spaces and accents in folder names
    case.mkdir()
    valid_nifti(case / "FLAIR.NII.GZ")  # upper-case extension
    (case / "._FLAIR.NII.GZ").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")  # a Mac's USB-drive copy
    (case / ".DS_Store").write_bytes(b"\x00")
    nib.save(nib.Nifti2Image(np.ones(SHAPE, np.int16), AFFINE), str(case / "t2.nii"))  # NIfTI-2
    layers = read_paths(str(case))
    assert [kwargs["name"] for _d, kwargs, _k in layers] == ["t2", "flair"]
    (tmp_path / "scan.hdr").write_bytes(b"analyze header")  # an Analyze pair is not offered to this reader
    assert napari_get_reader(str(tmp_path / "scan.hdr")) is None
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
