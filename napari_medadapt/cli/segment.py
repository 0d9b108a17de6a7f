"""``medadapt segment``: segment a volume with a model (optionally adapted at test time) and save the labels.

    medadapt segment --model NAME_OR_PATH --image MODALITY=PATH [--image MODALITY=PATH ...] --out OUT.nii.gz
                     [--tta none|bn_affine|normalizer|tent [--no-source-check]] [--all-components]
                     [--preprocess [--reference MODALITY] [--no-strip | --force-strip] [--n4 auto|on|off]] [--device DEV]

The labels are written on the source grid of the first image, with its affine. With ``--preprocess`` the
images are first prepared as ``medadapt preprocess`` does (co-registered onto the first image, or
``--reference``, brain-extracted when not skull-stripped, bias-corrected when a strong field is found), so raw
scans on different grids can be given. Progress goes to stderr,
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
    input_entries,
    is_dicom_input,
    load_checked_model,
    load_images,
    parse_images,
    text_progress,
)
from napari_medadapt.cli.preprocess import add_chain_arguments, prepare

TTA_METHODS = ("none", "bn_affine", "normalizer", "tent")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "segment a volume with a model and write the label map"
    parser = subparsers.add_parser("segment", help=help_text, description=help_text)
    add_model_arguments(
        parser,
        "bundled model name, model card (.json) or weight file (.safetensors/.pt with its card beside it); "
        "default: the bundled brain-tumour model glioma2d",
    )
    parser.add_argument("--out", required=True, metavar="OUT.nii.gz",
                        help="where to write the label map (.nii.gz, or .dcm: a DICOM SEG on a DICOM first --image)")
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
    parser.add_argument(
        "--preprocess",
        action="store_true",
        help="prepare raw scans first: co-register onto the first image, extract the brain, correct the bias field",
    )
    add_chain_arguments(parser)
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import save_labels
    from napari_medadapt.core.provenance import model_entry, provenance_record
    from napari_medadapt.core.session import ModelSession

    images = parse_images(args.image)
    check_nifti_out(args.out, inputs=images.values(), dicom_ok=True)
    reference = next(iter(images.values()))
    if args.out.lower().endswith(".dcm") and not is_dicom_input(reference):
        raise CLIError(f"--out {args.out}: a DICOM SEG needs a DICOM series as the first --image ({reference} is "
                       "not); write .nii.gz instead.")
    device = select_device(args.device)
    if args.preprocess:
        volume = prepare(images, args, default_reference=next(iter(images))).volume
    elif args.reference or args.no_strip or args.force_strip or args.n4 != "auto":
        raise CLIError("--reference, --no-strip, --force-strip and --n4 go with --preprocess.")
    else:
        volume = load_images(images)
    model = load_checked_model(args.model, volume.channels)
    print(f"model {model.card.name} ({model.spatial_dims}D) on {device}; inputs {', '.join(volume.channels)}",
          file=sys.stderr)
    session = ModelSession(device=device)  # the docks' path: same segmentation, same post-processing
    name = session.add(model)
    largest_component = False if args.all_components else None
    if args.tta == "none":
        prediction = session.segment(
            name, volume, largest_component=largest_component, ctx=JobContext(on_progress=text_progress("segment"))
        )
    else:
        from napari_medadapt.core.adapt.tta.workflow import adapt_and_segment

        outcome = adapt_and_segment(
            session, name, volume, {"method": args.tta}, segment_source=not args.no_source_check,
            largest_component=largest_component, ctx=JobContext(on_progress=text_progress(f"adapt ({args.tta})")),
        )
        prediction = outcome.after
        print(f"adapted ({args.tta}): {outcome.rating_before} -> {outcome.rating_after}", file=sys.stderr)
        if outcome.before is not None:
            print(f"source model (before adaptation):\n{outcome.before.format_volumes()}", file=sys.stderr)
        for warning in outcome.result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    for note in prediction.notes:
        print(f"note: {note}", file=sys.stderr)
    record = provenance_record(
        "segment" if args.tta == "none" else "segment+tta",
        inputs=images,
        model=model_entry(model),
        settings={"tta": args.tta, "largest_component": largest_component, "preprocess": bool(args.preprocess),
                  "reference": args.reference, "strip": not args.no_strip, "force_strip": args.force_strip,
                  "n4": args.n4},
        device=str(device),
    )
    record = input_entries(images, record)
    if args.out.lower().endswith(".dcm"):
        from napari_medadapt.core.dicom.seg import write_seg

        written = write_seg(
            prediction.labels, volume.geometry, reference, args.out, class_names=prediction.class_names,
            algorithm=(model.card.name, (record["model"] or {}).get("sha256") or "unknown"),
            inputs=list(images.values()), provenance=record,
        )
    else:
        written = save_labels(
            prediction.labels, volume.geometry, args.out, class_names=prediction.class_names,
            inputs=list(images.values()), provenance=record,
        )
    print(prediction.format_volumes())
    print(f"labels written to {written}", file=sys.stderr)
    return 0
