"""``medadapt explain`` and ``medadapt prototype-bank``: prototype explanations, headless.

    medadapt explain --image MODALITY=PATH [...] [--model NAME_OR_PATH] (--voxel I,J,K | --region LABELS.nii.gz
                     [--label-values 1,2,4]) --out-dir DIR [--top-k 5] [--bank BANK.prototypes.json]
                     [--forget 3,17] [--baselines]

``--voxel`` takes array indices of the first image as nibabel loads it (``data[i, j, k]``). The output folder gets
``explanation.json`` (prototypes: id, class, similarity, share of the class score, source case / plane /
position; localisation figures), one heatmap NIfTI per reported prototype on the first image's grid, the
gallery thumbnails (PNG), ``heatmaps.png`` and ``report.html``.

    medadapt prototype-bank --model NAME_OR_PATH --cases FOLDER --out NAME.prototypes.json [--per-class 10]

builds a post-hoc bank (k-means of the decoder features per class, projected onto real patches) for a model
without a prototype head, from a folder of labelled case folders.
"""

from __future__ import annotations

import argparse
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


def _ints(text: str, what: str, count: int | None = None) -> list[int]:
    from napari_medadapt.cli import CLIError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise CLIError(f"{what} {text!r}: give whole numbers separated by commas, e.g. 1,2,4.") from None
    if not values or count is not None and len(values) != count:
        raise CLIError(f"{what} {text!r}: give {count or 'one or more'} comma-separated whole numbers.")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "explain a voxel or region by the training patches it resembles (prototype explanations)"
    parser = subparsers.add_parser("explain", help=help_text, description=help_text)
    add_model_arguments(parser, "bundled model name, model card or weight file; default: glioma2d")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--voxel", metavar="I,J,K", help="array indices of the first image on disk")
    target.add_argument("--region", type=Path, metavar="LABELS.nii.gz", help="labels on the first image's grid")
    parser.add_argument("--label-values", metavar="1,2,4", help="label values of --region to explain (default: all non-zero)")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for explanation.json, heatmaps, thumbnails, report.html")
    parser.add_argument("--top-k", type=int, default=5, help="prototypes to report (default 5)")
    parser.add_argument("--bank", type=Path, default=None, help="prototype bank (default: the model's own)")
    parser.add_argument("--forget", metavar="IDS", help="prototype ids to weight 0 (comma-separated); reports what changes")
    parser.add_argument("--baselines", action="store_true", help="also occlusion and integrated-gradients maps of the target plane (Captum)")
    add_device_argument(parser)
    parser.set_defaults(func=run)

    help_bank = "build a post-hoc prototype bank for a model from a folder of labelled cases"
    bank = subparsers.add_parser("prototype-bank", help=help_bank, description=help_bank)
    bank.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="the model (saved, with its card)")
    bank.add_argument("--cases", required=True, type=Path, help="folder of case folders (images + a label file each), or one case folder")
    bank.add_argument("--out", required=True, type=Path, help="bank card to write, NAME.prototypes.json (never replaced)")
    bank.add_argument("--per-class", type=int, default=10, help="prototypes per class (default 10)")
    bank.add_argument("--seed", type=int, default=0, help="k-means seed")
    bank.set_defaults(func=run_bank)


