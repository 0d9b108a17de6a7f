"""``medadapt evaluate``: Dice and HD95 of a predicted label map against a reference.

    medadapt evaluate --pred PRED.nii.gz --ref REF.nii.gz [--regions brats|brats2013|labels] [--json OUT.json]

Regions: ``brats`` WT={1,2,4}, TC={1,4}, ET={4}; ``brats2013`` WT={1,2,3,4}, TC={1,3,4}, ET={4}; ``labels``
one region per label id. Dice of two empty regions is 1; HD95 is reported as "n/a" (JSON null) when both are
empty and "inf" (JSON null with ``hd95_status`` "one side empty") when only one is.
"""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "compare a label map with a reference (Dice, HD95 per region)"
    parser = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    parser.add_argument("--pred", required=True, metavar="PRED.nii.gz", help="predicted label map")
    parser.add_argument("--ref", required=True, metavar="REF.nii.gz", help="reference label map (same grid)")
    parser.add_argument(
        "--regions",
        choices=("brats", "brats2013", "labels"),
        default="brats",
        help="evaluation regions (default: brats = WT/TC/ET of BraTS 2017-2020 ids)",
    )
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the results as JSON")
    parser.set_defaults(func=run)


def _json_row(row: dict[str, float]) -> dict[str, object]:
    out: dict[str, object] = dict(row)
    value = row["hd95"]
    if math.isnan(value):
        out["hd95"], out["hd95_status"] = None, "both empty"
    elif math.isinf(value):
        out["hd95"], out["hd95_status"] = None, "one side empty"
    else:
        out["hd95_status"] = "ok"
    return out


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.core.files import check_output_path, write_text_atomic
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.metrics import evaluate_labels, format_results
    from napari_medadapt.core.volume import read_geometry

    if args.json:
        check_output_path(args.json, inputs=[args.pred, args.ref], what="--json")
    geometry = read_geometry(args.ref)
    ref = load_labels(args.ref, geometry)
    pred = load_labels(args.pred, geometry)
    results = evaluate_labels(pred, ref, geometry.spacing, args.regions)
    print(format_results(results))
    if args.json:
        document = {
            "pred": str(args.pred),
            "ref": str(args.ref),
            "regions": args.regions,
            "spacing_mm": [float(s) for s in geometry.spacing],
            "results": {name: _json_row(row) for name, row in results.items()},
        }
        write_text_atomic(args.json, json.dumps(document, indent=2) + "\n", what="--json")
    return 0
