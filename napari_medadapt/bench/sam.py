"""``medadapt bench sam``: interactive segmentation with the Segment Anything engine.

Simulates a user (METHODS section 5) on every slice (along ``--axis``) that contains the target
(union of ``--label-values``) and reports NoC@80/85/90, NoF@85/90, mean IoU after 1, 3 and 5
clicks, IoU from a tight and a jittered box, seconds per click, and the 3D Dice of propagation from the
middle slice's reference mask (every propagation mode, and box-margin within the reference's slice extent).
In the same run it compares the model with mask feedback, without mask feedback, with a jittered box kept and
clicks added, and a classical geodesic click baseline; and times click latency, embedding 155 slices,
propagation through 100 slices, LiteMedSAM's encoder paths, and SAM ViT-B's decoder/encoder on CPU (random
weights). ``--append`` adds a model or case to the report; ``--compare-only`` runs a further model on a case
without the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.bench._common import add_report_arguments, resolve_paths
from napari_medadapt.core.paths import source_checkout

HELP = "interactive segmentation benchmark (NoC/NoF, box IoU, propagation Dice, timings)"
#: propagation runs: the engine's modes, and box-margin limited to the reference's slice extent (the 3D box a
#: LiteMedSAM user gives, as in its challenge's 3D protocol)
PROPAGATION_RUNS = ("mask", "box", "points", "box-margin", "box-margin in extent")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options."""
    parser.add_argument("--image", required=True, type=Path, help="NIfTI image (one channel)")
    parser.add_argument("--label", required=True, type=Path, help="NIfTI label map")
    parser.add_argument(
        "--label-values", default=None, help="comma-separated label values forming the target"
    )
    parser.add_argument("--model", default="sam-small", help="registry name or checkpoint path")
    parser.add_argument("--max-clicks", type=int, default=20)
    add_report_arguments(parser, "sam")
    parser.add_argument(
        "--window", default=None, help="lo,hi or a preset; default: CT soft tissue / MRI auto"
    )
    parser.add_argument("--axis", type=int, default=0, help="slice axis of the display array (0 = axial)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help="add this case to an existing JSON report")
    parser.add_argument("--skip-vit", action="store_true", help="skip the ViT-B CPU timings")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--baseline-every", type=int, default=1, help="run the classical baseline on every k-th slice (0: skip it)"
    )
    parser.add_argument(
        "--compare-only", action="store_true",
        help="a second model on a case: skip the no-feedback row, the 155-slice embedding and encoder timings",
    )


def _parse_window(text: str | None, data: np.ndarray) -> tuple[float, float]:
    from napari_medadapt.core.sam.prompts import resolve_window

    if text is None:
        return resolve_window(data, "ct-soft-tissue" if float(data.min()) < -500 else "mri-auto")
    if "," in text:
        lo, hi = (float(v) for v in text.split(","))
        return resolve_window(data, (lo, hi))
    return resolve_window(data, text)


def _click_sessions(segmenter_factory: Any, targets: list[np.ndarray], max_clicks: int) -> list[Any]:
    from napari_medadapt.core.sam.clicks import simulate_clicks

    return [simulate_clicks(segmenter_factory(i), t, max_clicks=max_clicks) for i, t in enumerate(targets)]