def run_bank(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.explain.bank import save_bank
    from napari_medadapt.core.explain.projection import case_folders, case_slices, kmeans_bank
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.models import load_model

    if args.per_class < 1:
        raise CLIError(f"--per-class {args.per_class}: give at least 1.")
    model = load_model(args.model)
    cases = case_folders(args.cases)
    slices = case_slices(cases, model, on_case=lambda c: print(f"read {c}", file=sys.stderr))
    bank = kmeans_bank(model, slices, per_class=args.per_class, seed=args.seed, ctx=JobContext(on_progress=text_progress("bank")))
    path = save_bank(bank, args.out)
    print(f"{len(bank)} prototypes from {len(cases)} case(s), {len(slices)} planes: wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.explain import Explainer
    from napari_medadapt.core.explain.report import write_explanation
    from napari_medadapt.core.explain.targets import region_mask, resolve_bank
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.model_input import prepare_model_input
    from napari_medadapt.core.provenance import model_entry, provenance_record

    if args.top_k < 1:
        raise CLIError(f"--top-k {args.top_k}: give at least 1.")
    images = parse_images(args.image)
    volume = load_images(images)
    geometry = volume.geometry
    model = load_checked_model(args.model, volume.channels, device=select_device(args.device))
    bank = resolve_bank(model, args.bank)
    explainer = Explainer(model, bank, prepare_model_input(model, volume), device=model.device)
    forget = _ints(args.forget, "--forget") if args.forget else []
    unknown = [i for i in forget if not 0 <= i < len(bank)]
    if unknown:
        raise CLIError(f"--forget {args.forget}: prototype ids {unknown} do not exist; this bank has 0..{len(bank) - 1}.")
    ctx = JobContext(on_progress=text_progress("explain"))
    inputs = [*images.values(), *([args.region] if args.region else [])]
    if args.voxel:
        ijk = _ints(args.voxel, "--voxel", 3)
        if not all(0 <= v < n for v, n in zip(ijk, geometry.source_shape, strict=True)):
            raise CLIError(f"--voxel {args.voxel}: outside the image (shape {tuple(geometry.source_shape)}); give indices inside it.")
        zyx = [int(v) for v in geometry.source_index_to_display(np.asarray([ijk]))[0]]
        explanation = explainer.explain_voxel(zyx, args.top_k)
        plane, evidence = zyx[0], None
    else:
        values = _ints(args.label_values, "--label-values") if args.label_values else None
        mask = region_mask(load_labels(args.region, geometry), values, what=f"--region {args.region}")
        explanation = explainer.explain_region(mask, args.top_k, description=f"region {Path(args.region).name}", ctx=ctx)
        plane = int(np.argmax(mask.sum(axis=(1, 2))))
    ids = [m.id for m in explanation.matches]
    heatmaps = explainer.heatmaps(ids, ctx=ctx)
    if not args.voxel:
        evidence = explainer.evidence(explanation, heatmaps)
    prediction = explainer.predict(ctx=ctx)
    target_region = prediction == explanation.predicted_label
    from napari_medadapt.core.explain.attribution import activation_precision
    from napari_medadapt.core.explain.bank import source_text

    extra: dict = {
        "localisation": {
            "activation_precision_vs_prediction": {
                str(i): round(activation_precision(h.astype(np.float32), target_region), 4) if target_region.any() else None
                for i, h in zip(ids, heatmaps, strict=True)
            },
            "peak_zyx": {str(i): [int(v) for v in np.unravel_index(int(np.argmax(h)), h.shape)] for i, h in zip(ids, heatmaps, strict=True)},
        },
        "inputs": {k: str(v) for k, v in images.items()},
        # how the explanation was made: inputs with their sha256 (a DICOM input by its series), model, bank, software
        "provenance": input_entries(images, provenance_record(
            "explain", inputs={**images, **({"region": args.region} if args.region else {}),
                               **({"bank": str(bank.path)} if bank.path else {})}, model=model_entry(model),
            settings={"voxel_ijk": args.voxel, "label_values": args.label_values, "top_k": args.top_k,
                      "forget": forget, "baselines": bool(args.baselines), "prototypes": len(bank)},
            device=str(model.device),
        )),
    }
    if args.baselines:  # on the explained model, before any prototype is forgotten
        extra["baselines"] = _baselines(explainer, plane, prediction, explanation, geometry, args.out_dir, inputs)
    if forget:
        extra["forget"] = _forget(explainer, forget, prediction, geometry.spacing, ctx)
    flair = list(volume.channels).index("flair") if "flair" in volume.channels else 0
    written = write_explanation(
        args.out_dir, explanation, bank, heatmaps, geometry, plane_image=volume.data[flair, plane], plane=plane,
        evidence=evidence, inputs=inputs, extra=extra,
    )
    print(f"predicted {explanation.predicted_class} (probability {explanation.probability:.2f}); top prototypes:")
    for m in explanation.matches:
        share = "" if m.share is None else f", {m.share:.0%} of the class score"
        print(f"  #{m.id:<3} {m.class_name:<32} similarity {m.similarity:.3f}{share}; {source_text(m.source)}")
    for note in explanation.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {written['json']} and {written['html']}", file=sys.stderr)
    return 0


def _forget(explainer, ids: list[int], before, spacing, ctx) -> dict:
    from napari_medadapt.core.metrics import dice, label_volumes_ml

    explainer.forget(ids)
    after = explainer.predict(ctx=ctx)
    return {
        "forgotten": ids,
        "changed_voxels": int((after != before).sum()),
        "dice_before_after": round(dice(before != 0, after != 0), 4),
        "volumes_ml_before": {k: round(v, 3) for k, v in label_volumes_ml(before, spacing).items()},
        "volumes_ml_after": {k: round(v, 3) for k, v in label_volumes_ml(after, spacing).items()},
    }


def _baselines(explainer, plane, prediction, explanation, geometry, out_dir, inputs) -> dict:
    import numpy as np

    from napari_medadapt.core.explain.attribution import activation_precision, gradient_map, occlusion_map
    from napari_medadapt.core.volume import save_image

    model = explainer.model
    if model.spatial_dims != 2 or explainer.prepared.resampled:
        return {"skipped": "baselines are computed for 2D models on their own grid only"}
    target = prediction[plane] == explanation.predicted_label
    cls = model.card.labels.index(explanation.predicted_label)
    image = explainer.prepared.data[:, plane]
    out = {}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, compute in (("occlusion", occlusion_map), ("gradient", gradient_map)):
        attribution = compute(model, image, target, [cls])
        volume = np.zeros(geometry.display_shape, dtype=np.float32)
        volume[plane] = attribution
        path = save_image(volume, geometry, Path(out_dir) / f"{name}.nii.gz", inputs=inputs)
        out[name] = {"file": path.name, "activation_precision_vs_prediction": round(activation_precision(attribution, target), 4) if target.any() else None}
    return out

