"""``medadapt bench dicom``: opening a large DICOM series, napari-medadapt's reader vs SimpleITK's series reader.

A synthetic CT series (default 500 slices of 512 x 512, int16 with a rescale intercept, shuffled file names without
extension) is written with pydicom into a temporary folder, axial and oblique. In one run, alternating, each
``--repeats`` times: our reader (listing the series from the headers, then loading the volume with its geometry)
and SimpleITK's ``ImageSeriesReader`` (GDCM: file names sorted by GDCM, then read). Both must give the same voxels at
the same world positions (checked). Writes ``docs/benchmarks/dicom.json`` and ``dicom.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from napari_medadapt.bench._common import add_report_arguments, resolve_paths, write_json

HELP = "DICOM: time to list and open a 500-slice CT series, ours vs SimpleITK's ImageSeriesReader"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench dicom``."""
    parser.add_argument("--slices", type=int, default=500, help="slices of the series (default 500)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each reader (default 3)")
    add_report_arguments(parser, "dicom")


def write_series(folder: Path, slices: int, size: int, orientation: tuple[float, ...]) -> None:
    """A synthetic CT series (random int16 values, intercept -1024) of ``slices`` files in ``folder``."""
    import random

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    names = list(range(slices))
    random.Random(0).shuffle(names)
    for k in range(slices):
        ds = Dataset()
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Synthetic", "BENCH", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, names[k] + 1, "BENCH CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (-180.0, -180.0, -300.0) + k * 0.8 * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = ["0.7", "0.7"], "0.8"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = rng.integers(0, 2500, size=(size, size), dtype=np.int16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{(names[k] * 7919) % 100003:06x}", enforce_file_format=True)


def _ours(folder: Path) -> tuple[float, float, Any]:
    from napari_medadapt.core.dicom import list_series, load_series

    start = time.perf_counter()
    (series,) = list_series(folder)
    listed = time.perf_counter() - start
    volume = load_series(series, folder)[0].volume
    return listed, time.perf_counter() - start, volume


def _simpleitk(folder: Path) -> tuple[float, Any]:
    import SimpleITK as sitk

    start = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    return time.perf_counter() - start, (image, array)


def _same(volume: Any, itk: Any) -> bool:
    """Same voxel values at the same world positions (the affines agree to 1e-3 mm, the arrays exactly)."""
    import numpy as np

    image, array = itk
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    ours = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.source_affine  # RAS -> LPS
    return bool(np.allclose(ours, affine, atol=1e-3) and np.array_equal(
        volume.geometry.to_source(volume.data[0]).transpose(2, 1, 0), array.astype(np.float32)))  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import platform

    args = resolve_paths(args)
    report: dict[str, Any] = {"slices": args.slices, "size": args.size, "repeats": args.repeats,
                              "machine": f"{platform.processor() or platform.machine()}", "series": {}}  # fmt: skip
    orientations = {"axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "oblique": (0.9397, 0.3420, 0.0, -0.3214, 0.8830, 0.3420)}
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-dicom-") as tmp:
        for name, orientation in orientations.items():
            folder = Path(tmp) / name
            folder.mkdir()
            write_series(folder, args.slices, args.size, orientation)
            rows = []
            for _ in range(args.repeats):
                listed, loaded, volume = _ours(folder)
                itk_seconds, itk = _simpleitk(folder)
                rows.append({"ours_list_s": round(listed, 2), "ours_open_s": round(loaded, 2),
                             "simpleitk_s": round(itk_seconds, 2)})  # fmt: skip
                same = _same(volume, itk)
                del volume, itk
            report["series"][name] = {
                "runs": rows, "identical": same,
                **{f"median_{key}": statistics.median(r[key] for r in rows) for key in rows[0]},
            }  # fmt: skip
            print(f"{name}: {report['series'][name]}")
    write_json(report, args.json)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(_markdown(report), encoding="utf-8")
    print(f"wrote {args.json} and {args.md}")
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# DICOM series reading",
        "",
        f"A synthetic CT series of {report['slices']} slices of {report['size']} x {report['size']} (int16, rescale "
        "intercept, shuffled file names without extension), written with pydicom; `medadapt bench dicom` "
        f"({report['repeats']} runs of each reader, alternating, in one process; machine: {report['machine']}).",
        "",
        "| series | ours: list series (s) | ours: list + open (s) | SimpleITK ImageSeriesReader (s) | same voxels and "
        "positions |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["series"].items():
        lines.append(f"| {name} | {row['median_ours_list_s']} | {row['median_ours_open_s']} | "
                     f"{row['median_simpleitk_s']} | {'yes' if row['identical'] else 'NO'} |")  # fmt: skip
    lines += [
        "",
        "Medians of the runs. Listing reads headers only (pydicom `stop_before_pixels`). Ours includes ordering along "
        "the slice normal, the exact affine, the rescale and the display-order array the viewer shows (an oblique "
        "series needs one more copy to reorient it); SimpleITK returns its array in file order.",
        "",
    ]
    return "\n".join(lines)
