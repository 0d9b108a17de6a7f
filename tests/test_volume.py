"""Geometry, reading and atomic label writing of NIfTI volumes (napari_medadapt.core.volume)."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _data import REAL_DATA, SAMPLE_CASE, needs_real_data

from napari_medadapt.core import volume as volume_module
from napari_medadapt.core.cases import case_files, load_case
from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.files import OutputError
from napari_medadapt.core.labelmaps import is_label_name, load_labels, save_labels
from napari_medadapt.core.volume import (
    Geometry,
    Volume,
    VolumeWarning,
    canonical_modality,
    load_volume,
    read_geometry,
)

GLIOMA = SAMPLE_CASE
CT = REAL_DATA / "ct_abdomen_totalseg_example"
TUMOUR_CROP = (slice(56, 108), slice(52, 120), slice(58, 116))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def _affine(matrix: np.ndarray, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "LPS": _affine(np.diag([-1.0, -1.0, 1.0])),
    "RAS": _affine(np.diag([1.0, 1.0, 1.0])),
    "LAS": _affine(np.diag([-1.0, 1.0, 1.0])),
    "anisotropic_RAS": _affine(np.diag([0.5, 0.5, 3.0])),
    "permuted_PIR": _affine(np.array([[0.0, 0.0, 1.2], [-0.9, 0.0, 0.0], [0.0, -2.0, 0.0]])),
    "permuted_SLA": _affine(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.5, 0.0, 0.0]])),
    "oblique": _affine(_rotation(2, 25.0) @ _rotation(0, -12.0) @ np.diag([0.8, -0.7, 2.5])),
}


def _write(
    path: Path, data: np.ndarray, affine: np.ndarray, qform: int = 1, sform: int = 2, kind=nib.Nifti1Image
) -> Path:
    image = kind(data, affine)
    image.header.set_qform(affine, code=qform)
    image.header.set_sform(affine, code=sform)
    nib.save(image, str(path))
    return path


def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return (affine @ np.c_[indices, np.ones(len(indices))].T).T[:, :3]


def _assert_roundtrip(src_path: Path, out_path: Path) -> None:
    """Labels drawn on the display grid land on the same world coordinates in the saved file."""
    vol = load_volume(src_path)
    geometry = vol.geometry
    source = nib.load(str(src_path))
    raw = np.asarray(source.dataobj, dtype=np.float32).reshape(geometry.source_shape)
    # every display voxel shows the source voxel at the same world position
    rng = np.random.default_rng(0)
    zyx = np.stack([rng.integers(0, n, 50) for n in geometry.display_shape], axis=1)
    ijk = np.rint(_world(np.linalg.inv(source.affine), _world(geometry.display_affine, zyx))).astype(int)
    np.testing.assert_array_equal(ijk, geometry.display_index_to_source(zyx))
    np.testing.assert_array_equal(vol.data[0][tuple(zyx.T)], raw[tuple(ijk.T)])
    np.testing.assert_array_equal(geometry.source_index_to_display(ijk), zyx)

    labels = np.zeros(geometry.display_shape, np.uint8)
    labels[tuple(zyx[:20].T)] = 3
    labels[tuple(zyx[20:25].T)] = 7
    save_labels(labels, geometry, out_path)

    saved = nib.load(str(out_path))
    assert saved.shape == geometry.source_shape == source.shape[:3]
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
    assert int(saved.header["qform_code"]) == int(source.header["qform_code"])
    assert int(saved.header["sform_code"]) == int(source.header["sform_code"])
    np.testing.assert_allclose(saved.header.get_qform(), source.header.get_qform(), atol=1e-6)
    assert nib.aff2axcodes(saved.affine) == nib.aff2axcodes(source.affine)
    assert saved.get_data_dtype() == np.uint8
    saved_data = np.asarray(saved.dataobj)
    for value in (3, 7):
        world_saved = _world(saved.affine, np.argwhere(saved_data == value))
        world_drawn = _world(geometry.display_affine, np.argwhere(labels == value))
        order_saved = np.lexsort(np.round(world_saved, 3).T)
        order_drawn = np.lexsort(np.round(world_drawn, 3).T)
        np.testing.assert_allclose(world_saved[order_saved], world_drawn[order_drawn], atol=1e-4)
    np.testing.assert_array_equal(load_labels(out_path, geometry), labels)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_roundtrip_synthetic_orientations(tmp_path, name):
    data = np.arange(9 * 7 * 5, dtype=np.int16).reshape(9, 7, 5)
    src = _write(tmp_path / "t1.nii.gz", data, AFFINES[name])
    _assert_roundtrip(src, tmp_path / "labels.nii.gz")


def test_nifti2_roundtrip_keeps_format_and_codes(tmp_path):
    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    src = _write(tmp_path / "t2.nii.gz", data, AFFINES["oblique"], qform=3, sform=4, kind=nib.Nifti2Image)
    _assert_roundtrip(src, tmp_path / "labels.nii.gz")
    assert isinstance(nib.load(str(tmp_path / "labels.nii.gz")), nib.Nifti2Image)


def test_distinct_qform_sform_and_no_codes_preserved(tmp_path):
    sform, qform = AFFINES["LPS"], AFFINES["LPS"].copy()
    qform[:3, 3] += 5.0
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), sform)
    image.header.set_sform(sform, code=2)
    image.header.set_qform(qform, code=1)
    nib.save(image, str(tmp_path / "t1.nii"))
    bare = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    bare.header.set_qform(None, code=0)
    bare.header.set_sform(None, code=0)
    nib.save(bare, str(tmp_path / "t2.nii"))
    for name in ("t1.nii", "t2.nii"):
        source = nib.load(str(tmp_path / name))
        geometry = load_volume(tmp_path / name).geometry
        saved = nib.load(str(save_labels(np.ones(geometry.display_shape, np.uint8), geometry, tmp_path / "s.nii")))
        for code in ("qform_code", "sform_code"):
            assert int(saved.header[code]) == int(source.header[code])
        np.testing.assert_allclose(saved.header.get_qform(), source.header.get_qform(), atol=1e-6)
        np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)


def test_display_orientation_is_lps_zyx():
    for name, affine in AFFINES.items():
        geometry = Geometry(affine, (9, 7, 5), nib.Nifti1Header())
        # display axes x, y, z point to the patient's left, posterior, superior
        xyz_affine = geometry.display_affine[:, [2, 1, 0, 3]]
        assert nib.aff2axcodes(xyz_affine) == ("L", "P", "S"), name
    aniso = Geometry(AFFINES["anisotropic_RAS"], (9, 7, 5), nib.Nifti1Header())
    assert aniso.spacing == pytest.approx((3.0, 0.5, 0.5))
    assert aniso.display_shape == (5, 7, 9)


def test_oblique_keeps_exact_affine_and_nearest_lps_display(tmp_path):
    src = _write(tmp_path / "ct.nii", np.ones((6, 5, 4), np.float32), AFFINES["oblique"])
    geometry = load_volume(src).geometry
    np.testing.assert_allclose(geometry.source_affine, nib.load(str(src)).affine)
    assert geometry.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_real_lps_glioma_crop_roundtrip(tmp_path):
    cropped = nib.load(str(GLIOMA / "t1.nii.gz")).slicer[TUMOUR_CROP]
    nib.save(cropped, str(tmp_path / "t1.nii.gz"))
    geometry = read_geometry(tmp_path / "t1.nii.gz")
    assert geometry.source_axcodes == ("L", "P", "S")
    _assert_roundtrip(tmp_path / "t1.nii.gz", tmp_path / "seg_new.nii.gz")


def test_real_glioma_headers_and_labels():
    geometry = read_geometry(GLIOMA / "flair.nii.gz")
    assert geometry.source_shape == (240, 240, 155)
    assert geometry.display_shape == (155, 240, 240)
    assert int(geometry.source_header["qform_code"]) == 2
    labels = load_labels(GLIOMA / "seg_fusion.nii.gz", geometry)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert int((labels == 2).sum()) == 20862  # edema voxel count from SOURCE.txt


@needs_real_data
def test_real_ras_ct_roundtrip(tmp_path):
    vol = load_volume(CT / "ct.nii.gz")
    assert vol.channels == ("ct",)
    assert vol.geometry.source_axcodes == ("R", "A", "S")
    assert vol.data.min() < -500  # HU kept
    _assert_roundtrip(CT / "ct.nii.gz", tmp_path / "ct_labels.nii.gz")
    organs = load_labels(CT / "seg.nii.gz", vol.geometry)
    assert organs.shape == vol.geometry.display_shape and organs.max() > 10


def test_2d_plus_channel(tmp_path):
    data = np.stack([np.full((8, 6), c, np.float32) for c in range(3)], axis=-1)[:, :, None, :]
    src = _write(tmp_path / "slice.nii.gz", data, AFFINES["RAS"])
    vol = load_volume(src, name="rgbish")
    assert vol.channels == ("rgbish_0", "rgbish_1", "rgbish_2")
    assert vol.data.shape == (3, 1, 6, 8)
    np.testing.assert_array_equal(vol.data[:, 0, 0, 0], [0, 1, 2])
    labels = np.zeros((1, 6, 8), np.uint8)
    labels[0, 2, 3] = 1
    out = save_labels(labels, vol.geometry, tmp_path / "slice_seg.nii.gz")
    saved = nib.load(str(out))
    assert saved.shape == (8, 6, 1)
    np.testing.assert_allclose(saved.affine, nib.load(str(src)).affine, atol=1e-6)
    five_d = _write(tmp_path / "vector.nii.gz", data[:, :, :, None, :], AFFINES["RAS"])
    assert load_volume(five_d).data.shape == (3, 1, 6, 8)


def test_plain_2d_file_is_one_slice(tmp_path):
    src = _write(tmp_path / "xray.nii", np.ones((8, 6), np.float32), AFFINES["LPS"])
    assert load_volume(src).data.shape == (1, 1, 6, 8)


def test_time_series_takes_first_volume_and_warns(tmp_path):
    data = np.stack([np.full((4, 4, 3), t, np.int16) for t in (5, 6, 7)], axis=-1)
    src = _write(tmp_path / "fmri.nii.gz", data, AFFINES["RAS"])
    with pytest.warns(VolumeWarning, match="first volume"):
        vol = load_volume(src)
    assert vol.data.shape == (1, 3, 4, 4) and np.all(vol.data == 5)


@pytest.mark.parametrize("shape", [(4, 4, 3, 2, 2), (4, 4, 3, 1, 2, 2)])
def test_unsupported_dimensions(tmp_path, shape):
    src = _write(tmp_path / "odd.nii.gz", np.zeros(shape, np.float32), AFFINES["RAS"])
    with pytest.raises(VolumeError, match="not supported"):
        load_volume(src)


def test_zero_size_axis(tmp_path):
    src = _write(tmp_path / "empty.nii", np.zeros((0, 4, 4), np.int16), AFFINES["RAS"])
    with pytest.raises(VolumeError, match="empty axis"):
        load_volume(src)


def test_nan_and_inf_replaced_with_warning(tmp_path):
    data = np.ones((4, 4, 3), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    src = _write(tmp_path / "t2.nii.gz", data, AFFINES["RAS"])
    with pytest.warns(VolumeWarning, match="2 NaN/Inf"):
        vol = load_volume(src)
    assert np.isfinite(vol.data).all() and vol.data.sum() == data.size - 2


def test_scaled_integers_applied_on_read_and_reset_on_write(tmp_path):
    raw = np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3)
    src = _write(tmp_path / "t1.nii", raw, AFFINES["LAS"])
    with open(src, "r+b") as handle:  # scl_slope, scl_inter live at bytes 112..120 of a NIfTI-1 header
        handle.seek(112)
        handle.write(struct.pack("<ff", 2.0, -10.0))
    proxy = nib.load(str(src)).dataobj
    assert (proxy.slope, proxy.inter) == (2.0, -10.0)
    vol = load_volume(src)
    expected = vol.geometry.to_display(raw.astype(np.float32) * 2 - 10)
    np.testing.assert_array_equal(vol.data[0], expected)
    out = save_labels(np.ones(vol.geometry.display_shape, np.int64), vol.geometry, tmp_path / "seg.nii.gz")
    saved = nib.load(str(out))
    assert saved.get_data_dtype() == np.uint8
    assert (saved.dataobj.slope, saved.dataobj.inter) == (1.0, 0.0)
    assert np.all(np.asarray(saved.dataobj) == 1)


def test_label_dtype_widens_and_rejects_bad_values(tmp_path):
    geometry = Geometry.from_display_grid((2, 3, 4), spacing=(3.0, 0.5, 0.5))
    labels = np.zeros((2, 3, 4), np.int64)
    labels[0, 0, 0] = 300
    assert nib.load(str(save_labels(labels, geometry, tmp_path / "a.nii.gz"))).get_data_dtype() == np.int16
    floats = np.zeros((2, 3, 4))
    floats[1, 1, 1] = 0.5
    with pytest.raises(VolumeError, match="non-integer"):
        save_labels(floats, geometry, tmp_path / "b.nii.gz")
    floats[1, 1, 1] = np.nan
    with pytest.raises(VolumeError, match="finite"):
        save_labels(floats, geometry, tmp_path / "b.nii.gz")
    assert not (tmp_path / "b.nii.gz").exists()
    with pytest.raises(VolumeError, match=r"\(4, 3, 2\).*\(2, 3, 4\)"):
        save_labels(np.zeros((4, 3, 2), np.uint8), geometry, tmp_path / "c.nii.gz")
    with pytest.raises(VolumeError, match="must end in"):
        save_labels(labels, geometry, tmp_path / "c.png")


def test_label_file_on_other_grid_rejected(tmp_path):
    _write(tmp_path / "t1.nii.gz", np.zeros((4, 4, 3), np.int16), AFFINES["RAS"])
    _write(tmp_path / "seg.nii.gz", np.zeros((4, 4, 4), np.uint8), AFFINES["RAS"])
    with pytest.raises(VolumeError, match="not on the image grid"):
        load_labels(tmp_path / "seg.nii.gz", read_geometry(tmp_path / "t1.nii.gz"))


def test_labels_stored_in_other_orientation_are_reoriented(tmp_path):
    ras = AFFINES["RAS"]
    data = np.zeros((4, 5, 3), np.uint8)
    data[1, 2, 0] = 5
    _write(tmp_path / "t1.nii.gz", data.astype(np.int16), ras)
    flipped = ras @ np.array([[-1, 0, 0, 3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # same grid, i flipped
    _write(tmp_path / "seg.nii.gz", data[::-1].copy(), flipped)
    geometry = read_geometry(tmp_path / "t1.nii.gz")
    labels = load_labels(tmp_path / "seg.nii.gz", geometry)
    np.testing.assert_array_equal(labels, geometry.to_display(data))


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    geometry = Geometry.from_display_grid((2, 3, 4))
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"previous labels")

    def broken_save(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(volume_module.nib, "save", broken_save)
    with pytest.raises(OutputError, match="disk full"):
        save_labels(np.ones((2, 3, 4), np.uint8), geometry, target)
    assert target.read_bytes() == b"previous labels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    with pytest.raises(OutputError, match="does not exist"):
        save_labels(np.ones((2, 3, 4), np.uint8), geometry, tmp_path / "missing" / "seg.nii.gz")


def test_not_nifti_truncated_and_missing(tmp_path):
    (tmp_path / "fake.nii.gz").write_bytes(b"this is a DICOM export, not NIfTI" * 20)
    (tmp_path / "fake.nii").write_text("hello")
    for name in ("fake.nii.gz", "fake.nii"):
        with pytest.raises(VolumeError, match="cannot be read as NIfTI"):
            load_volume(tmp_path / name)
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(1).normal(size=(30, 30, 30)), AFFINES["RAS"])
    blob = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VolumeError, match="truncated"):
        load_volume(tmp_path / "cut.nii.gz")
    with gzip.open(tmp_path / "tiny.nii.gz", "wb") as handle:
        handle.write(b"\x00" * 10)
    with pytest.raises(VolumeError):
        load_volume(tmp_path / "tiny.nii.gz")
    with pytest.raises(VolumeError, match="not found"):
        load_volume(tmp_path / "absent.nii.gz")
    with pytest.raises(VolumeError, match="folder"):
        load_volume(tmp_path)
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(VolumeError, match="not a NIfTI file name"):
        load_volume(tmp_path / "scan.mha")


def test_modality_names_and_label_names():
    assert canonical_modality("BraTS20_Training_001_t1ce.nii.gz") == "t1c"
    assert canonical_modality("OtherEXampleFromTCIA_fla_bet.nii.gz") == "flair"
    assert canonical_modality("sub-01_T2-FLAIR.nii") == "flair"
    assert canonical_modality("BraTS-GLI-00000-000-t2f.nii.gz") == "flair"
    assert canonical_modality("sub-01_T1w") == "t1"
    assert canonical_modality("case_t1_gd") == "t1c"
    assert canonical_modality("t2 [1]") == "t2"
    assert canonical_modality("CT_abdomen") == "ct"
    assert canonical_modality("volume") is None
    assert is_label_name("seg_fusion.nii.gz") and is_label_name("brain_mask") and is_label_name("Labels")
    assert not is_label_name("t1.nii.gz")


def _case(folder: Path, names, shapes=None, affines=None) -> Path:
    folder.mkdir()
    for index, name in enumerate(names):
        shape = shapes[index] if shapes else (5, 4, 3)
        affine = affines[index] if affines else AFFINES["LPS"]
        dtype = np.uint8 if is_label_name(name) else np.int16
        _write(folder / name, np.full(shape, index, dtype), affine)
    return folder


def test_load_case_order_aliases_and_labels(tmp_path):
    folder = _case(tmp_path / "c", ["x_flair.nii.gz", "x_t1ce.nii.gz", "x_t1.nii.gz", "x_seg.nii.gz", "extra.nii"])
    (folder / "notes.txt").write_text("ignored")
    volume, labels = load_case(folder)
    assert volume.channels == ("t1", "t1c", "flair", "extra")
    assert volume.data.shape == (4, 3, 4, 5)
    np.testing.assert_array_equal(volume.channel("t1ce"), np.full((3, 4, 5), 1))
    assert volume.subset(["flair", "t1"]).channels == ("flair", "t1")
    assert volume.source_paths[0].endswith("x_t1.nii.gz")
    assert list(labels) == ["x_seg"] and labels["x_seg"].dtype == np.uint8
    modalities, label_paths = case_files(folder)
    volume2, _ = load_case({"T2": folder / "x_flair.nii.gz", "t1": folder / "x_t1.nii.gz"})
    assert volume2.channels == ("t1", "t2")
    assert modalities["t1c"].name == "x_t1ce.nii.gz" and label_paths["x_seg"].name == "x_seg.nii.gz"
    with pytest.raises(VolumeError, match="no channel 'pd'"):
        volume.channel("pd")


def test_load_case_errors(tmp_path):
    mixed = _case(tmp_path / "mixed", ["t1.nii.gz", "t2.nii.gz"], shapes=[(5, 4, 3), (5, 4, 4)])
    with pytest.raises(VolumeError, match=r"t1\.nii\.gz: shape \(5, 4, 3\).*t2\.nii\.gz: shape \(5, 4, 4\)"):
        load_case(mixed)
    moved = _case(tmp_path / "moved", ["t1.nii.gz", "t2.nii.gz"], affines=[AFFINES["LPS"], AFFINES["LAS"]])
    with pytest.raises(VolumeError, match="not on one voxel grid.*affine"):
        load_case(moved)
    dup = _case(tmp_path / "dup", ["a_t1.nii.gz", "b_t1w.nii.gz"])
    with pytest.raises(VolumeError, match="a_t1.nii.gz and b_t1w.nii.gz"):
        load_case(dup)
    only_labels = _case(tmp_path / "only", ["seg.nii.gz"])
    with pytest.raises(VolumeError, match="no image file"):
        load_case(only_labels)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(VolumeError, match="no .nii"):
        load_case(tmp_path / "empty")
    with pytest.raises(VolumeError, match="not found"):
        load_case(tmp_path / "nowhere")


def test_volume_and_geometry_validation():
    geometry = Geometry.from_display_grid((2, 3, 4), spacing=(2.0, 1.0, 1.0), origin=(5.0, 6.0, 7.0))
    assert geometry.source_axcodes == ("L", "P", "S")
    np.testing.assert_allclose(geometry.display_affine @ [0, 0, 0, 1], [5, 6, 7, 1])
    with pytest.raises(VolumeError, match=r"\(C, Z, Y, X\)"):
        Volume(np.zeros((1, 2, 3, 5)), geometry, ("t1",))
    with pytest.raises(VolumeError, match="channels"):
        Volume(np.zeros((2, 2, 3, 4)), geometry, ("t1",))
    with pytest.raises(VolumeError, match="degenerate"):
        Geometry(np.diag([1.0, 0.0, 1.0, 1.0]), (2, 2, 2), nib.Nifti1Header())
    with pytest.raises(VolumeError, match="display shape"):
        geometry.to_source(np.zeros((4, 3, 2)))
    assert "LPS" in repr(geometry)


def test_reading_does_not_modify_or_leave_files(tmp_path):
    src = _write(tmp_path / "t1.nii.gz", np.ones((4, 4, 3), np.int16), AFFINES["RAS"])
    before = (src.read_bytes(), os.stat(src).st_mtime_ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(src)
    assert (src.read_bytes(), os.stat(src).st_mtime_ns) == before
    assert [p.name for p in tmp_path.iterdir()] == ["t1.nii.gz"]
