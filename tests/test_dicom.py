"""DICOM series in: listing, choosing, exact geometry (against the ground truth and SimpleITK), DICOM SEG round trip.

Series are written with pydicom from a block of the packaged real FLAIR (``_dicom_series``) with known affines.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _dicom_series import (
    affine_lps,
    base_dataset,
    rotation,
    same_voxels,
    sample_block,
    write_series,
    write_slice,
)

from napari_medadapt.core.dicom import choose_series, list_series, load_dicom, load_series
from napari_medadapt.core.errors import VolumeError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
OBLIQUE = rotation("z", 20) @ rotation("x", 15)
SAGITTAL = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]).T  # rows along P, columns along I, slices along L (reversed)
CORONAL = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T
GRIDS = {
    "axial": (np.eye(3), False),
    "oblique": (OBLIQUE, True),
    "sagittal": (SAGITTAL, False),
    "coronal": (CORONAL, True),
    "axial-descending": (np.diag([1.0, 1.0, -1.0]), False),  # slices stored head to foot
}
SLOPE, INTERCEPT = 0.5, -20.0


@pytest.fixture(scope="session")
def series_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    data = sample_block()
    for index, (name, (directions, nested)) in enumerate(GRIDS.items()):
        write_series(root / name, data, affine_lps(directions), nested=nested, seed=index, slope=SLOPE,
                     intercept=INTERCEPT)  # fmt: skip
    return root


def truth(name: str) -> tuple[np.ndarray, np.ndarray]:
    return LPS_TO_RAS @ affine_lps(GRIDS[name][0]), sample_block() * SLOPE + INTERCEPT


def sitk_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine, sitk.GetArrayFromImage(image).transpose(2, 1, 0)


@pytest.mark.parametrize("name", list(GRIDS))
def test_every_voxel_has_the_ground_truth_value_and_position(series_root, name):
    volume, notes = load_dicom(series_root / name)
    assert notes == []
    geometry = volume.geometry
    same_voxels(geometry.source_affine, geometry.to_source(volume.data[0]), *truth(name))
    assert volume.channels == ("flair",)  # from the series description "AX FLAIR"


@pytest.mark.parametrize("name", [n for n, (_d, nested) in GRIDS.items() if not nested])
def test_geometry_and_values_equal_simpleitk_series_reader(series_root, name):
    volume, _notes = load_dicom(series_root / name)
    geometry = volume.geometry
    same_voxels(geometry.source_affine, geometry.to_source(volume.data[0]), *sitk_series(series_root / name))


def test_listing_reads_no_pixel_data(series_root, monkeypatch):
    import pydicom

    calls = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    (info,) = list_series(series_root / "oblique")
    assert calls and all(c.get("stop_before_pixels") for c in calls)
    assert info.n_frames == 12 and info.modality == "MR" and info.description == "AX FLAIR"
    assert "Doe" not in info.summary() and "PAT-12345" not in info.summary()
    assert info.patient["name"] == "Doe^Jane"  # kept for the viewer


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory) -> Path:
    """Two MR series, a bigger CT, a localiser and a structured report in one nested folder."""
    root = tmp_path_factory.mktemp("mixed")
    data = sample_block()
    study = base_dataset().StudyInstanceUID
    write_series(root / "a", data[:, :, :6], affine_lps(np.eye(3)),
                 template=base_dataset(study_uid=study, description="T2 AX", number=2))  # fmt: skip
    write_series(root / "b" / "deep", data, affine_lps(np.eye(3)), modality="CT", intercept=-1024.0,
                 template=base_dataset("CT", study_uid=study, description="ABDOMEN", number=5))  # fmt: skip
    write_series(root / "c", data[:, :, :8], affine_lps(OBLIQUE),
                 template=base_dataset(study_uid=study, description="FLAIR", number=7))  # fmt: skip
    scout = base_dataset(study_uid=study, description="SCOUT", number=1)
    write_slice(root / "scout", scout, data[:, :, 0].T, (0, 0, 0), (1, 0, 0, 0, 0, -1), (1, 1), 1,
                extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})  # fmt: skip
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("test-SR.dcm"), root / "report.dcm")
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), root / "c" / "screenshot")  # a derived secondary capture
    return root


def test_every_series_is_listed_and_the_largest_ct_opens_by_default(mixed_folder):
    series = list_series(mixed_folder)
    kinds = {s.description or s.modality: s.kind for s in series}
    assert kinds["SCOUT"] == "localizer" and kinds["ABDOMEN"] == "image" and "non-image" in kinds.values()
    assert "derived" in kinds.values()
    chosen, notes = choose_series(series, None, where="mixed")
    assert [s.description for s in chosen] == ["ABDOMEN"]
    text = " ".join(notes)
    assert "SCOUT" in text and "localiser" in text and "largest CT series" in text and "--series" in text
    assert "derived secondary capture" in text and "non-image object (SR)" in text
    volume, _notes = load_dicom(mixed_folder)
    assert volume.channels == ("ct",) and volume.data.min() < -900  # rescale intercept applied


@pytest.mark.parametrize("selection, expected", [("7", ["FLAIR"]), ("t2", ["T2 AX"]), ("2,7", ["T2 AX", "FLAIR"])])
def test_series_chosen_by_number_description_or_uid(mixed_folder, selection, expected):
    series = list_series(mixed_folder)
    chosen, _notes = choose_series(series, selection)
    assert [s.description for s in chosen] == expected
    by_uid, _notes = choose_series(series, chosen[0].uid)
    assert by_uid == chosen[:1]
    volume, _notes = load_dicom(f"{mixed_folder}#{selection.split(',')[0]}")
    assert volume.data.shape[1] == chosen[0].n_frames


def test_unknown_series_and_localiser_choice_are_clear_errors(mixed_folder):
    with pytest.raises(VolumeError, match="(?s)No series '42'.*#5 CT 'ABDOMEN'"):
        load_dicom(mixed_folder, series="42")
    with pytest.raises(VolumeError, match="localiser"):
        load_dicom(mixed_folder, series="SCOUT")


def test_zip_dicomdir_and_single_file(series_root, tmp_path):
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in (series_root / "oblique").rglob("*"):
            if file.is_file():
                handle.write(file, f"export/{file.relative_to(series_root)}")
    volume, _notes = load_dicom(archive)
    same_voxels(volume.geometry.source_affine, volume.geometry.to_source(volume.data[0]), *truth("oblique"))
    # a DICOMDIR written by pydicom (files in PT*/ST*/SE* folders, no extension)
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for file in sorted((series_root / "axial").iterdir()):
        fileset.add(dcmread(file))
    fileset.write(tmp_path / "media")
    volume, _notes = load_dicom(tmp_path / "media" / "DICOMDIR")
    same_voxels(volume.geometry.source_affine, volume.geometry.to_source(volume.data[0]), *truth("axial"))
    from pydicom.data import get_testdata_file

    single, _notes = load_dicom(get_testdata_file("CT_small.dcm"))
    image = sitk.ReadImage(get_testdata_file("CT_small.dcm"))
    assert single.data.shape == (1, 1, 128, 128)
    np.testing.assert_array_equal(single.data[0, 0], sitk.GetArrayFromImage(image)[0])  # LPS rows and columns


def test_enhanced_multiframe_and_echoes_are_volumes(series_root, tmp_path):
    import highdicom as hd
    from pydicom import dcmread

    files = sorted((series_root / "axial").iterdir())
    legacy = [dcmread(f) for f in files]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(legacy, hd.UID(), 9, hd.UID(), 1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume, _notes = load_dicom(tmp_path / "enhanced.dcm")
    same_voxels(volume.geometry.source_affine, volume.geometry.to_source(volume.data[0]), *truth("axial"))
    # a SEG on the frames of the multi-frame image, read back on its grid
    from napari_medadapt.core.dicom.seg import read_seg, write_seg

    labels = np.zeros(volume.geometry.display_shape, np.uint8)
    labels[2:5, 3:9, 4:10] = 1
    labels[7, 1, 1] = 3
    out = write_seg(labels, volume.geometry, tmp_path / "enhanced.dcm", tmp_path / "seg.dcm", class_names={1: "liver"})
    back, _geometry, names = read_seg(out, tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(back, labels)
    assert names == {1: "liver", 3: "label 3"}
    # two echoes in one series -> two volumes
    data = sample_block()
    template = base_dataset(description="DUAL ECHO")
    write_series(tmp_path / "echo", data, affine_lps(np.eye(3)), template=template, extra={"EchoNumbers": 1})
    write_series(tmp_path / "echo", data // 2, affine_lps(np.eye(3)), template=template, extra={"EchoNumbers": 2},
                 seed=5)  # fmt: skip
    (series,) = list_series(tmp_path / "echo")
    volumes = load_series(series)
    assert [v.label for v in volumes] == ["echo 1", "echo 2"]
    np.testing.assert_array_equal(volumes[1].volume.geometry.to_source(volumes[1].volume.data[0]), data // 2)
    first, notes = load_dicom(tmp_path / "echo")
    assert "2 volumes" in " ".join(notes)
    template = base_dataset(description="PERFUSION")
    for time_point in (1, 2, 3):
        write_series(tmp_path / "dynamic", data + time_point, affine_lps(np.eye(3)), template=template,
                     extra={"TemporalPositionIdentifier": time_point}, seed=10 + time_point)  # fmt: skip
    volumes = load_series(list_series(tmp_path / "dynamic")[0])
    assert [v.label for v in volumes] == ["time 1", "time 2", "time 3"]
    np.testing.assert_array_equal(volumes[2].volume.geometry.to_source(volumes[2].volume.data[0]), data + 3)


def test_gantry_tilt_is_placed_exactly_with_a_note(tmp_path):
    data = sample_block()
    affine = affine_lps(np.eye(3))
    affine[1, 2] = 0.4  # each slice shifted 0.4 mm along y: a tilted gantry (CT)
    write_series(tmp_path / "tilt", data, affine, modality="CT")
    volume, notes = load_dicom(tmp_path / "tilt")
    assert "gantry tilt of 9.1 degrees" in notes[0]
    same_voxels(volume.geometry.source_affine, volume.geometry.to_source(volume.data[0]), LPS_TO_RAS @ affine, data)


@pytest.mark.parametrize("name", ["oblique", "sagittal", "axial-descending"])
def test_seg_round_trip_is_identical_on_the_source_grid(series_root, tmp_path, name):
    import highdicom as hd

    from napari_medadapt.core.dicom.seg import read_seg, write_seg

    volume, _notes = load_dicom(series_root / name)
    labels = np.zeros(volume.geometry.display_shape, np.uint8)
    labels[2:6, 5:20, 4:30] = 1
    labels[5:8, 10:14, 10:12] = 4
    labels[9, 1, 1] = 2
    names = {1: "necrotic / non-enhancing core", 2: "edema", 4: "enhancing tumour"}
    before = {p: p.stat().st_mtime_ns for p in (series_root / name).rglob("*") if p.is_file()}
    out = write_seg(labels, volume.geometry, series_root / name, tmp_path / "labels.dcm", class_names=names,
                    algorithm=("glioma2d", "1.0"))  # fmt: skip
    assert before == {p: p.stat().st_mtime_ns for p in (series_root / name).rglob("*") if p.is_file()}
    seg = hd.seg.segread(out)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == list(names.values())  # numbered in label-value order
    assert [d.SegmentNumber for d in seg.SegmentSequence] == [1, 2, 3]
    types = [d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in seg.SegmentSequence]
    assert types == ["6574001", "79654002", "108369006"]  # SNOMED CT necrosis, edema, neoplasm
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "glioma2d"
    referenced = {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    (series,) = list_series(series_root / name)
    assert referenced == {f.sop_uid for f in series.frames}
    # read back with highdicom on the source frames, in our slice order
    source = load_series(series)[0]
    numbered = seg.get_pixels_by_source_instance([f.sop_uid for f in source.frames], combine_segments=True)
    expected = np.zeros_like(labels)
    for number, value in enumerate(names, start=1):
        expected[labels == value] = number
    np.testing.assert_array_equal(numbered.transpose(2, 1, 0), volume.geometry.to_source(expected))
    back, geometry, back_names = read_seg(out, series_root / name)
    np.testing.assert_array_equal(back, labels)
    assert geometry.matches(volume.geometry) and back_names == names


@pytest.mark.parametrize("source", ["sample-flair", "real-ct"])
def test_a_nifti_exported_as_dicom_opens_on_the_same_display_grid(source, tmp_path):
    import nibabel as nib
    from _data import REAL_DATA, SAMPLE_CASE

    from napari_medadapt.core.volume import load_volume

    path = SAMPLE_CASE / "flair.nii.gz" if source == "sample-flair" else (
        REAL_DATA / "ct_abdomen_totalseg_example" / "ct.nii.gz")  # fmt: skip
    if not path.is_file():
        pytest.skip(f"{path} is not beside the repository")
    image = nib.load(path)
    crop = image.slicer[60:100, 70:106, 30:42] if source == "sample-flair" else image.slicer[30:70, 30:66, 8:20]
    data = np.asarray(crop.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(data, crop.affine), tmp_path / "crop.nii.gz")
    intercept = -1024.0 if source == "real-ct" else 0.0
    write_series(tmp_path / "dicom", (data - intercept).astype(np.int16), LPS_TO_RAS @ crop.affine,
                 modality="CT" if source == "real-ct" else "MR", intercept=intercept, nested=True)  # fmt: skip
    nifti = load_volume(tmp_path / "crop.nii.gz")
    dicom, _notes = load_dicom(tmp_path / "dicom")
    assert dicom.geometry.matches(nifti.geometry, atol=1e-3)
    np.testing.assert_array_equal(dicom.data, nifti.data)
