"""``medadapt convert``: DICOM series <-> NIfTI, labels <-> DICOM SEG, for research pipelines.

    medadapt convert --image DICOM [--series S] --list                       # the series found, nothing written
    medadapt convert --image DICOM [--series S] --out vol.nii.gz             # a DICOM series -> NIfTI
    medadapt convert --labels labels.nii.gz --reference DICOM [--series S] --out seg.dcm [--algorithm NAME]
    medadapt convert --seg seg.dcm [--reference DICOM] --out labels.nii.gz   # a DICOM SEG -> NIfTI labels

``DICOM`` is a folder (nested folders, DICOMDIR, files without extension), a ``.dcm`` file or a zip. The source
files are only read. Notes (series skipped, the series chosen) go to stderr; patient identifiers never do.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medadapt convert``."""
    help_text = "convert a DICOM series to NIfTI, NIfTI labels to DICOM SEG, or a DICOM SEG to NIfTI labels"
    parser = subparsers.add_parser("convert", help=help_text, description=help_text)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="DICOM", help="a DICOM folder, .dcm file or zip to convert to NIfTI")
    source.add_argument("--labels", metavar="LABELS.nii.gz", help="a NIfTI label map to write as DICOM SEG")
    source.add_argument("--seg", metavar="SEG.dcm", help="a DICOM SEG to write as a NIfTI label map")
    parser.add_argument("--reference", metavar="DICOM", help="the DICOM series the labels were made on")
    parser.add_argument(
        "--series", metavar="SERIES",
        help="the series to use when the DICOM input holds several: its number, SeriesInstanceUID or words of its "
        "description (default: the largest CT/MR series, with a note)",
    )  # fmt: skip
    parser.add_argument("--algorithm", default="manual", metavar="NAME[:VERSION]",
                        help="the algorithm named in the SEG (default: manual)")  # fmt: skip
    parser.add_argument("--out", metavar="OUT", help="the file to write (.nii.gz/.nii, or .dcm for a SEG)")
    parser.add_argument("--list", action="store_true", help="with --image: list the series found, write nothing")
    parser.set_defaults(func=run)


def _spec(path: str, series: str | None) -> str:
    return f"{path}#{series}" if series else path


def _note(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _image(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.dicom import describe_series, list_series, load_dicom
    from napari_medadapt.core.files import check_output_path
    from napari_medadapt.core.volume import is_nifti_path

    if args.list:
        print(describe_series(list_series(args.image)))
        return 0
    if not args.out or not is_nifti_path(args.out):
        raise CLIError(f"--out {args.out}: give the NIfTI file to write (.nii.gz or .nii).")
    check_output_path(args.out, inputs=[args.image], what="--out")
    volume, notes = load_dicom(_spec(args.image, args.series))
    _note(notes)
    written = _save_volume(volume, args.out)
    print(f"{volume.channels[0]}: {volume.geometry.summary()} written to {written}", file=sys.stderr)
    return 0


def _save_volume(volume, out: str):
    """The volume as NIfTI on its source grid: int16 when the values are whole numbers that fit, else float32."""
    import numpy as np

    from napari_medadapt.core.volume import source_grid_image, write_nifti

    data = volume.geometry.to_source(volume.data[0])
    if np.all(np.mod(data, 1) == 0) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    from pathlib import Path

    return write_nifti(source_grid_image(data, volume.geometry), Path(out))


def _labels(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.dicom import provenance_entry
    from napari_medadapt.core.dicom.seg import write_seg
    from napari_medadapt.core.labelmaps import label_class_names, load_labels
    from napari_medadapt.core.provenance import provenance_record
    from napari_medadapt.core.volume import read_geometry

    if not args.reference:
        raise CLIError("--labels needs --reference DICOM: the series the labels were made on.")
    if not args.out or not args.out.lower().endswith(".dcm"):
        raise CLIError(f"--out {args.out}: give the DICOM SEG file to write (.dcm).")
    geometry = read_geometry(args.labels)
    labels = load_labels(args.labels, geometry)
    name, _sep, version = args.algorithm.partition(":")
    reference = _spec(args.reference, args.series)
    record = provenance_record("convert", inputs={"labels": args.labels}, settings={"algorithm": args.algorithm})
    record["inputs"]["reference"] = provenance_entry(reference)
    written = write_seg(labels, geometry, reference, args.out, class_names=label_class_names(args.labels),
                        algorithm=(name, version or "unknown"), inputs=[args.labels], provenance=record)  # fmt: skip
    print(f"DICOM SEG written to {written}", file=sys.stderr)
    return 0


def _seg(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.dicom.seg import read_seg
    from napari_medadapt.core.files import check_output_path
    from napari_medadapt.core.labelmaps import save_labels
    from napari_medadapt.core.volume import is_nifti_path

    if not args.out or not is_nifti_path(args.out):
        raise CLIError(f"--out {args.out}: give the NIfTI label file to write (.nii.gz or .nii).")
    check_output_path(args.out, inputs=[args.seg], what="--out")
    reference = _spec(args.reference, args.series) if args.reference else None
    labels, geometry, names = read_seg(args.seg, reference)
    written = save_labels(labels, geometry, args.out, class_names=names, inputs=[args.seg])
    print(f"{len(names)} segments ({', '.join(names.values())}) written to {written}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError

    if args.list and not args.image:
        raise CLIError("--list goes with --image DICOM.")
    if args.image:
        return _image(args)
    if args.labels:
        return _labels(args)
    return _seg(args)
