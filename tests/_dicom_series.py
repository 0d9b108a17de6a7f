"""Writing DICOM test series with pydicom from a real volume, with a known LPS affine (the ground truth).

``write_series(folder, data_ijk, affine_lps, ...)`` writes one single-frame file per slice ``k``: pixel ``[j, i]``
= ``data_ijk[i, j, k]``, ImagePositionPatient = ``affine[:3, 3] + k * affine[:3, 2]``. File names are shuffled
and have no extension unless asked; sub-folders spread the files when ``nested``.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import nibabel as nib
import numpy as np
from _data import SAMPLE_CASE
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PAT-12345", "PatientBirthDate": "19700101"}


@functools.lru_cache(maxsize=1)
def _flair() -> np.ndarray:
    data = np.asanyarray(nib.load(SAMPLE_CASE / "flair.nii.gz").dataobj)
    data.setflags(write=False)
    return data


def sample_block(shape=(40, 36, 12)) -> np.ndarray:
    """A block of the sample FLAIR (int16) of ``shape`` (i, j, k), from the tumour region."""
    data = _flair()
    i0, j0, k0 = 90, 100, 70
    return np.ascontiguousarray(data[i0:i0 + shape[0], j0:j0 + shape[1], k0:k0 + shape[2]]).astype(np.int16)


def rotation(axis: str, degrees: float) -> np.ndarray:
    """A 3x3 rotation about x, y or z."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def affine_lps(directions: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(-40.0, -30.0, 12.5)) -> np.ndarray:
    """LPS affine with unit column ``directions`` (3x3), column/row/slice ``spacing`` and ``origin``."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


def base_dataset(modality="MR", series_uid=None, study_uid=None, frame_uid=None, description="AX FLAIR",
                 number=3) -> Dataset:
    ds = Dataset()
    ds.update({})
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = frame_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = "20240105"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.Manufacturer = "test"
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.PositionReferenceIndicator = ""
    return ds


def write_slice(path: Path, template: Dataset, pixels: np.ndarray, position, orientation, spacing, number,
                slope=1.0, intercept=0.0, extra=None) -> Path:
    ds = Dataset()
    ds.update(template)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    ds.SliceThickness = "2.5"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.AcquisitionNumber = 1
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16)).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, data_ijk: np.ndarray, affine: np.ndarray, *, modality="MR", nested=False,
                 suffix="", seed=0, slope=1.0, intercept=0.0, template=None, extra=None,
                 positions=None) -> list[Path]:
    """Write ``data_ijk`` (stored values) as a series; the files, in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    template = template or base_dataset(modality)
    directions = affine[:3, :2] / np.linalg.norm(affine[:3, :2], axis=0)
    orientation = np.concatenate([directions[:, 0], directions[:, 1]])
    spacing = (np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 0]))
    n = data_ijk.shape[2]
    names = [f"{random.Random(seed * 1000 + k).getrandbits(40):x}{suffix}" for k in range(n)]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    paths = []
    for k in range(n):
        where = folder / f"sub{order[k] % 3}" / f"s{order[k] % 2}" if nested else folder
        where.mkdir(parents=True, exist_ok=True)
        position = affine[:3, 3] + k * affine[:3, 2] if positions is None else positions[k]
        paths.append(write_slice(where / names[k], template, data_ijk[:, :, k].T, position, orientation, spacing,
                                 number=order[k] + 1, slope=slope, intercept=intercept, extra=extra))
    return paths


def world_values(affine_ras: np.ndarray, data_ijk: np.ndarray) -> dict[tuple[int, int, int], float]:
    """``{rounded world position (0.01 mm): value}`` of every voxel."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in data_ijk.shape], indexing="ij")
    points = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    world = (affine_ras @ points)[:3].T
    return world, data_ijk.ravel()


def same_voxels(affine_a, data_a, affine_b, data_b, atol=1e-3) -> None:
    """Assert two (affine RAS, ijk array) pairs place every voxel at the same world position with the same value."""
    assert data_a.size == data_b.size
    mapping = np.linalg.inv(affine_b) @ affine_a  # index a -> index b
    i, j, k = np.meshgrid(*[np.arange(s) for s in data_a.shape], indexing="ij")
    points = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    index_b = (mapping @ points)[:3]
    rounded = np.round(index_b)
    world_error = np.abs(affine_b[:3, :3] @ (index_b - rounded)).max()
    assert world_error < atol, world_error
    rounded = rounded.astype(int)
    for axis in range(3):
        assert rounded[axis].min() >= 0 and rounded[axis].max() < data_b.shape[axis]
    np.testing.assert_allclose(data_b[rounded[0], rounded[1], rounded[2]], data_a.ravel(), atol=1e-3)
