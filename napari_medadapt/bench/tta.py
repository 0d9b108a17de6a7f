"""``medadapt bench tta``: does test-time adaptation help, and does the shift score predict trouble?

On one real case (default: the held-out ``glioma_tcga_fg6692``, never used to train or tune the model) and
its simulated acquisition shifts (``STANDARD_SHIFTS``), for every volume:

- WT/TC/ET Dice of the source model, and after each adaptation method (bn_affine, tent, normalizer), with
  the seconds one adaptation takes (CPU, ``--threads`` torch threads);
- the shift score (BN-KL loss of the unadapted model) and its Spearman correlation with WT Dice;
- the relative error of the default slice subsample's loss against full-volume statistics (all foreground
  slices), for the subsample sizes in ``--tolerance-slices``.

Dice is computed on every ``--eval-every``-th axial slice of the brain (the model is 2D, so slices are
segmented independently and this is an unbiased slice subsample of the volume Dice); adaptation always
sees the whole volume. Writes ``docs/benchmarks/tta.json`` and ``tta.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json
from napari_medadapt.bench._tta_report import REGIONS, summarise, write_markdown

HELP = "test-time adaptation on a real case and its simulated shifts: Dice before/after, time, shift score vs Dice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench tta``."""
    parser.add_argument("--model", default="glioma2d", help="bundled model name or card path")
    add_data_argument(parser)
    parser.add_argument("--case", default="glioma_tcga_fg6692", help="case folder under --data")
    add_report_arguments(parser, "tta")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--methods", default="bn_affine,tent,normalizer", help="comma-separated methods")
    parser.add_argument(
        "--shifts", default=None, help="comma-separated indices into STANDARD_SHIFTS to include (default: all)"
    )
    parser.add_argument(
        "--adapt-shifts",
        default=None,
        help="comma-separated indices into STANDARD_SHIFTS whose volumes are also adapted (default: all "
        "included; the unshifted volume always is). The others only get the source Dice and the shift score.",
    )
    parser.add_argument(
        "--eval-every", type=int, default=1, help="Dice on every k-th brain slice of the whole-volume prediction"
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate for every method (default: adapt's)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations for every method (default: adapt's)")
    parser.add_argument("--optimizer", default=None, help="optimizer for every method (default: adapt's)")
    parser.add_argument(
        "--tolerance-slices", default="4,8,16", help="subsample sizes whose loss is compared with all slices"
    )
    parser.add_argument(
        "--tolerance-volumes", type=int, default=3, help="volumes (unshifted first) for the tolerance check"
    )
    parser.add_argument(
        "--distribution-phantoms",
        type=int,
        default=0,
        help="compute the training-domain shift-score distribution from N phantom volumes plus the training "
        "case glioma_tcga_du7294 first (0: use the card's)",
    )
    parser.add_argument(
        "--store-distribution",
        action="store_true",
        help="write that distribution into the model card (field shift_score) via the card API",
    )


def training_distribution(model, data_dir: Path, phantoms: int) -> dict:
    """Shift-score distribution over ``phantoms`` phantom volumes (seeds 0..N-1) and the training real case."""
    from napari_medadapt.core.adapt.tta.score import shift_score_distribution
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.synth import MODALITIES, make_phantom_volume
    from napari_medadapt.core.volume import Geometry, Volume

    def volumes():
        training_case, _ = load_case(data_dir / "glioma_tcga_du7294")
        yield "glioma_tcga_du7294", training_case.subset(model.card.modalities)
        for seed in range(phantoms):
            images, _ = make_phantom_volume(seed)
            yield f"phantom {seed}", Volume(images, Geometry.from_display_grid(images.shape[1:]), MODALITIES)

    return shift_score_distribution(model, volumes(), device="cpu")


def _dice_row(labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from napari_medadapt.core.metrics import dice, region_masks

    pred, ref = region_masks(labels), region_masks(reference)
    return {region: dice(pred[region], ref[region]) for region in REGIONS}


def _tolerance(model, volume, sizes: list[int]) -> dict[str, float]:
    """Relative error of the K-slice loss vs the all-foreground-slice loss, per K."""
    import torch

    from napari_medadapt.core.adapt.tta.methods import record_statistics
    from napari_medadapt.core.adapt.tta.samples import network_inputs, select_slices
    from napari_medadapt.core.adapt.tta.stats import bn_kl_loss, reference_statistics
    from napari_medadapt.core.model_input import prepare_input

    indices, inputs = network_inputs(model, volume, "all")
    with torch.no_grad():
        rows = record_statistics(model, inputs)
    references = reference_statistics(model)
    full = float(bn_kl_loss(rows.moments(), references))
    prepared = prepare_input(model, volume)
    position = {int(z): i for i, z in enumerate(indices)}
    out = {"all_slices": len(indices), "loss_all": full}
    for size in sizes:
        chosen = [position[int(z)] for z in select_slices(prepared, size)]
        loss = float(bn_kl_loss(rows.subset(chosen).moments(), references))
        out[f"rel_error_{size}"] = abs(loss - full) / max(full, 1e-12)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its JSON and Markdown reports."""
    resolve_paths(args)
    import torch

    from napari_medadapt.core.adapt.tta.methods import DEFAULT_ITERATIONS, DEFAULT_LR, adapt
    from napari_medadapt.core.adapt.tta.samples import DEFAULT_SLICES
    from napari_medadapt.core.adapt.tta.score import (
        classify_shift,
        shift_score,
        store_shift_distribution,
        typical_range,
    )
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.inference import predict_volume
    from napari_medadapt.core.models import load_model
    from napari_medadapt.core.synth.shifts import STANDARD_SHIFTS, apply_shift
    from napari_medadapt.core.volume import Volume

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = {k: v for k, v in (("lr", args.lr), ("iterations", args.iterations), ("optimizer", args.optimizer))
                 if v is not None}
    model = load_model(args.model, device="cpu")
    distribution = None
    if args.distribution_phantoms > 0:
        distribution = training_distribution(model, args.data, args.distribution_phantoms)
        model.card.shift_score = distribution
        print(f"training-domain shift scores: {distribution['scores']}", flush=True)
        if args.store_distribution:
            print(f"stored in {store_shift_distribution(model.card.path, distribution)}", flush=True)
    rated = typical_range(model.card) is not None
    case, labels = load_case(args.data / args.case)
    case = case.subset(model.card.modalities)
    reference = next(iter(labels.values()))
    brain = np.flatnonzero(np.any(case.data != 0, axis=(0, 2, 3)))
    eval_slices = brain[:: args.eval_every]
    def indices(text: str | None) -> list[int]:
        return list(range(len(STANDARD_SHIFTS))) if text is None else [int(i) for i in text.split(",") if i.strip()]

    shift_ids = indices(args.shifts)
    adapt_ids = set(indices(args.adapt_shifts))
    started = time.perf_counter()
    records = []
    tolerance = []
    sizes = [int(s) for s in args.tolerance_slices.split(",") if s.strip()]
    for index, shift_id in enumerate([None, *shift_ids]):
        name, kind, params = ("unshifted", None, {}) if shift_id is None else STANDARD_SHIFTS[shift_id]
        data = case.data if kind is None else apply_shift(case.data, kind, seed=shift_id, **params)
        volume = Volume(data, case.geometry, case.channels)
        # whole-volume predictions (the card's 3D post-processing needs the real slice neighbourhood); Dice on
        # the evaluation slices
        before = predict_volume(model, volume, device="cpu", return_probabilities=False)
        record = {
            "volume": name,
            "kind": kind or "none",
            "shift_score": shift_score(model, volume, device="cpu"),
            "before": _dice_row(before.labels[eval_slices], reference[eval_slices]),
            "methods": {},
        }
        record["category"] = classify_shift(record["shift_score"], model.card) if rated else None
        for method in methods if shift_id is None or shift_id in adapt_ids else []:
            result = adapt(model, volume, method, device="cpu", **overrides)
            after = predict_volume(result.model, volume, device="cpu", return_probabilities=False)
            record["methods"][method] = {
                "after": _dice_row(after.labels[eval_slices], reference[eval_slices]),
                "seconds": result.seconds,
                "shift_score_after": result.shift_score_after,
                "best_iteration": result.best_iteration,
                "loss_history": result.loss_history,
                "warnings": result.warnings,
            }
        if index < args.tolerance_volumes:
            tolerance.append({"volume": name, **_tolerance(model, volume, sizes)})
        records.append(record)
        line = ", ".join(
            f"{m} WT {r['after']['WT']:.3f} ({r['seconds']:.0f} s)" for m, r in record["methods"].items()
        )
        print(f"{name}: score {record['shift_score']:.4f}, WT before {record['before']['WT']:.3f}; {line}",
              flush=True)
    report = {
        "model": model.card.name,
        "case": args.case,
        "eval_every": args.eval_every,
        "eval_slices": len(eval_slices),
        "threads": args.threads,
        "settings": {
            "lr": overrides.get("lr", DEFAULT_LR),
            "iterations": overrides.get("iterations", DEFAULT_ITERATIONS),
            "optimizer": overrides.get("optimizer", "adam"),
            "slices": DEFAULT_SLICES,
        },
        "shift_distribution": model.card.shift_score,
        "records": records,
        "tolerance": tolerance,
        "summary": summarise(records, methods),
        "total_seconds": time.perf_counter() - started,
    }
    write_json(report, args.json)
    write_markdown(report, args.md)
    print(f"wrote {args.json} and {args.md} in {report['total_seconds']:.0f} s")
    return 0
