"""``medadapt bench fewshot``: Dice on the slices nobody labelled, against the number of labelled slices.

For 1, 3, 5 and 10 labelled axial slices (chosen evenly over the object's extent: the slices at the quantiles
i/(k+1) of the object's first-to-last slice, deterministic), every method (adapter, linear probe, last block,
full fine-tuning), with and without the size prior:

- on the held-out glioma ``glioma_tcga_fg6692`` with the bundled ``glioma2d`` as the frozen model (the support
  is the reference's classes 1, 2, 4 on those slices): WT/TC/ET and per-class Dice on every other axial slice,
  and the source model's zero-shot Dice on the same slices as the floor;
- the adapter with the prior once more with two slices marked *annotated, empty* (3 slices beyond each end
  of the object: what a user checks in a few seconds), Dice on the slices neither painted nor marked;
- on the CT case ``ct_abdomen_totalseg_example`` with LiteMedSAM as the frozen model (the bundled models are
  brain-MRI models): liver, spleen and the left kidney, one organ per fit (adapter and linear probe: the
  foundation model itself is not trained).

Also the seconds of each fit on this machine, for the adapter the ratio of a fit on cached frozen features
to the same fit recomputing them at every step, and a refit after painting the slice the 3-slice adapter
suggests next: warm (from the 3-slice adapter, a share of the steps) against from scratch, seconds and WT Dice. Defaults of the method were chosen on other data (the training
case du7294, synthetic phantoms, the CT's stomach and aorta), never on what this benchmark scores. Writes
``docs/benchmarks/fewshot.json`` and ``fewshot.md``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json

HELP = "few-shot adapters: Dice on unlabelled slices vs labelled slices, per method, with/without the size prior"

GLIOMA_CASE = "glioma_tcga_fg6692"
CT_CASE = "ct_abdomen_totalseg_example"
CT_ORGANS = {"liver": 5, "spleen": 1, "kidney_left": 3}
BRATS_CLASSES = {"NCR": 1, "ED": 2, "ET class": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench fewshot``."""
    add_data_argument(parser)
    add_report_arguments(parser, "fewshot")
    parser.add_argument("--counts", default="1,3,5,10", help="numbers of labelled slices")
    parser.add_argument("--methods", default="adapter,linear_probe,ft_last,full", help="methods (glioma)")
    parser.add_argument("--ct-methods", default="adapter,linear_probe", help="methods on the CT organs")
    parser.add_argument("--steps", type=int, default=100, help="steps per fit")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-glioma", action="store_true", help="only the CT organs")
    parser.add_argument("--skip-ct", action="store_true", help="only the glioma")


