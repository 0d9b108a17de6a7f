"""``medadapt tts``: keypoint-driven feature muting (TTS), headless.

    medadapt tts --model NAME_OR_PATH --image MODALITY=PATH [--image MODALITY=PATH ...] --points POINTS.csv
                 [--alpha 0.4] [--keep 0.10] [--layer decoder|bottleneck] [--whole-volume] [--tta-flips]
                 --out OUT.nii.gz

``POINTS.csv`` has the header ``i,j,k,kind``: array indices of the first image as nibabel loads it from disk
(``data[i, j, k]``) and ``kind`` = ``positive`` (on the target) or ``negative`` (on an artifact or the
background). The muted prediction is written on the source grid of the first image.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from napari_medadapt.cli._common import (
    add_device_argument,
    add_model_arguments,
    check_nifti_out,
    input_entries,
    load_checked_model,
    load_images,
    parse_images,
    text_progress,
)

KINDS = ("positive", "negative")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "segment with feature channels chosen by positive/negative keypoints (TTS)"
    parser = subparsers.add_parser("tts", help=help_text, description=help_text)
    add_model_arguments(
        parser, "bundled model name, model card (.json) or weight file with its card beside it; default: glioma2d"
    )
    parser.add_argument(
        "--points",
        required=True,
        type=Path,
        metavar="POINTS.csv",
        help="CSV with header i,j,k,kind: voxel indices of the first image on disk; kind positive|negative",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.4, help="weight of the positives (default 0.4; 0.2 for artifacts)"
    )
    parser.add_argument(
        "--keep", type=float, default=0.10, help="fraction of feature channels kept (default 0.10)"
    )
    parser.add_argument(
        "--layer", default="decoder", help="feature map to mute: decoder (default) or bottleneck"
    )
    parser.add_argument(
        "--whole-volume",
        action="store_true",
        help="2D models: one mask from all keypoints for every slice (default: per slice, others unmuted)",
    )
    parser.add_argument("--tta-flips", action="store_true", help="average over flipped replicas")
    parser.add_argument(
        "--mute-background",
        action="store_true",
        help="published rule: also mute the decoder channels that favour the background (default: keep them)",
    )
    parser.add_argument(
        "--out", required=True, metavar="OUT.nii.gz", help="where to write the muted label map"
    )
    add_device_argument(parser)
    parser.set_defaults(func=run)


def _read_text(path: Path) -> str:
    """The CSV's text: UTF-8 (with or without the byte-order mark Excel writes), else Latin-1."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_points(path: Path, source_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``i,j,k,kind`` rows; returns positive and negative source indices ``(N, 3)``.

    Comma, semicolon or tab separated; UTF-8 (with or without a byte-order mark) or Latin-1. Raises
    :class:`~napari_medadapt.cli.CLIError` naming the line for a malformed or out-of-image point.
    """
    from napari_medadapt.cli import CLIError

    if path.is_dir():
        raise CLIError(f"--points {path} is a folder; give the CSV file with the i,j,k,kind rows.")
    if not path.is_file():
        raise CLIError(f"--points {path}: file not found.")
    try:
        text = _read_text(path)
    except OSError as err:
        raise CLIError(f"--points {path} cannot be read ({err.strerror or err}).") from err
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if header[:4] != ["i", "j", "k", "kind"]:
        raise CLIError(
            f"--points {path}: the header must be 'i,j,k,kind'; got {','.join(header) or 'nothing'}."
        )
    points: dict[str, list[list[int]]] = {kind: [] for kind in KINDS}
    for row in reader:
        line = reader.line_num
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        kind = row["kind"].lower()
        if kind not in KINDS:
            raise CLIError(f"--points {path} line {line}: kind must be positive or negative; got {row['kind']!r}.")
        try:
            ijk = [float(row[axis]) for axis in "ijk"]
        except ValueError as err:
            raise CLIError(f"--points {path} line {line}: i, j, k must be numbers ({err}).") from err
        if not all(math.isfinite(v) for v in ijk):
            raise CLIError(f"--points {path} line {line}: i, j, k must be finite numbers; got {ijk}.")
        index = [int(round(v)) for v in ijk]
        if any(not 0 <= v < s for v, s in zip(index, source_shape, strict=True)):
            where = ", ".join(f"{axis}={v:.6g}" for axis, v in zip("ijk", ijk, strict=True))
            raise CLIError(
                f"--points {path} line {line}: {kind} point ({where}) lies outside the image of shape "
                f"{tuple(source_shape)}; fix or remove it."
            )
        points[kind].append(index)
    if not points["positive"] and not points["negative"]:
        raise CLIError(f"--points {path}: no points; add rows such as '120,96,70,positive'.")
    return tuple(np.asarray(points[k], dtype=np.int64).reshape(-1, 3) for k in KINDS)  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.core.adapt.tts.live import TTSWorkspace
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import save_labels
    from napari_medadapt.core.metrics import label_volumes_ml
    from napari_medadapt.core.provenance import model_entry, provenance_record
    from napari_medadapt.core.session import ModelSession

    images = parse_images(args.image)
    check_nifti_out(args.out, inputs=[*images.values(), args.points])
    volume = load_images(images)
    geometry = volume.geometry
    positives_ijk, negatives_ijk = read_points(Path(args.points), tuple(geometry.source_shape))
    model = load_checked_model(args.model, volume.channels, device=select_device(args.device))
    positives = geometry.source_index_to_display(positives_ijk) if len(positives_ijk) else positives_ijk
    negatives = geometry.source_index_to_display(negatives_ijk) if len(negatives_ijk) else negatives_ijk
    print(
        f"model {model.card.name} ({model.spatial_dims}D); {len(positives)} positive, {len(negatives)} negative "
        f"keypoints; alpha {args.alpha}, keep {args.keep:.0%} of the {args.layer} channels",
        file=sys.stderr,
    )
    # the dock's path: "before" is the ordinary segmentation, "after" mutes the keypoint slices, both
    # post-processed as the card says
    session = ModelSession(device=model.device)
    result = TTSWorkspace(session).apply(
        session.add(model), None, volume, args.layer, positives, negatives, args.alpha, args.keep,
        not args.mute_background, not args.whole_volume, tta_flips=args.tta_flips,
        ctx=JobContext(on_progress=text_progress("tts")),
    )
    for message in dict.fromkeys(result.warnings):
        print(f"warning: {message}", file=sys.stderr)
    class_names = dict(zip(model.card.labels, model.card.class_names, strict=True))
    record = provenance_record(
        "tts",
        inputs={**images, "points": args.points},
        model=model_entry(model),
        settings={"alpha": args.alpha, "keep": args.keep, "layer": args.layer, "whole_volume": args.whole_volume,
                  "tta_flips": args.tta_flips, "mute_background": args.mute_background,
                  "positives_ijk": np.asarray(positives_ijk).tolist(), "negatives_ijk": np.asarray(negatives_ijk).tolist()},
        device=str(model.device),
    )
    written = save_labels(
        result.after.astype(np.uint8), geometry, args.out, class_names=class_names, inputs=images.values(),
        provenance=input_entries(images, record),  # a DICOM input by its series, never a patient identifier
    )
    before = label_volumes_ml(result.before, geometry.spacing)
    after = label_volumes_ml(result.after, geometry.spacing)
    print(f"{'label':>5}  {'before mL':>10} {'after mL':>10}")
    for label in sorted(set(before) | set(after)):
        print(f"{label:>5}  {before.get(label, 0.0):>10.2f} {after.get(label, 0.0):>10.2f}")
    selections = {id(s): (s, sorted(z for z, t in result.selections.items() if t is s)) for s in result.selections.values()}
    for selection, slices in list(selections.values())[:10]:
        where = "volume" if len(slices) == geometry.display_shape[0] else "slice(s) " + ",".join(map(str, slices[:8]))
        print(f"{where}: kept channels {', '.join(str(c) for c in selection.kept)}", file=sys.stderr)
        if len(selection.background):
            print(f"{where}: {len(selection.background)} background channels never muted", file=sys.stderr)
    print(f"muted labels written to {written}", file=sys.stderr)
    return 0
