"""``medadapt bench tts``: does TTS keypoint muting undo a learned artifact shortcut, and is it interactive?

The trap model ``tts_trap`` (``medadapt train tts-trap``) saw a bright marker or ruler-like stripe on every
training tumour. Test slices (never trained on): the real case ``glioma_tcga_fg6692`` and phantom slices
with new seeds, each twice: with the artifact painted *away from* the tumour (>= 30 mm) and clean.

A simulated user clicks positives uniformly inside the reference tumour and negatives on the artifact
(artifact slices) or on brain tissue >= 10 mm from the tumour (clean slices): 1+1, 5+5 and 20+20
keypoints, alpha 0.4 and 0.2, keep 5/10/25 %, several random draws each; at the decoder tap both with the
background channels kept (the default segmentation extension) and with the published rule (every channel
outside the top fraction zeroed). Reported per setting: the false-positive volume on the artifact
(predicted tumour within 3 mm of the artifact, outside the reference) and the whole-tumour Dice (pooled
over the slices), before and after muting; plus the latency of
re-predicting the current slice after a keypoint change with cached features (:class:`SliceTTS`)
against re-running the whole network for that slice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths

HELP = "TTS benchmark: artifact false positives and Dice before/after keypoint muting, re-prediction latency"

TEST_CASE = "glioma_tcga_fg6692"
KEYPOINTS = (1, 5, 20)
ALPHAS = (0.4, 0.2)
KEEPS = (0.05, 0.10, 0.25)
MIN_TUMOUR_VOXELS = 250
#: Taps muted by forward hook (the rest of the network runs again): 1+1 and 5+5 keypoints, one draw.
OTHER_TAPS = ("bottleneck", "up1", "up2")
OTHER_TAP_KEEPS = (0.10, 0.25)
#: Channel rules compared at the decoder tap (other taps have no head to attribute channels: published only).
RULE_BACKGROUND = "keep background"
RULE_PUBLISHED = "published"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench tts``."""
    parser.add_argument("--model", default="tts_trap", help="model name or card path (default: tts_trap)")
    add_data_argument(parser)
    add_report_arguments(parser, "tts")
    parser.add_argument("--real-slices", type=int, default=12, help="tumour slices of the test case")
    parser.add_argument("--phantom-slices", type=int, default=12, help="phantom test slices")
    parser.add_argument("--draws", type=int, default=3, help="random keypoint draws per setting")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------- test data
def _artifact_value(channels: np.ndarray) -> np.ndarray:
    """Per-channel intensity of the painted artifact: 1.5 x the 99.5th percentile of the nonzero voxels."""
    return np.array([1.5 * np.percentile(c[c != 0], 99.5) if np.any(c != 0) else 1.0 for c in channels])


