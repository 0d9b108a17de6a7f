"""``medadapt bench explain``: are the prototype heatmaps where the tumour is, and faithful to the model?

On the held-out glioma ``glioma_tcga_fg6692`` (planes through the tumour, evenly over its extent) and on
phantom tumour slices of seeds never used in training (their extent is known exactly), the bundled ``glioma2d``
with its projected prototypes explains the predicted whole tumour of each plane three ways, side by side:

- prototypes: the evidence map of the region's explanation (its top-5 prototypes' activation heatmaps,
  weighted by their share of the class score), what the dock and ``medadapt explain`` show;
- occlusion (Captum, a 20-pixel zero occluder, stride 10) and integrated gradients (Captum, 32 steps, zero
  baseline), on the same target (the mean tumour probability over the predicted tumour);
- a random ordering, the floor.

Scores: activation precision against the reference whole tumour (MProtoNet's AP), and incremental deletion /
insertion of the most-attributed brain pixels in 50 steps (IAD on the predicted tumour's mean probability).
Localisation over the whole volume beside the plane: the top-5 prototypes' heatmaps (and the evidence map) of
the predicted tumour (its largest 3D component, as the dock's "predicted region") and of a voxel at its centre,
computed over every plane: activation precision against the reference whole tumour over the whole volume and on
the tumour's largest plane, unrestricted and as the dock shows them by default (inside the explained object +
5 mm, :mod:`napari_medadapt.core.explain.localisation`). Also the Dice of the projected model against the unprojected one on the whole held-out volume, the seconds to
explain one voxel (current plane), a region, and the volume's heatmaps; and the artifact trap: the
``tts_trap`` model (which learned to call a bright marker tumour) with a post-hoc bank built from its own
training slices explains its false positive on a marker painted away from the tumour: do its top prototypes
come from marker patches? Writes ``docs/benchmarks/explain.json`` and ``explain.md``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json

HELP = "prototype explanations: localisation (AP) and faithfulness (IAD) vs occlusion/gradients, projection cost, time"

CASE = "glioma_tcga_fg6692"
METHODS = ("prototypes", "occlusion", "gradient", "random")
MIN_TUMOUR = 250


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench explain``."""
    add_data_argument(parser)
    add_report_arguments(parser, "explain")
    parser.add_argument("--planes", type=int, default=6, help="planes of the held-out glioma")
    parser.add_argument("--phantom-slices", type=int, default=6, help="phantom tumour slices (unseen seeds)")
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps")
    parser.add_argument("--seed", type=int, default=0, help="random ordering and phantom seeds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-trap", action="store_true", help="skip the artifact-trap experiment")
    parser.add_argument("--skip-baselines", action="store_true", help="prototypes and random only (no Captum baselines)")


def score_plane(
    explainer: Any, plane: int, truth: np.ndarray, steps: int, rng: np.random.Generator, baselines: bool = True,
) -> dict[str, Any]:
    """AP and IAD of every method on display plane ``plane`` of the explainer's volume (2D model, own grid);
    without ``baselines``, prototypes and random only."""
    from napari_medadapt.core.explain.attribution import (
        activation_precision,
        deletion_insertion,
        gradient_map,
        occlusion_map,
        target_score,
    )

    model = explainer.model
    image = explainer.prepared.data[:, plane]
    import torch

    with torch.inference_mode():
        predicted = model(torch.from_numpy(image[None])).argmax(1)[0].numpy() > 0
    if not predicted.any():
        return {"plane": plane, "skipped": "no tumour predicted"}
    tumour = list(range(1, model.num_classes))
    region = np.zeros(explainer.prepared.source_shape, bool)
    region[plane] = predicted
    maps, seconds = {}, {}
    start = time.perf_counter()
    explanation = explainer.explain_region(region, top_k=5)
    heat = explainer.heatmaps([m.id for m in explanation.matches], planes=[plane])
    maps["prototypes"] = explainer.evidence(explanation, heat)[plane].astype(np.float32)
    seconds["prototypes"] = time.perf_counter() - start
    for name, compute in (("occlusion", occlusion_map), ("gradient", gradient_map)) if baselines else ():
        start = time.perf_counter()
        maps[name] = compute(model, image, predicted, tumour)
        seconds[name] = time.perf_counter() - start
    maps["random"], seconds["random"] = rng.random(predicted.shape).astype(np.float32), 0.0
    score = target_score(model, predicted, tumour)
    inside = np.any(image != 0, axis=0)
    row: dict[str, Any] = {"plane": plane, "truth_pixels": int(truth.sum()), "predicted_pixels": int(predicted.sum())}
    for name in (m for m in METHODS if m in maps):
        faith = deletion_insertion(score, image, maps[name], inside, steps=steps)
        row[name] = {
            "ap": round(activation_precision(maps[name], truth), 4),
            **{k: round(v, 4) for k, v in faith.items()},
            "seconds": round(seconds[name], 3),
        }
    row["top_prototypes"] = [m.id for m in explanation.matches]
    return row


