"""``medadapt shift-score``: how far a volume lies from a model's training data (BN-KL shift score).

    medadapt shift-score --model NAME_OR_PATH --image MODALITY=PATH [--image ...] [--slices N|all]
                         [--json OUT.json] [--device DEV]

Prints the score and its category (typical / unusual / far, from the distribution stored in the model card).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medadapt.cli._common import (
    add_device_argument,
    add_model_arguments,
    input_entries,
    load_checked_model,
    load_images,
    parse_images,
    text_progress,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "measure a volume's domain shift against a model's training data (BN-KL shift score)"
    parser = subparsers.add_parser("shift-score", help=help_text, description=help_text)
    add_model_arguments(
        parser, "bundled model name, model card (.json) or weight file; default: the bundled model glioma2d"
    )
    parser.add_argument(
        "--slices",
        default=None,
        metavar="N|all",
        help="foreground slices the statistics come from: a number (evenly spread) or 'all' "
        "(default: the same subsample test-time adaptation uses)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the result as JSON")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def _slice_policy(text: str | None) -> int | str | None:
    from napari_medadapt.cli import CLIError

    if text is None or text == "all":
        return text
    try:
        count = int(text)
    except ValueError as err:
        raise CLIError(f"--slices {text!r}: give a number of slices or 'all'.") from err
    if count < 1:
        raise CLIError(f"--slices {text!r}: give at least 1 slice.")
    return count


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.core.adapt.tta.score import classify_shift, shift_score, typical_range
    from napari_medadapt.core.files import check_output_path, write_text_atomic
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.provenance import model_entry, provenance_record

    policy = _slice_policy(args.slices)
    images = parse_images(args.image)
    if args.json is not None:
        check_output_path(args.json, inputs=images.values(), what="--json")
    volume = load_images(images)
    model = load_checked_model(args.model, volume.channels)
    score = shift_score(
        model, volume, slices=policy, device=args.device, ctx=JobContext(on_progress=text_progress("shift score"))
    )
    bounds = typical_range(model.card)
    category = classify_shift(score, model.card) if bounds is not None else None
    if bounds is None:
        print(f"shift score {score:.4g} (model {model.card.name!r} has no training distribution to rate it)")
    else:
        print(f"shift score {score:.4g}: {category} (typical <= {bounds[0]:.4g}, far >= {bounds[1]:.4g})")
    if args.json is not None:
        report = {
            "model": model.card.name,
            "images": {m: str(p) for m, p in zip(volume.channels, volume.source_paths, strict=True)},
            "shift_score": score,
            "category": category,
            "typical_max": bounds[0] if bounds else None,
            "far_min": bounds[1] if bounds else None,
            "slices": policy,
            # how the score was made: inputs with their sha256 (a DICOM input by its series), model, software
            "provenance": input_entries(images, provenance_record(
                "shift-score", inputs=images, model=model_entry(model), settings={"slices": policy},
                device=str(args.device or model.device),
            )),
        }
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n", what="--json")
        print(f"report written to {args.json}", file=sys.stderr)
    return 0