def _paint_away(
    image: np.ndarray, target: np.ndarray, value: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """``image`` ``(C, Y, X)`` with an artifact >= 30 mm from ``target``; ``None`` when there is no room."""
    from napari_medadapt.core.adapt.tts.artifacts import centre_away_from, paint, random_artifact_mask

    brain = (image != 0).any(axis=0)
    centre = centre_away_from(target, brain, rng, min_distance=30.0, margin=10.0)
    if centre is None:
        return None
    mask = random_artifact_mask(target.shape, centre, rng, scale=2.0) & ~target
    return paint(image, mask, value), mask


def _case(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """The real test case: clean volume, artifact volume and per-slice targets/artifact masks."""
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.volume import Volume

    volume, labels = load_case(Path(args.data) / TEST_CASE)
    target = labels["seg_fusion"] > 0
    areas = target.sum(axis=(1, 2))
    candidates = np.flatnonzero(areas >= MIN_TUMOUR_VOXELS)
    chosen = candidates[
        np.linspace(0, len(candidates) - 1, min(args.real_slices, len(candidates))).round().astype(int)
    ]
    value = _artifact_value(volume.data)
    data = volume.data.copy()
    slices = []
    for z in np.unique(chosen):
        painted = _paint_away(volume.data[:, z], target[z], value, rng)
        if painted is None:
            continue
        data[:, z], artifact = painted
        slices.append({"z": int(z), "target": target[z], "artifact": artifact})
    artifact_volume = Volume(data, volume.geometry, volume.channels, volume.source_paths)
    return {"clean": volume, "artifact": artifact_volume, "slices": slices}


def _phantoms(args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Phantom test slices (seeds never used in training) as 1-slice volumes, clean and with an artifact."""
    from napari_medadapt.core.synth import make_phantom_slice
    from napari_medadapt.core.volume import Geometry, Volume

    out = []
    seed = 900_000 + args.seed * 1000
    while len(out) < args.phantom_slices:
        image, labels = make_phantom_slice(seed, tumour_probability=1.0)
        seed += 1
        target = labels > 0
        if target.sum() < MIN_TUMOUR_VOXELS:
            continue
        painted = _paint_away(image, target, _artifact_value(image), rng)
        if painted is None:
            continue
        geometry = Geometry.from_display_grid((1, *image.shape[1:]), (1.0, 1.0, 1.0))
        channels = ("t1", "t1c", "t2", "flair")
        out.append(
            {
                "clean": Volume(image[:, None], geometry, channels),
                "artifact": Volume(painted[0][:, None], geometry, channels),
                "slices": [{"z": 0, "target": target, "artifact": painted[1]}],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- user
def _sample(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    candidates = np.argwhere(mask)
    return candidates[rng.choice(len(candidates), size=n, replace=len(candidates) < n)]


def _keypoints(
    item: dict[str, Any], version: str, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positives inside the tumour; negatives on the artifact (artifact version) or on distant brain tissue."""
    from scipy import ndimage

    target = item["target"]
    inner = ndimage.binary_erosion(target, iterations=2)
    positives = _sample(inner if inner.any() else target, n, rng)
    if version == "artifact":
        negatives = _sample(item["artifact"], n, rng)
    else:
        brain = item["brain"]
        far = brain & (ndimage.distance_transform_edt(~target) >= 10)
        negatives = _sample(far, n, rng)
    z = np.full((n, 1), item["z"])
    return np.hstack([z, positives]), np.hstack([z, negatives])


# ---------------------------------------------------------------------------------------------- metrics
def _fp_region(item: dict[str, Any]) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(item["artifact"], iterations=3) & ~item["target"]


class _Tally:
    """Pooled counts over slices: Dice and artifact false-positive voxels, before and after."""

    def __init__(self, draws: int) -> None:
        self.draws = draws
        self.counts = {k: 0 for k in ("inter_b", "pred_b", "inter_a", "pred_a", "ref", "fp_b", "fp_a")}

    def add(self, item: dict[str, Any], before: np.ndarray, after: np.ndarray, artifact: bool) -> None:
        target = item["target"]
        before, after = before > 0, after > 0
        c = self.counts
        c["inter_b"] += int((before & target).sum())
        c["inter_a"] += int((after & target).sum())
        c["pred_b"] += int(before.sum())
        c["pred_a"] += int(after.sum())
        c["ref"] += int(target.sum())
        if artifact:
            region = _fp_region(item)
            c["fp_b"] += int((before & region).sum())
            c["fp_a"] += int((after & region).sum())

    def summary(self, voxel_ml: float) -> dict[str, float]:
        c = self.counts
        dice_b = 2 * c["inter_b"] / max(1, c["pred_b"] + c["ref"])
        dice_a = 2 * c["inter_a"] / max(1, c["pred_a"] + c["ref"])
        out = {
            "dice_before": round(dice_b, 4),
            "dice_after": round(dice_a, 4),
            "dice_change": round(dice_a - dice_b, 4),
        }
        if c["fp_b"] or c["fp_a"]:
            out["fp_ml_before"] = round(c["fp_b"] * voxel_ml / self.draws, 3)
            out["fp_ml_after"] = round(c["fp_a"] * voxel_ml / self.draws, 3)
            out["fp_reduction"] = round(1 - c["fp_a"] / c["fp_b"], 3) if c["fp_b"] else 0.0
        return out


# ---------------------------------------------------------------------------------------------- run
def _sweep(
    model: Any,
    groups: list[dict[str, Any]],
    layer: str,
    settings: list[tuple],
    draws: int,
    seed: int,
    keep_background: bool = True,
) -> dict:
    """Every setting on every slice of every group, both versions; pooled per (set, version, setting)."""
    from napari_medadapt.core.adapt.tts.slices import SliceTTS

    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        for version in ("artifact", "clean"):
            slice_tts = SliceTTS(model, group[version], layer=layer)
            for item in group["slices"]:
                item["brain"] = (group["clean"].data[:, item["z"]] != 0).any(axis=0)
            for setting in settings:
                n, alpha, keep = setting
                key = f"{group['set']}|{version}|{n}+{n}|{alpha}|{keep}"
                tally = results.setdefault(key, {"tally": _Tally(draws)})["tally"]
                for draw in range(draws):
                    rng = np.random.default_rng([seed, draw, n])
                    for item in group["slices"]:
                        pos, neg = _keypoints(item, version, n, rng)
                        out = slice_tts.predict_slice(
                            item["z"], pos, neg, alpha=alpha, keep_fraction=keep, keep_background=keep_background
                        )
                        tally.add(item, out.baseline_labels, out.labels, version == "artifact")
    return results


def _latency(model: Any, group: dict[str, Any], rng: np.random.Generator) -> dict[str, float]:
    """Median re-prediction time after a keypoint change (cached) vs a full network pass for the slice."""
    import torch

    from napari_medadapt.core.adapt.tts.run import tts
    from napari_medadapt.core.adapt.tts.slices import SliceTTS
    from napari_medadapt.core.volume import Geometry, Volume

    item = group["slices"][len(group["slices"]) // 2]
    slice_tts = SliceTTS(model, group["artifact"], layer="decoder")
    first_start = time.perf_counter()
    pos, neg = _keypoints(item, "artifact", 1, rng)
    slice_tts.predict_slice(item["z"], pos, neg)
    first = time.perf_counter() - first_start
    cached = []
    for _ in range(40):
        pos, neg = _keypoints(item, "artifact", 1, rng)
        start = time.perf_counter()
        slice_tts.predict_slice(item["z"], pos, neg)
        cached.append(time.perf_counter() - start)
    volume = group["artifact"]
    z = item["z"]
    one = Volume(
        volume.data[:, z : z + 1],
        Geometry.from_display_grid((1, *volume.data.shape[2:]), volume.geometry.spacing),
        volume.channels,
    )
    full = []
    with torch.no_grad():
        for _ in range(5):
            pos, neg = _keypoints(item, "artifact", 1, rng)
            pos[:, 0] = neg[:, 0] = 0
            start = time.perf_counter()
            tts(model, one, pos, neg)
            full.append(time.perf_counter() - start)
    return {
        "cached_median_ms": round(1000 * float(np.median(cached)), 1),
        "cached_p90_ms": round(1000 * float(np.percentile(cached, 90)), 1),
        "first_on_slice_ms": round(1000 * first, 1),
        "full_slice_tts_median_ms": round(1000 * float(np.median(full)), 1),
        "speedup": round(float(np.median(full)) / float(np.median(cached)), 1),
    }


def _decoder_profile(model: Any, case: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean activation of every decoder channel on tumour, artifact and other brain (real artifact slices),
    and whether its head weight favours the background."""
    from napari_medadapt.core.adapt.tts.engine import background_channels
    from napari_medadapt.core.adapt.tts.slices import SliceTTS

    background = set(background_channels(model, "decoder").tolist())
    slice_tts = SliceTTS(model, case["artifact"])
    sums: dict[str, Any] = {}
    for item in case["slices"]:
        features = slice_tts.features(item["z"])
        brain = (case["clean"].data[:, item["z"]] != 0).any(axis=0) & ~item["target"] & ~item["artifact"]
        for name, mask in (("tumour", item["target"]), ("artifact", item["artifact"]), ("brain", brain)):
            values = features[:, mask]
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (total + values.sum(axis=1), count + values.shape[1])
    means = {name: total / max(1, count) for name, (total, count) in sums.items()}
    return [
        {
            "channel": c,
            **{name: round(float(means[name][c]), 3) for name in means},
            "favours_background": c in background,
        }
        for c in range(len(means["tumour"]))
    ]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its JSON and Markdown reports."""
    import torch

    resolve_paths(args)
    from napari_medadapt.bench._tts_report import write_reports
    from napari_medadapt.core.models import load_model

    started = time.time()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    model = load_model(args.model)
    case = _case(args, rng)
    case["set"] = "real"
    groups = [case]
    for phantom in _phantoms(args, rng):
        phantom["set"] = "phantom"
        groups.append(phantom)
    print(
        f"{len(case['slices'])} real and {len(groups) - 1} phantom test slices after {time.time() - started:.0f} s",
        flush=True,
    )
    settings = [(n, a, k) for n in KEYPOINTS for a in ALPHAS for k in KEEPS]
    sweeps = []
    for rule, keep_background in ((RULE_BACKGROUND, True), (RULE_PUBLISHED, False)):
        results = _sweep(model, groups, "decoder", settings, args.draws, args.seed, keep_background)
        sweeps.append(("decoder", rule, results))
        print(f"decoder sweep ({rule}) done after {time.time() - started:.0f} s", flush=True)
    for tap in OTHER_TAPS:
        tap_settings = [(n, a, k) for n in (1, 5) for a in ALPHAS for k in OTHER_TAP_KEEPS]
        sweeps.append((tap, RULE_PUBLISHED, _sweep(model, groups, tap, tap_settings, 1, args.seed)))
        print(f"{tap} sweep done after {time.time() - started:.0f} s", flush=True)
    latency = _latency(model, case, rng)
    profile = _decoder_profile(model, case)
    voxel_ml = float(np.prod(case["clean"].geometry.spacing)) / 1000.0
    rows = []
    for layer, rule, results in sweeps:
        for key, value in results.items():
            test_set, version, keypoints, alpha, keep = key.split("|")
            rows.append(
                {
                    "layer": layer,
                    "rule": rule,
                    "set": test_set,
                    "version": version,
                    "keypoints": keypoints,
                    "alpha": float(alpha),
                    "keep": float(keep),
                    **value["tally"].summary(voxel_ml),
                }
            )
    report = {
        "model": model.card.name,
        "test_case": TEST_CASE,
        "real_slices": [item["z"] for item in case["slices"]],
        "phantom_slices": len(groups) - 1,
        "draws": args.draws,
        "seed": args.seed,
        "torch_threads": 1,
        "latency": latency,
        "decoder_profile": profile,
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    write_reports(report, args.json, args.md)
    print(f"wrote {args.json} and {args.md} after {report['seconds']:.0f} s")
    return 0