def _glioma(args: argparse.Namespace, model: Any, bank: Any, rng: np.random.Generator) -> dict[str, Any]:
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.explain import Explainer
    from napari_medadapt.core.metrics import dice, region_masks
    from napari_medadapt.core.model_input import prepare_model_input

    volume, labels = load_case(args.data / CASE)
    volume = volume.subset(("t1", "t1c", "t2", "flair"))
    reference = labels["seg_fusion"]
    explainer = Explainer(model, bank, prepare_model_input(model, volume))
    unprojected = Explainer(model, bank, explainer.prepared, projected=False)
    areas = (reference > 0).sum(axis=(1, 2))
    candidates = np.flatnonzero(areas >= MIN_TUMOUR)
    planes = sorted({int(candidates[i]) for i in np.linspace(0, len(candidates) - 1, args.planes).round().astype(int)})
    rows = []
    for plane in planes:
        rows.append(score_plane(explainer, plane, reference[plane] > 0, args.steps, rng, not args.skip_baselines))
        print(f"fg6692 plane {plane}: " + ", ".join(f"{m} AP {rows[-1][m]['ap']:.3f} IAD {rows[-1][m]['iad']:.3f}" for m in METHODS if m in rows[-1]), flush=True)
    accuracy, prediction = {}, None
    for name, ex in (("unprojected", unprojected), ("projected", explainer)):
        prediction = ex.predict()
        ours, truth = region_masks(prediction), region_masks(reference)
        accuracy[name] = {k: round(dice(ours[k], truth[k]), 4) for k in truth}
    centre = np.argwhere(reference == 2)[len(np.argwhere(reference == 2)) // 2]
    timing = {"voxel_current_plane": explainer.explain_voxel(centre).seconds}
    first = explainer.explain_region(reference > 0, top_k=5)
    timing["region_whole_tumour"] = first.seconds
    start = time.perf_counter()
    explainer.heatmaps([m.id for m in first.matches], planes=[int(centre[0])])
    timing["heatmaps_top5_current_plane"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    explainer.heatmaps([m.id for m in first.matches])
    timing["heatmaps_top5_volume"] = round(time.perf_counter() - start, 3)
    localisation = volume_localisation(explainer, prediction, reference > 0, volume.geometry.spacing)
    return {"case": CASE, "planes": rows, "accuracy": accuracy, "timing": timing, "localisation": localisation,
            "region_explanation": first.as_dict()}


def volume_localisation(explainer: Any, prediction: np.ndarray, truth: np.ndarray, spacing: Any) -> dict[str, Any]:
    """Activation precision over the whole volume and on the tumour's largest plane of the top-5 heatmaps (and
    the evidence map) explaining the predicted tumour and the voxel at its centre: unrestricted, and inside the
    explained object + the margin (the dock's default whole-volume view)."""
    from scipy import ndimage

    from napari_medadapt.core.explain.localisation import FOCUS_MARGIN_MM, focus_mask, localisation
    from napari_medadapt.core.explain.targets import component_at

    components, count = ndimage.label(prediction > 0, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return {"skipped": "no tumour predicted"}
    obj = components == 1 + int(np.argmax(ndimage.sum(prediction > 0, components, range(1, count + 1))))
    inside = np.argwhere(obj)
    centre = inside[np.argmin(((inside - inside.mean(0)) ** 2).sum(1))]
    out: dict[str, Any] = {"margin_mm": FOCUS_MARGIN_MM, "truth": "reference whole tumour", "targets": {}}
    for kind in ("predicted region", "voxel"):
        start = time.perf_counter()
        if kind == "voxel":
            explanation, region = explainer.explain_voxel(centre, top_k=5), component_at(prediction, centre)
        else:
            explanation, region = explainer.explain_region(obj, top_k=5, description="predicted region"), obj
        heat = explainer.heatmaps([m.id for m in explanation.matches]).astype(np.float32)
        focus = focus_mask(region, spacing)
        maps = {f"#{m.id} {m.class_name}": h for m, h in zip(explanation.matches, heat, strict=True)}
        if kind != "voxel":
            maps["evidence"] = explainer.evidence(explanation, heat).astype(np.float32)
        out["targets"][kind] = {
            "target": explanation.target, "object_voxels": int(region.sum()), "focus_voxels": int(focus.sum()),
            "seconds": round(time.perf_counter() - start, 1),
            "maps": {name: {"unrestricted": localisation(h, truth), "inside_object": localisation(h * focus, truth)}
                     for name, h in maps.items()},
        }  # fmt: skip
        for name, scores in out["targets"][kind]["maps"].items():
            print(f"fg6692 {kind} {name}: AP volume {scores['unrestricted']['volume']:.3f} (inside the object "
                  f"{scores['inside_object']['volume']:.3f}), largest plane {scores['unrestricted']['plane']:.3f}", flush=True)
    return out


def localisation_markdown(report: dict[str, Any]) -> list[str]:
    """The Markdown section of the whole-volume localisation."""
    loc = report["glioma"].get("localisation") or {}
    if "targets" not in loc:
        return []
    lines = [
        "## Localisation over the whole volume",
        "",
        "Activation precision (share of the heatmap-marked tissue inside the reference whole tumour) of the top-5 "
        "prototypes' heatmaps over the whole volume and on the tumour's largest plane; unrestricted, and as the dock "
        f"shows whole-volume heatmaps by default: inside the explained object + {loc['margin_mm']:g} mm. The explained "
        "object: the predicted tumour's largest 3D component (as a region), and the predicted region containing the "
        "voxel nearest its centre (as a voxel). The restricted columns are high by construction: they measure what "
        "the dock shows by default, not a better-localising model; the unrestricted ones are what the prototypes "
        "mark over the volume.",
        "",
        "| target | map | AP volume | AP largest plane | AP volume, inside object | AP plane, inside object |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, entry in loc["targets"].items():
        for name, scores in entry["maps"].items():
            u, f = scores["unrestricted"], scores["inside_object"]
            lines.append(f"| {kind} | {name} | {u['volume']:.3f} | {u['plane']:.3f} | {f['volume']:.3f} | {f['plane']:.3f} |")
    return [*lines, ""]


def _insert_localisation(report: dict[str, Any], path: Any) -> None:
    lines = localisation_markdown(report)
    if not lines:
        return
    text = path.read_text(encoding="utf-8")
    anchor = "## Projection: what it costs"
    section = "\n".join(lines) + "\n"
    path.write_text(text.replace(anchor, section + anchor, 1) if anchor in text else text + "\n" + section, encoding="utf-8")


def _phantoms(args: argparse.Namespace, model: Any, bank: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
    from napari_medadapt.core.explain import Explainer
    from napari_medadapt.core.model_input import prepare_model_input
    from napari_medadapt.core.synth import make_phantom_slice
    from napari_medadapt.core.volume import Geometry, Volume

    rows, seed = [], 700_000 + args.seed * 1000
    while len(rows) < args.phantom_slices:
        image, labels = make_phantom_slice(seed, tumour_probability=1.0)
        seed += 1
        if (labels > 0).sum() < MIN_TUMOUR:
            continue
        volume = Volume(image[:, None], Geometry.from_display_grid((1, *image.shape[1:])), ("t1", "t1c", "t2", "flair"))
        explainer = Explainer(model, bank, prepare_model_input(model, volume))
        row = score_plane(explainer, 0, labels > 0, args.steps, rng, not args.skip_baselines)
        rows.append({"seed": seed - 1, **row})
        print(f"phantom {seed - 1}: " + ", ".join(f"{m} AP {row[m]['ap']:.3f}" for m in METHODS if m in row), flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its reports."""
    import platform

    import torch

    from napari_medadapt.bench._explain_report import write_markdown
    from napari_medadapt.core.explain import find_bank
    from napari_medadapt.core.models import load_model

    resolve_paths(args)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = load_model("glioma2d").eval()
    bank = find_bank(model)
    start = time.monotonic()
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "bank": {"name": bank.card["name"], "projection": bank.card["projection"]},
        "steps": args.steps,
        "glioma": _glioma(args, model, bank, rng),
        "phantoms": _phantoms(args, model, bank, rng),
    }
    if not args.skip_trap:
        from napari_medadapt.bench._explain_trap import run_trap

        report["trap"] = run_trap(args, rng)
    report["seconds"] = round(time.monotonic() - start, 1)
    write_json(report, args.json)
    write_markdown(report, args.md)
    _insert_localisation(report, args.md)
    print(f"wrote {args.json} and {args.md}")
    return 0