def support_slices(mask: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices evenly over the extent of ``mask`` (distinct, deterministic)."""
    extent = np.flatnonzero(mask.any(axis=(1, 2)))
    first, last = int(extent[0]), int(extent[-1])
    picks = [int(round(first + (last - first) * (i + 1) / (count + 1))) for i in range(count)]
    return sorted(set(picks))


def _rest(shape: tuple[int, ...], slices: list[int]) -> np.ndarray:
    keep = np.ones(shape[0], dtype=bool)
    keep[slices] = False
    return keep


def _scores(predicted: np.ndarray, reference: np.ndarray, keep: np.ndarray, regions: dict[str, Any]) -> dict:
    from napari_medadapt.core.metrics import dice

    return {name: round(dice(select(predicted[keep]), select(reference[keep])), 4) for name, select in regions.items()}


GLIOMA_REGIONS = {
    "WT": lambda a: a > 0,
    "TC": lambda a: np.isin(a, (1, 4)),
    "ET": lambda a: a == 4,
    **{name: (lambda a, i=i: a == i) for name, i in BRATS_CLASSES.items()},
}


def empty_slices(mask: np.ndarray) -> list[tuple[int, int]]:
    """Up to two axial slices a user checks and marks empty: 3 slices beyond each end of the object (those
    inside the volume)."""
    extent = np.flatnonzero(mask.any(axis=(1, 2)))
    candidates = (int(extent[0]) - 3, int(extent[-1]) + 3)
    return [(0, z) for z in candidates if 0 <= z < mask.shape[0]]


def _runs(methods: list[str], reference: np.ndarray) -> list[tuple[str, bool, tuple]]:
    """Every method with and without the prior, then the adapter with the prior and the slices a user marks
    empty (none when the object reaches both ends of the volume)."""
    runs = [(method, prior, ()) for method in methods for prior in (True, False)]
    empty = tuple(empty_slices(reference > 0))
    if empty:
        runs.append(("adapter", True, empty))
    return runs


def _fit_row(frozen, volume, reference, support, method, prior, steps, session, regions, empty=(), **kwargs) -> dict:
    from napari_medadapt.core.adapt.fewshot.fit import fit

    slices = sorted({int(i) for i in np.flatnonzero(support.any(axis=(1, 2)))})
    result = fit(frozen, volume, support, method, prior=prior, steps=steps, session=session, leave_one_out=False,
                 empty_planes=empty, **kwargs)
    keep = _rest(reference.shape, slices + [i for _, i in empty])
    return {
        "method": method, "prior": prior, "slices": slices, "empty": [i for _, i in empty],
        "dice": _scores(result.predicted, reference, keep, regions),
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "final_loss": round(result.history[-1]["loss"], 4),
        "zero_shot": _scores(result.zero_shot, reference, keep, regions),
    }


def recompute_ratio(model, volume, support: np.ndarray, steps: int) -> dict[str, float]:
    """Seconds of an adapter fit (no prior) on cached features against the same steps recomputing the frozen
    features of the support slices at every step (what a fit without the cache costs)."""
    import torch

    from napari_medadapt.core.adapt.fewshot.backbone import SegBackbone
    from napari_medadapt.core.adapt.fewshot.fit import fit
    from napari_medadapt.core.adapt.fewshot.train import dice_loss, new_head, plane_losses

    cached = fit(model, volume, support, "adapter", prior=False, steps=steps, leave_one_out=False)
    slices = sorted({int(i) for i in np.flatnonzero(support.any(axis=(1, 2)))})
    backbone = SegBackbone(model, volume)
    z0 = backbone.box[0].start
    x = torch.from_numpy(backbone.input_planes([z - z0 for z in slices]))
    classes = cached.classes
    lut = np.zeros(256, dtype=np.int64)
    lut[list(classes)] = np.arange(1, len(classes) + 1)
    targets = torch.from_numpy(lut[support[slices][:, backbone.box[1], backbone.box[2]].astype(np.int64)])
    head, _ = new_head(model.head, model.card.labels, classes, model.decoder_channels, 2, adapter=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-5)
    known = torch.ones(len(classes) + 1, dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.no_grad():
            features = model.forward_features(x, taps=["decoder"]).features["decoder"]
        optimizer.zero_grad()
        logits = head(features)
        ce, inter, total = 0.0, 0.0, 0.0
        for n in range(len(slices)):
            c, i, t = plane_losses(logits[n].flatten(1), targets[n].flatten(), known)
            ce, inter, total = ce + c, inter + i, total + t
        (ce / len(slices) + dice_loss(inter, total, known)).backward()
        optimizer.step()
    recompute = time.perf_counter() - start
    return {"cached_fit_seconds": round(cached.seconds["fit"], 2), "recompute_fit_seconds": round(recompute, 2),
            "ratio": round(recompute / cached.seconds["fit"], 2), "slices": len(slices), "steps": steps}


def warm_refit(model, volume, reference: np.ndarray, session, steps: int) -> dict[str, Any]:
    """The 3-slice adapter (+ prior), then one more slice painted (the one it suggests): a warm refit against a
    fit from scratch on the 4 slices, seconds (fit + predict) and WT Dice on the slices painted in neither."""
    from napari_medadapt.core.adapt.fewshot.fit import fit

    slices = support_slices(reference > 0, 3)
    support = np.zeros_like(reference)
    support[slices] = reference[slices]
    first = fit(model, volume, support, steps=steps, session=session, leave_one_out=False)
    suggested = first.suggestions(1)
    if not suggested:
        return {}
    more = sorted([*slices, suggested[0].index])
    support[more] = reference[more]
    keep = _rest(reference.shape, more)
    out: dict[str, Any] = {"slices": slices, "suggested": suggested[0].describe(), "steps": steps,
                           "estimate_seconds": round(first.refit_seconds(len(more)), 1)}
    for name, start in (("warm", first), ("cold", None)):
        result = fit(model, volume, support, steps=steps, session=session, leave_one_out=False, warm_start=start)
        out[name] = {"seconds": round(result.seconds["fit"] + result.seconds["predict"], 2),
                     "steps": len(result.history), "WT": _scores(result.predicted, reference, keep, GLIOMA_REGIONS)["WT"]}
    out["before"] = {"WT": _scores(first.predicted, reference, keep, GLIOMA_REGIONS)["WT"]}
    return out


def run_glioma(args: argparse.Namespace, counts: list[int], methods: list[str]) -> dict[str, Any]:
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.session import ModelSession

    volume, label_maps = load_case(args.data / GLIOMA_CASE)
    volume = volume.subset(("t1", "t1c", "t2", "flair"))
    reference = label_maps["seg_fusion"]
    session = ModelSession()
    model = session.model("glioma2d")
    rows = []
    for count in counts:
        slices = support_slices(reference > 0, count)
        support = np.zeros_like(reference)
        support[slices] = reference[slices]
        for method, prior, empty in _runs(methods, reference):
            row = _fit_row(model, volume, reference, support, method, prior, args.steps, session,
                           GLIOMA_REGIONS, empty)
            rows.append({"count": count, **row})
            print(f"glioma k={count} {method} prior={prior} empty={row['empty']}: WT {row['dice']['WT']:.3f} "
                  f"({row['seconds']})", flush=True)
    slices = support_slices(reference > 0, 3)
    support = np.zeros_like(reference)
    support[slices] = reference[slices]
    return {"case": GLIOMA_CASE, "model": "glioma2d", "rows": rows,
            "cache": recompute_ratio(model, volume, support, args.steps),
            "refit": warm_refit(model, volume, reference, session, args.steps)}


def run_ct(args: argparse.Namespace, counts: list[int], methods: list[str]) -> dict[str, Any]:
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.sam.workspace import ModelChoice
    from napari_medadapt.core.session import ModelSession
    from napari_medadapt.core.volume import load_volume

    volume = load_volume(args.data / CT_CASE / "ct.nii.gz", name="ct")
    seg = load_labels(args.data / CT_CASE / "seg.nii.gz", volume.geometry)
    session = ModelSession()
    predictor = session.sam.predictor(ModelChoice("litemedsam"), JobContext(), [])
    rows = []
    for organ, label in CT_ORGANS.items():
        reference = np.where(seg == label, label, 0).astype(np.uint8)
        for count in counts:
            slices = support_slices(reference > 0, count)
            support = np.zeros_like(reference)
            support[slices] = reference[slices]
            for method, prior, empty in _runs(methods, reference):
                row = _fit_row(predictor, volume, reference, support, method, prior, args.steps, session,
                               {organ: lambda a: a > 0}, empty, largest_component=True)
                row.pop("zero_shot")
                rows.append({"organ": organ, "count": count, **row})
                print(f"ct {organ} k={count} {method} prior={prior} empty={row['empty']}: "
                      f"{row['dice'][organ]:.3f} ({row['seconds']})", flush=True)
    return {"case": CT_CASE, "model": "litemedsam", "rows": rows}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its reports."""
    import torch

    from napari_medadapt.bench._fewshot_report import write_markdown

    resolve_paths(args)
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.counts.split(",")]
    report: dict[str, Any] = {
        "machine": f"CPU, {args.threads} torch threads", "steps": args.steps, "counts": counts,
    }
    if not args.skip_glioma:
        report["glioma"] = run_glioma(args, counts, args.methods.split(","))
    if not args.skip_ct:
        report["ct"] = run_ct(args, counts, args.ct_methods.split(","))
    write_json(report, args.json)
    write_markdown(report, args.md)
    print(f"wrote {args.json} and {args.md}")
    return 0
