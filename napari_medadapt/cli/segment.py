"""``medadapt segment``: segment a volume with a model (optionally adapted at test time) and save the labels.

    medadapt segment --model NAME_OR_PATH --image MODALITY=PATH [--image MODALITY=PATH ...] --out OUT.nii.gz
                     [--tta none|bn_affine|normalizer|tent [--no-source-check]] [--all-components]
                     [--device DEV]

The labels are written on the source grid of the first image, with its affine. Progress goes to stderr,
the per-class volumes (mL) to stdout. With ``--tta`` the volume is also segmented by the source model, and a
warning goes to stderr when adaptation shrank or grew the whole-volume segmentation five-fold (a collapse the
check on the sampled slices inside ``adapt`` can miss); ``--no-source-check`` skips that extra pass.
"""

from __future__ import annotations

import argparse
import sys

from napari_medadapt.cli._common import (
    add_device_argument,
    add_model_arguments,
    check_nifti_out,
    load_checked_model,
    load_images,
    parse_images,
    text_progress,
)

TTA_METHODS = ("none", "bn_affine", "normalizer", "tent")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "segment a volume with a model and write the label map"
    parser = subparsers.add_parser("segment", help=help_text, description=help_text)
    add_model_arguments(
        parser,
        "bundled model name, model card (.json) or weight file (.safetensors/.pt with its card beside it); "
        "default: the bundled brain-tumour model glioma2d",
    )
    parser.add_argument("--out", required=True, metavar="OUT.nii.gz", help="where to write the label map")
    parser.add_argument(
        "--tta", choices=TTA_METHODS, default="none", help="test-time adaptation before segmenting (default: none)"
    )
    parser.add_argument(
        "--all-components",
        action="store_true",
        help="keep every connected region (the bundled model's card keeps only the largest one by default)",
    )
    parser.add_argument(
        "--no-source-check",
        action="store_true",
        help="with --tta: do not also segment with the source model (saves one pass; the collapse check then "
        "sees only the slices sampled for adaptation)",
    )
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.inference import predict_volume
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import save_labels

    images = parse_images(args.image)
    check_nifti_out(args.out, inputs=images.values())
    device = select_device(args.device)
    volume = load_images(images)
    model = load_checked_model(args.model, volume.channels)
    print(f"model {model.card.name} ({model.spatial_dims}D) on {device}; inputs {', '.join(volume.channels)}",
          file=sys.stderr)
    segment_options = {
        "device": device,
        "return_probabilities": False,
        "largest_component": False if args.all_components else None,
    }
    source_prediction = None
    if args.tta != "none":
        try:
            from napari_medadapt.core.adapt.tta import adapt, segmentation_change_warning
        except ImportError as err:
            raise CLIError(
                f"--tta {args.tta}: test-time adaptation is not available in this installation ({err}); "
                f"run with --tta none."
            ) from err
        if not args.no_source_check:
            source_prediction = predict_volume(
                model, volume, ctx=JobContext(on_progress=text_progress("segment (source model)")), **segment_options
            )
        result = adapt(model, volume, method=args.tta, ctx=JobContext(on_progress=text_progress(f"adapt ({args.tta})")))
        model = result.model
        before, after = getattr(result, "shift_score_before", None), getattr(result, "shift_score_after", None)
        if before is not None and after is not None:
            print(f"adapted ({args.tta}): shift score {before:.4g} -> {after:.4g}", file=sys.stderr)
        for warning in getattr(result, "warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    prediction = predict_volume(
        model, volume, ctx=JobContext(on_progress=text_progress("segment")), **segment_options
    )
    if source_prediction is not None:
        print(f"source model (before adaptation):\n{source_prediction.format_volumes()}", file=sys.stderr)
        collapse = segmentation_change_warning(source_prediction.labels, prediction.labels)
        if collapse:
            print(f"warning: {collapse}", file=sys.stderr)
    for note in prediction.notes:
        print(f"note: {note}", file=sys.stderr)
    written = save_labels(
        prediction.labels, volume.geometry, args.out, class_names=prediction.class_names, inputs=images.values()
    )
    print(prediction.format_volumes())
    print(f"labels written to {written}", file=sys.stderr)
    return 0
