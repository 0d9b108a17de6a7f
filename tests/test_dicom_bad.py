"""Damaged DICOM: one clear message each (naming the file and the fix), no traceback, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_series import affine_lps, base_dataset, rotation, sample_block, write_series, write_slice
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from napari_medadapt.cli import main
from napari_medadapt.core.dicom import load_dicom


def _series(folder: Path, **kwargs) -> list[Path]:
    return write_series(folder, sample_block((16, 16, 5)), affine_lps(np.eye(3)), **kwargs)


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _truncated(folder: Path) -> str:
    files = _series(folder)
    files[2].write_bytes(files[2].read_bytes()[:-100])
    return files[2].name


def _truncated_header(folder: Path) -> str:
    files = _series(folder)
    files[1].write_bytes(files[1].read_bytes()[:300])
    return files[1].name


def _no_pixels(folder: Path) -> str:
    files = _series(folder)
    _edit(files[3], lambda ds: delattr(ds, "PixelData"))
    return files[3].name


def _no_orientation(folder: Path) -> str:
    files = _series(folder)
    _edit(files[0], lambda ds: delattr(ds, "ImageOrientationPatient"))
    return files[0].name


def _duplicated(folder: Path) -> str:
    files = _series(folder)
    copy = folder / "copy-of-slice"
    shutil.copy(files[2], copy)
    _edit(copy, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    return "copy-of-slice"


def _two_series_mixed(folder: Path) -> str:
    template = base_dataset()
    _series(folder, template=template)
    write_series(folder / "other", sample_block((16, 16, 3)), affine_lps(rotation("x", 30)),
                 template=template, seed=4)  # fmt: skip
    return "mixed slice orientations"


def _missing_slice(folder: Path) -> str:
    files = _series(folder)
    files[2].unlink()
    return "slice(s) seem to be missing"


def _lone_localiser(folder: Path) -> str:
    folder.mkdir()
    write_slice(folder / "scout", base_dataset(description="SCOUT"), sample_block((16, 16, 1))[:, :, 0], (0, 0, 0),
                (1, 0, 0, 0, 0, -1), (1, 1), 1, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})  # fmt: skip
    return "localiser"


def _private_syntax(folder: Path) -> str:
    folder.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"  # a vendor's private compression
    ds.PixelData = b"\x00" * 100
    ds["PixelData"].is_undefined_length = False
    ds.save_as(folder / "IM0001", enforce_file_format=False)
    return "IM0001"


CORPUS = {
    "truncated pixel data": (_truncated, "truncated"),
    "truncated header": (_truncated_header, "damaged DICOM file"),
    "missing pixel data": (_no_pixels, "holds no pixel data"),
    "missing orientation": (_no_orientation, "has no ImageOrientationPatient"),
    "duplicated positions": (_duplicated, "duplicated slices"),
    "two series mixed": (_two_series_mixed, "Export them as separate series"),
    "missing slice": (_missing_slice, "Export the complete series again"),
    "lone localiser": (_lone_localiser, "Export the CT or MR series itself"),
    "private compressed syntax": (_private_syntax, "Explicit VR Little Endian"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, str, str]]:
    root = tmp_path_factory.mktemp("bad")
    built = {}
    for index, (name, (make, fix)) in enumerate(CORPUS.items()):
        folder = root / f"case{index}"
        built[name] = (folder, make(folder), fix)
    return built


@pytest.mark.parametrize("name", list(CORPUS))
def test_damaged_series_one_clear_message_and_nothing_written(corpus, name, tmp_path, capsys):
    folder, names, fix = corpus[name]
    out = tmp_path / "volume.nii.gz"
    code = main(["convert", "--image", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert names in err and fix in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_compressed_syntax_is_decoded_by_gdcm_when_pydicom_cannot():
    plain, _notes = load_dicom(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        compressed, _notes = load_dicom(get_testdata_file(name))
        np.testing.assert_array_equal(compressed.data, plain.data)
        assert compressed.geometry.matches(plain.geometry)


def test_non_image_objects_and_pydicom_damaged_files(tmp_path, capsys):
    for name, words in [("rtstruct.dcm", "non-image object (RTSTRUCT)"), ("test-SR.dcm", "non-image object (SR)"),
                        ("MR_truncated.dcm", "MR_truncated.dcm")]:  # fmt: skip
        code = main(["convert", "--image", get_testdata_file(name), "--out", str(tmp_path / "x.nii.gz")])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_gdcm_fallback_applies_the_rescale_once_and_reads_zip_members(tmp_path, monkeypatch):
    import zipfile

    from pydicom.dataset import Dataset

    _series(tmp_path / "ct", modality="CT", intercept=-1024.0, slope=2.0)
    expected, _notes = load_dicom(tmp_path / "ct")
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as archive:
        for file in (tmp_path / "ct").iterdir():
            archive.write(file, file.name)

    def no_handler(self):
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_handler))
    for source in (tmp_path / "ct", tmp_path / "ct.zip"):
        decoded, _notes = load_dicom(source)
        np.testing.assert_array_equal(decoded.data, expected.data)


def test_a_scout_filed_in_the_ct_series_is_left_out_with_a_note(tmp_path):
    template = base_dataset("CT")
    _series(tmp_path / "ct", template=template)
    write_slice(tmp_path / "ct" / "scout", template, sample_block((16, 16, 1))[:, :, 0], (0, 0, 0), (1, 0, 0, 0, 0, -1),
                (1, 1), 99, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})  # fmt: skip
    volume, notes = load_dicom(tmp_path / "ct")
    assert volume.data.shape[1] == 5 and "1 localiser or derived image(s)" in notes[0]
