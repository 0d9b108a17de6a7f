"""``medadapt preprocess``: prepare one patient's raw brain MRI sequences for a model.

    medadapt preprocess --image MODALITY=PATH [--image MODALITY=PATH ...] --out-dir DIR
                        [--reference flair] [--no-strip | --force-strip] [--n4 auto|on|off] [--device DEV]

Co-registers every sequence onto the reference (FLAIR by default), extracts the brain when the scans are not
skull-stripped and removes a strong bias field (:mod:`napari_medadapt.core.preprocess.chain`). Writes
``DIR/MODALITY.nii.gz`` on the reference grid, ``DIR/brain_mask.nii.gz`` and ``DIR/preprocess.json`` (what
was done, the registration quality, the timings); the inputs are never changed. ``medadapt segment
--preprocess`` runs the same chain before segmenting.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_medadapt.cli._common import add_device_argument, parse_images, text_progress


def add_chain_arguments(parser: argparse.ArgumentParser) -> None:
    """``--reference``, ``--no-strip`` and ``--n4`` (shared with ``segment --preprocess``)."""
    parser.add_argument("--reference", default=None, help="sequence whose grid the others are brought onto "
                        "(default: flair, else t1c, t1, t2)")
    strip = parser.add_mutually_exclusive_group()
    strip.add_argument("--no-strip", action="store_true", help="never extract the brain (default: when the "
                       "scans are not skull-stripped)")
    strip.add_argument("--force-strip", action="store_true", help="extract the brain even when the scans look "
                       "skull-stripped already")
    parser.add_argument("--n4", choices=("auto", "on", "off"), default="auto",
                        help="bias-field correction: auto (when a strong field is found), on or off")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "co-register, skull-strip and bias-correct one patient's raw brain MRI sequences"
    parser = subparsers.add_parser("preprocess", help=help_text, description=help_text)
    parser.add_argument(
        "--image", action="append", required=True, metavar="MODALITY=PATH",
        help="a sequence and its modality, e.g. flair=raw/flair.nii.gz (repeat per sequence)",
    )
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="existing folder for the results")
    add_chain_arguments(parser)
    add_device_argument(parser)
    parser.set_defaults(func=run)


def prepare(images: dict[str, str], args: argparse.Namespace, default_reference: str | None = None) -> Any:
    """Run the chain on ``images`` with the command's options (reference: ``--reference``, else
    ``default_reference``, else the chain's choice); notes go to stderr."""
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.preprocess.chain import load_sequences, prepare_scans

    sequences, skipped = load_sequences(images)
    for note in skipped:
        print(f"note: {note}", file=sys.stderr)
    prepared = prepare_scans(
        sequences, reference=args.reference or default_reference, n4=args.n4,
        strip="off" if args.no_strip else "on" if args.force_strip else "auto",
        device=args.device, ctx=JobContext(on_progress=text_progress("preprocess")),
    )
    for record in prepared.registrations:
        print(f"registered {record.modality} onto {prepared.reference}: head overlap {record.head_dice:.3f}, "
              f"NMI {record.nmi:.3f} ({record.seconds:.1f} s)", file=sys.stderr)
    for note in prepared.notes:
        print(f"note: {note}", file=sys.stderr)
    return prepared


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_medadapt.core.preprocess.chain import check_outputs, save_prepared

    images = parse_images(args.image)
    folder = Path(args.out_dir)
    check_outputs(folder, list(images), inputs=list(images.values()))  # before the chain runs
    prepared = prepare(images, args)
    for path in save_prepared(prepared, folder, inputs=list(images.values())):
        print(path)
    return 0