def _time_vit_b(seconds: dict[str, Any]) -> None:
    """Decoder click latency and encoder time per slice of SAM ViT-B on CPU, random weights."""
    import torch

    from napari_medadapt.core.sam._compat import build_sam_vit
    from napari_medadapt.core.sam.decoding import decode

    torch.manual_seed(0)
    sam = build_sam_vit("vit_b")
    emb = torch.randn(1, 256, 64, 64)
    times = []
    with torch.inference_mode():
        for k in range(6):
            pts = torch.tensor([[[500.0 + k, 400.0]]])
            t0 = time.perf_counter()
            decode(sam, emb, pts, torch.ones(1, 1, dtype=torch.int64), None, None, multimask=True)
            times.append(time.perf_counter() - t0)
        seconds["vit_b_decoder_click_s_median"] = float(np.median(times[1:]))
        x = torch.randn(1, 3, 1024, 1024)
        t0 = time.perf_counter()
        sam.image_encoder(x)
        seconds["vit_b_encoder_s_per_slice"] = time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the JSON and Markdown reports."""
    import torch

    resolve_paths(args)
    from napari_medadapt.bench._sam_baseline import geodesic_segment, gradient_cost
    from napari_medadapt.bench._sam_report import write_markdown
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.sam.clicks import iou, jittered_box, summarize_sessions
    from napari_medadapt.core.sam.predictor import EmbeddingCache, SamPredictor
    from napari_medadapt.core.sam.prompts import box_from_mask, make_prompts
    from napari_medadapt.core.sam.propagation import MODES as PROPAGATION_MODES
    from napari_medadapt.core.sam.propagation import propagate
    from napari_medadapt.core.sam.registry import REGISTRY, load_sam
    from napari_medadapt.core.volume import load_volume

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    volume = load_volume(args.image)
    image = np.moveaxis(volume.data[0], args.axis, 0)
    labels = np.moveaxis(load_labels(args.label, volume.geometry), args.axis, 0)
    values = [int(v) for v in args.label_values.split(",")] if args.label_values else None
    target3d = np.isin(labels, values) if values else labels > 0
    window = _parse_window(args.window, image)
    slice_ids = [int(i) for i in np.flatnonzero(target3d.any(axis=(1, 2)))]
    if not slice_ids:
        raise SystemExit("the target (label values) is empty in this label map")
    targets = [target3d[i] for i in slice_ids]
    model = load_sam(args.model, device="cpu")
    predictor = SamPredictor(model, cache=EmbeddingCache(max_bytes=2 * 1024**3))
    print(f"{len(slice_ids)} slices with the target; window {window}", flush=True)
    predictor.precompute(image[slice_ids], window)

    click_times: list[float] = []
    click_cpu: list[float] = []

    boxes = [jittered_box(t, rng, max_jitter=10) for t in targets]

    def sam_factory(feedback: bool, with_box: bool = False) -> Any:
        def factory(k: int) -> Any:
            state: dict[str, Any] = {"feedback": None}

            def segment(points: np.ndarray, point_labels: np.ndarray) -> np.ndarray:
                t0, c0 = time.perf_counter(), time.process_time()
                pred = predictor.predict(
                    image[slice_ids[k]],
                    window,
                    make_prompts(points, point_labels, boxes[k] if with_box else None, state["feedback"]),
                )
                click_times.append(time.perf_counter() - t0)
                click_cpu.append(time.process_time() - c0)
                if feedback:
                    state["feedback"] = pred.feedback
                return pred.mask

            return segment

        return factory

    methods: dict[str, Any] = {}
    t0 = time.perf_counter()
    sessions = _click_sessions(sam_factory(True), targets, args.max_clicks)
    methods[f"{model.name} + mask feedback"] = summarize_sessions(sessions, args.max_clicks)
    methods[f"{model.name} + mask feedback"]["median_s_per_click"] = float(np.median(click_times))
    cpu_click = float(np.median(click_cpu))
    print("with feedback", methods[f"{model.name} + mask feedback"], time.perf_counter() - t0, flush=True)
    if not args.compare_only:
        click_times.clear()
        sessions = _click_sessions(sam_factory(False), targets, args.max_clicks)
        methods[f"{model.name}, no mask feedback"] = summarize_sessions(sessions, args.max_clicks)
        methods[f"{model.name}, no mask feedback"]["median_s_per_click"] = float(np.median(click_times))
        print("no feedback", methods[f"{model.name}, no mask feedback"], flush=True)
    click_times.clear()
    click_times.clear()
    sessions = _click_sessions(sam_factory(True, with_box=True), targets, args.max_clicks)
    methods[f"{model.name}, jittered box + clicks + mask feedback"] = summarize_sessions(sessions, args.max_clicks)
    methods[f"{model.name}, jittered box + clicks + mask feedback"]["median_s_per_click"] = float(
        np.median(click_times)
    )
    print("box + clicks", methods[f"{model.name}, jittered box + clicks + mask feedback"], flush=True)

    base_ids = list(range(0, len(slice_ids), args.baseline_every)) if args.baseline_every > 0 else []
    base_times: list[float] = []

    def geo_factory(k: int) -> Any:
        cost = gradient_cost(image[slice_ids[base_ids[k]]], window)

        def segment(points: np.ndarray, point_labels: np.ndarray) -> np.ndarray:
            t1 = time.perf_counter()
            out = geodesic_segment(cost, points, point_labels)
            base_times.append(time.perf_counter() - t1)
            return out

        return segment

    if base_ids:
        sessions = _click_sessions(geo_factory, [targets[k] for k in base_ids], args.max_clicks)
        methods["geodesic clicks (classical)"] = summarize_sessions(sessions, args.max_clicks)
        methods["geodesic clicks (classical)"]["median_s_per_click"] = float(np.median(base_times))
        print("geodesic", methods["geodesic clicks (classical)"], flush=True)

    box_ious = [iou(predictor.predict(image[slice_ids[k]], window, box=boxes[k]).mask, t) for k, t in enumerate(targets)]
    tight_ious = [
        iou(predictor.predict(image[slice_ids[k]], window, box=box_from_mask(t)).mask, t) for k, t in enumerate(targets)
    ]

    # propagation from the middle slice's reference mask, with fresh (uncached) embeddings first
    mid = slice_ids[len(slice_ids) // 2]
    propagation: dict[str, Any] = {"seed_slice": mid, "target_slices": len(slice_ids)}
    extent = (slice_ids[0], slice_ids[-1])
    for mode in PROPAGATION_RUNS:
        engine_mode, index_range = (mode, None) if mode in PROPAGATION_MODES else ("box-margin", extent)
        # compare-only: one run per mode on the shared cache (no timings)
        fresh = predictor if args.compare_only else SamPredictor(model, cache=EmbeddingCache(max_bytes=2 * 1024**3))
        t1 = time.perf_counter()
        result = propagate(fresh, image, {mid: target3d[mid]}, window, mode=engine_mode, index_range=index_range)
        uncached = time.perf_counter() - t1
        pred3d = result.mask
        dice = 2 * np.logical_and(pred3d, target3d).sum() / max(1, pred3d.sum() + target3d.sum())
        n_prop = max(1, len(result.stats) - 1)
        propagation[mode] = {"dice_3d": float(dice), "slices_filled": len(result.stats), "stopped": result.stopped}
        if not args.compare_only:
            t1, c1 = time.perf_counter(), time.process_time()
            propagate(fresh, image, {mid: target3d[mid]}, window, mode=engine_mode, index_range=index_range)
            propagation[mode].update({
                "s_per_100_slices_uncached": uncached / n_prop * 100,
                "s_per_100_slices_cached": (time.perf_counter() - t1) / n_prop * 100,
                "cpu_s_per_100_slices_cached": (time.process_time() - c1) / n_prop * 100,
            })
        print("propagation", mode, propagation[mode], flush=True)

    seconds: dict[str, Any] = {}
    if not args.compare_only:
        rgb = [predictor_slice_rgb(image[i % image.shape[0]], window) for i in range(155)]
        t1, c1 = time.perf_counter(), time.process_time()
        for start in range(0, 155, model.batch_size):
            model.embed(rgb[start : start + model.batch_size])
        seconds["embed_155_slices_s"] = time.perf_counter() - t1
        seconds["embed_155_slices_cpu_s"] = time.process_time() - c1
    seconds["click_to_mask_cpu_s_median"] = cpu_click
    seconds["click_to_mask_s_median_cached"] = methods[f"{model.name} + mask feedback"]["median_s_per_click"]
    if not args.compare_only:
        # per-100-slice figures from the run that crossed the most slices: a short run mostly measures overhead
        timed_mode = max(PROPAGATION_RUNS, key=lambda m: propagation[m]["slices_filled"])
        seconds["propagation_timed_mode"] = timed_mode
        seconds["propagation_timed_slices"] = propagation[timed_mode]["slices_filled"]
        seconds["propagation_100_slices_s_cached"] = propagation[timed_mode]["s_per_100_slices_cached"]
        seconds["propagation_100_slices_s_uncached"] = propagation[timed_mode]["s_per_100_slices_uncached"]
        seconds["propagation_100_slices_cpu_s_cached"] = propagation[timed_mode]["cpu_s_per_100_slices_cached"]
    if model.preprocess == "litemedsam" and not args.compare_only:
        seconds.update(_litemedsam_encoder_paths(model, image, slice_ids, targets, window))
    if not args.skip_vit:
        _time_vit_b(seconds)
    print("timing", seconds, flush=True)

    case = {
        "image": _relative(args.image),
        "label": _relative(args.label),
        "label_values": values,
        "model": model.name,
        "model_sha256": model.weights_hash,
        "decoder_sha256": getattr(REGISTRY.get(model.name), "decoder_sha256", None),
        "axis": args.axis,
        "torch_threads": args.threads,
        "window": list(window),
        "slices_with_target": len(slice_ids),
        "baseline_slices": len(base_ids),
        "max_clicks": args.max_clicks,
        "methods": methods,
        "box_iou_mean": float(np.mean(box_ious)),
        "box_iou_median": float(np.median(box_ious)),
        "tight_box_iou_mean": float(np.mean(tight_ious)),
        "tight_box_iou_median": float(np.median(tight_ious)),
        "propagation": propagation,
        "timing": seconds,
    }
    json_path = args.json
    report: dict[str, Any] = {"cases": []}
    if args.append and json_path.exists():
        report = json.loads(json_path.read_text())
        report["cases"] = [
            c
            for c in report.get("cases", [])
            if (c["image"], c["label_values"], c["model"]) != (case["image"], case["label_values"], case["model"])
        ]
    report["cases"].append(case)
    report["environment"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.md)
    print(f"wrote {json_path} and {args.md}")
    return 0


def _litemedsam_encoder_paths(
    model: Any, image: np.ndarray, slice_ids: list[int], targets: list[np.ndarray], window: tuple[float, float]
) -> dict[str, Any]:
    """LiteMedSAM's encoder as published (fp32 eager, BatchNorm unfused), the path in use (fp32, fused for
    inference: tiny_vit.fuse_for_inference) and the opt-in bf16 path: ms per slice in this run (10 slices each,
    after a warm-up), and the lowest IoU of each path's tight-box masks with the published path's."""
    from napari_medadapt.core.sam.clicks import iou
    from napari_medadapt.core.sam.model import PromptableModel, cpu_bf16_available
    from napari_medadapt.core.sam.prompts import box_from_mask, make_prompts
    from napari_medadapt.core.sam.registry import checkpoint_path, load_state_dict
    from napari_medadapt.core.sam.tiny_vit import build_litemedsam

    plain = build_litemedsam()
    plain.load_state_dict(load_state_dict(checkpoint_path(model.name)))
    reference = PromptableModel(plain, model.name, model.weights_hash, "litemedsam", "cpu", cpu_batch=1)
    picks = list(range(0, len(slice_ids), max(1, len(slice_ids) // 10)))[:10]
    rgb = [predictor_slice_rgb(image[slice_ids[k]], window) for k in picks]
    out: dict[str, Any] = {}
    embeddings: dict[str, list[np.ndarray]] = {}
    previous = os.environ.get("MEDADAPT_SAM_PRECISION")
    try:
        for label, wrapper, precision in (("fp32_eager", reference, "fp32"), ("in_use", model, "fp32"),
                                          ("bf16", model, "bf16")):
            os.environ["MEDADAPT_SAM_PRECISION"] = precision
            if precision == "bf16" and not cpu_bf16_available():
                continue
            wrapper.embed(rgb[:1])  # warm-up
            t0 = time.perf_counter()
            embeddings[label] = [wrapper.embed([x])[0] for x in rgb]
            out[f"encoder_ms_per_slice_{label}"] = (time.perf_counter() - t0) / len(rgb) * 1000
    finally:
        if previous is None:
            os.environ.pop("MEDADAPT_SAM_PRECISION", None)
        else:
            os.environ["MEDADAPT_SAM_PRECISION"] = previous
    masks = {label: [] for label in embeddings}
    for n, k in enumerate(picks):
        box, size = make_prompts(box=box_from_mask(targets[k])), image[slice_ids[k]].shape
        for label, found in embeddings.items():
            masks[label].append(reference.predict(found[n], size, box).mask)
    for label in embeddings:
        if label != "fp32_eager":
            out[f"encoder_speedup_{label}_vs_fp32_eager"] = (
                out["encoder_ms_per_slice_fp32_eager"] / out[f"encoder_ms_per_slice_{label}"]
            )
            out[f"encoder_{label}_mask_iou_vs_fp32_eager_min"] = float(
                min(iou(a, b) for a, b in zip(masks[label], masks["fp32_eager"], strict=True))
            )
    return out


def predictor_slice_rgb(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """8-bit RGB of a slice (the encoder input before resizing)."""
    from napari_medadapt.core.sam.prompts import slice_to_rgb

    return slice_to_rgb(image, window)


def _relative(path: Path) -> str:
    try:
        checkout = source_checkout()
        return str(Path(path).resolve().relative_to(checkout.parent)) if checkout else str(path)
    except ValueError:
        return str(path)
