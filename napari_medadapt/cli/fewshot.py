"""``medadapt fewshot``: segment a volume from a few labelled slices (a small adapter on a frozen model).

    medadapt fewshot --image MODALITY=PATH [--image ...] --support LABELS.nii.gz --out OUT.nii.gz
                     [--model NAME_OR_PATH] [--method adapter|linear_probe|ft_last|full] [--no-prior]
                     [--axis axial|coronal|sagittal] [--steps N] [--cross-entropy] [--channel NAME] [--no-leave-one-out] [--save-adapter DIR] [--json OUT.json]
    medadapt fewshot --image MODALITY=PATH [--image ...] --adapter DIR --out OUT.nii.gz [--json OUT.json]

``--support`` is a label file on the first image's grid in which only a few slices are painted (on any one
axis); every label id painted is a class, a new one too. OUT holds the labels of the whole volume on the source
grid, the support slices copied from the support file. ``--model litemedsam`` fits on the medical foundation
model's slice embeddings (any anatomy and modality; one image, ``--channel`` picks it). With ``--adapter`` a
saved adapter segments another volume of the same study without retraining. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medadapt.cli._common import (
    add_device_argument,
    add_model_arguments,
    check_nifti_out,
    input_entries,
    load_images,
    parse_images,
    text_progress,
)

METHOD_CHOICES = ("adapter", "linear_probe", "ft_last", "full")
AXIS_CHOICES = ("axial", "coronal", "sagittal")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "segment a volume from a few labelled slices (few-shot adapter on a frozen model)"
    parser = subparsers.add_parser("fewshot", help=help_text, description=help_text)
    add_model_arguments(
        parser,
        "the frozen model: a segmentation model (name, card or weight file; default glioma2d) or the promptable "
        "foundation model litemedsam (any anatomy, one image)",
    )
    parser.add_argument("--support", type=Path, metavar="LABELS.nii.gz", help="labels painted on a few slices")
    parser.add_argument("--adapter", type=Path, metavar="DIR", help="apply a saved adapter instead of fitting")
    parser.add_argument("--out", required=True, metavar="OUT.nii.gz", help="where to write the labels")
    parser.add_argument("--method", choices=METHOD_CHOICES, default="adapter", help="what to train (default: adapter)")
    parser.add_argument("--no-prior", action="store_true", help="without the transductive size prior")
    parser.add_argument(
        "--axis", choices=AXIS_CHOICES, default=None,
        help="the view the slices were painted in (default: found from the labels)",
    )
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
    parser.add_argument(
        "--cross-entropy", action="store_true", help="add the marginal cross-entropy to the Dice loss (off by default)"
    )
    parser.add_argument("--channel", default=None, help="the image a promptable backbone embeds (default: first)")
    parser.add_argument(
        "--no-leave-one-out", action="store_true", help="skip the leave-one-slice-out check (one fit per slice)"
    )
    parser.add_argument("--save-adapter", type=Path, metavar="DIR", help="save the adapter into this new folder")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the figures of the fit as JSON")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace, images: dict[str, str]) -> None:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.adapt.fewshot.io import ADAPTER_CARD
    from napari_medadapt.core.files import check_output_path

    if (args.support is None) == (args.adapter is None):
        raise CLIError("give --support (labels painted on a few slices: fit an adapter) or --adapter DIR (apply one).")
    if args.adapter is not None and (
        args.save_adapter or args.method != "adapter" or args.no_prior or args.cross_entropy or args.axis
    ):
        raise CLIError(
            "--adapter applies a saved adapter: --method, --no-prior, --cross-entropy, --axis and --save-adapter go "
            "with --support."
        )
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}.")
    check_nifti_out(args.out, inputs=[*images.values(), *([args.support] if args.support else [])])
    if args.json is not None:
        check_output_path(args.json, inputs=images.values(), what="--json")
    if args.save_adapter is not None and (args.save_adapter / ADAPTER_CARD).exists():
        raise CLIError(f"--save-adapter {args.save_adapter} already holds an adapter; choose a new folder.")


def _backbone(args: argparse.Namespace, session, channels: tuple[str, ...], ctx):
    """The frozen model: the session's promptable predictor for a Segment Anything name, else a segmentation model."""
    from napari_medadapt.core.models import DEFAULT_MODEL
    from napari_medadapt.core.sam.registry import REGISTRY

    name = args.model or DEFAULT_MODEL
    if name in REGISTRY:
        from napari_medadapt.core.sam.workspace import ModelChoice

        return session.sam.predictor(ModelChoice(name), ctx, [])
    if args.channel is not None:
        from napari_medadapt.cli import CLIError

        raise CLIError("--channel picks the image of a promptable backbone (--model litemedsam).")
    model = session.model(name, ctx)
    model.card.check_modalities(channels)
    return model


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.core.adapt.fewshot.fit import fit
    from napari_medadapt.core.adapt.fewshot.io import apply_adapter, save_adapter
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.files import write_text_atomic
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import load_labels, save_labels
    from napari_medadapt.core.provenance import model_entry, provenance_record
    from napari_medadapt.core.session import ModelSession

    images = parse_images(args.image)
    _check(args, images)
    device = select_device(args.device)
    volume = load_images(images)
    session = ModelSession(device=device)
    ctx = JobContext(on_progress=text_progress("fewshot"))
    report: dict = {"inputs": images, "device": str(device)}
    if args.adapter is not None:
        labels, _probs, card = apply_adapter(
            args.adapter, volume, session, model=args.model, channel=args.channel, device=device, ctx=ctx
        )
        class_names = dict(zip(card["labels"], card["class_names"] or map(str, card["labels"]), strict=True))
        report.update(adapter=str(args.adapter), base_model=card["base_model"], method=card["method"])
        record = provenance_record(
            "fewshot-apply", inputs=images, model={"name": card["base_model"], "sha256": card["base_sha256"]},
            adapter={"name": card["name"], "path": card["path"], "sha256": card["weights_sha256"],
                     "method": card["method"], "support": card["support"], "settings": card["settings"]},
            device=str(device),
        )
    else:
        support = load_labels(args.support, volume.geometry)
        backbone = _backbone(args, session, volume.channels, ctx)
        result = fit(
            backbone, volume, support, args.method, prior=not args.no_prior, steps=args.steps, channel=args.channel,
            cross_entropy=args.cross_entropy, axis=None if args.axis is None else AXIS_CHOICES.index(args.axis),
            leave_one_out=not args.no_leave_one_out, device=device, session=session, ctx=ctx,
        )
        labels, class_names = result.labels, result.class_names
        record = provenance_record(
            "fewshot", inputs={**images, "support": args.support}, model=model_entry(backbone),
            settings={**{k: v for k, v in result.settings.items() if k not in ("base_model", "base_sha256")},
                      "support": result.support.as_records()},
            device=str(device),
        )
        print(f"support: {result.support.describe()}", file=sys.stderr)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        if result.leave_one_out:
            scores = ", ".join(f"{k}: {v:.3f}" for k, v in result.leave_one_out.items())
            print(f"leave-one-slice-out Dice: {scores}", file=sys.stderr)
        report.update(
            method=result.method, prior=result.prior, base_model=result.settings["base_model"], axis=result.support.axis,
            support=result.support.as_records(),
            classes=list(result.classes), steps=result.settings["steps"], final_loss=result.history[-1]["loss"],
            leave_one_out_dice={str(k): v for k, v in result.leave_one_out.items()}, seconds=result.seconds,
            suggested_next_slices=[i for i, _ in result.suggest_next(3)],
        )
    written = save_labels(
        labels, volume.geometry, args.out, class_names=class_names, inputs=[*images.values(), *filter(None, [args.support])],
        provenance=input_entries(images, record),  # a DICOM input by its series, never a patient identifier
    )
    report["out"] = str(written)
    if args.adapter is None and args.save_adapter is not None:  # after the labels: a failed save loses no result
        report["adapter"] = str(save_adapter(result, args.save_adapter).parent)
        print(f"adapter saved to {report['adapter']}", file=sys.stderr)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report, indent=2), what="--json")
    print(f"labels written to {written}", file=sys.stderr)
    return 0
