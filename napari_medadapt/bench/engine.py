"""``medadapt bench engine``: speed, memory and accuracy of the segmentation engine with the bundled model.

Measures, with ``torch.set_num_threads(--threads)`` (default 1: the CPU is shared):

- throughput of :func:`napari_medadapt.core.inference.predict_volume` on the held-out real case
  (``glioma_tcga_fg6692``, 240 x 240 x 155): seconds per volume and slices per second on the full grid and
  on the brain bounding box; the same on CUDA when available;
- peak memory: the process's peak resident set (``ru_maxrss``) and the peak of Python/numpy allocations
  during one prediction (``tracemalloc``; torch's own CPU allocator is not traced);
- Dice (WT, TC, ET) against ``seg_fusion`` on the clean case and on every simulated acquisition shift of
  :data:`napari_medadapt.core.synth.shifts.STANDARD_SHIFTS` (shift applied to the raw volume, seed 0), with
  all four modalities and with FLAIR + T1c only. This table is the baseline that test-time adaptation must
  improve. Predictions run on the brain bounding box (+8 voxels), whose normalisation statistics equal the
  full volume's (they are taken over nonzero voxels).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json

HELP = "engine benchmark: throughput, peak memory and Dice (clean and simulated shifts) of the bundled model"

HELD_OUT_CASE = "glioma_tcga_fg6692"
SUBSETS: dict[str, tuple[str, ...]] = {
    "all four": ("t1", "t1c", "t2", "flair"),
    "FLAIR + T1c": ("t1c", "flair"),
}
REGIONS = ("WT", "TC", "ET")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench engine``."""
    parser.add_argument("--model", default="glioma2d", help="bundled model name or card path")
    add_data_argument(parser)
    add_report_arguments(parser, "engine")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=8, help="slices per inference batch")
    parser.add_argument(
        "--shifts", type=int, default=None, help="evaluate only the first N standard shifts (default: all)"
    )


def brain_box(volume, margin: int = 8) -> tuple[slice, slice, slice]:
    """Bounding box (display Z, Y, X slices) of the voxels where any channel is nonzero, plus ``margin``."""
    brain = np.any(volume.data != 0, axis=0)
    if not brain.any():
        return tuple(slice(0, n) for n in brain.shape)
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def crop_volume(volume, box: tuple[slice, slice, slice]):
    """The volume restricted to ``box`` on a plain LPS grid of the same spacing (for prediction only)."""
    from napari_medadapt.core.volume import Geometry, Volume

    data = volume.data[(slice(None), *box)]
    geometry = Geometry.from_display_grid(data.shape[1:], volume.geometry.spacing)
    return Volume(data, geometry, volume.channels)


def segment_in_box(model, volume, channels: tuple[str, ...], box, batch: int = 8) -> np.ndarray:
    """Labels on the full grid from :func:`predict_volume` run on the ``box`` crop with ``channels`` only."""
    from napari_medadapt.core.inference import predict_volume

    cropped = crop_volume(volume.subset(list(channels)), box)
    pred = predict_volume(model, cropped, device="cpu", batch_size=batch, return_probabilities=False)
    labels = np.zeros(volume.data.shape[1:], dtype=np.uint8)
    labels[box] = pred.labels
    return labels


def brats_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice of the BraTS regions WT, TC, ET."""
    from napari_medadapt.core.metrics import dice, region_masks

    p, r = region_masks(pred), region_masks(ref)
    return {name: round(float(dice(p[name], r[name])), 4) for name in REGIONS}


def load_reference_case(case_dir: Path):
    """(volume, seg_fusion, {algorithm: labels}) of a BraTS-Toolkit case folder."""
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.labelmaps import load_labels

    volume, labels = load_case(case_dir)
    algorithms = {
        path.name.split(".")[0]: load_labels(path, volume.geometry)
        for path in sorted((case_dir / "seg_algorithms").glob("*.nii*"))
    }
    return volume, labels["seg_fusion"], algorithms


def evaluate_held_out(model, case_dir: Path, log=print, batch: int = 8) -> dict:
    """Dice of ``model`` on a held-out case for each modality subset, against the fusion and each algorithm."""
    volume, fusion, algorithms = load_reference_case(Path(case_dir))
    box = brain_box(volume)
    result: dict = {
        "case": Path(case_dir).name,
        "reference": "seg_fusion (majority vote of 5 BraTS-2020 algorithms; automatic, not expert)",
        "regions": "WT={1,2,4}, TC={1,4}, ET={4}",
        "dice_vs_fusion": {},
        "dice_vs_algorithms": {},
        "algorithms_vs_fusion": {name: brats_dice(lab, fusion) for name, lab in algorithms.items()},
    }
    for subset_name, channels in {**SUBSETS, "FLAIR only": ("flair",)}.items():
        labels = segment_in_box(model, volume, channels, box, batch)
        result["dice_vs_fusion"][subset_name] = brats_dice(labels, fusion)
        result["dice_vs_algorithms"][subset_name] = {
            name: brats_dice(labels, lab) for name, lab in algorithms.items()
        }
        log(f"{result['case']} {subset_name}: {result['dice_vs_fusion'][subset_name]}")
    return result


def _timed_prediction(model, volume, device: str, batch: int) -> dict:
    import tracemalloc

    import torch

    from napari_medadapt.core.inference import predict_volume

    if device != "cpu":  # warm-up: CUDA context and kernel selection are not part of the steady state
        predict_volume(model, volume, device=device, batch_size=batch, return_probabilities=False)
    tracemalloc.start()
    start = time.perf_counter()
    predict_volume(model, volume, device=device, batch_size=batch, return_probabilities=False)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    slices = volume.data.shape[1]
    return {
        "device": device,
        "shape_zyx": list(volume.data.shape[1:]),
        "seconds_per_volume": round(seconds, 2),
        "slices_per_second": round(slices / seconds, 2),
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 1),
    }


def measure_throughput(model, volume, batch: int, log=print) -> list[dict]:
    """Timings of one prediction on the full grid and on the brain box, on CPU (and CUDA when present)."""
    import resource

    import torch

    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for grid, vol in (("full grid", volume), ("brain box", crop_volume(volume, brain_box(volume)))):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row = {"grid": grid, **_timed_prediction(model, vol, device, batch)}
            if device == "cuda":
                row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            row["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            log(f"throughput {row}")
            rows.append(row)
    model.to("cpu")
    return rows


def shift_table(model, volume, fusion, n_shifts: int | None, batch: int, log=print) -> list[dict]:
    """Dice rows for the clean case and each standard shift, per modality subset."""
    from napari_medadapt.core.synth.shifts import STANDARD_SHIFTS, shift_volume

    box = brain_box(volume)
    conditions = [("clean", None, {})] + list(STANDARD_SHIFTS[:n_shifts] if n_shifts else STANDARD_SHIFTS)
    rows = []
    for name, kind, params in conditions:
        shifted = volume if kind is None else shift_volume(volume, kind, seed=0, **params)
        row = {"condition": name, "kind": kind or "none", "params": params}
        for subset_name, channels in SUBSETS.items():
            row[subset_name] = brats_dice(segment_in_box(model, shifted, channels, box, batch), fusion)
        log(f"{name}: {row['all four']} | FLAIR+T1c {row['FLAIR + T1c']}")
        rows.append(row)
    return rows


def _markdown(report: dict) -> str:
    lines = [
        "# Engine benchmark (bundled model `glioma2d`)",
        "",
        f"Generated by `medadapt bench engine` on {report['machine']}; load average (1, 5, 15 min) at start "
        f"{report.get('load_average_at_start')} (the CPU is shared: wall times grow with the load).",
        f"Held-out real case `{HELD_OUT_CASE}` (never used in training), reference `seg_fusion`.",
        "",
        "## Throughput and memory",
        "",
        "| device | grid | shape (Z,Y,X) | s / volume | slices / s | tracemalloc peak MB | process peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['device']} | {row['grid']} | {'x'.join(map(str, row['shape_zyx']))} | "
            f"{row['seconds_per_volume']} | {row['slices_per_second']} | {row['tracemalloc_peak_mb']} | "
            f"{row['ru_maxrss_mb']} |"
        )
    lines += [
        "",
        "tracemalloc sees Python/numpy allocations only (inputs, probabilities); torch's CPU allocator is not "
        "traced, so the process peak RSS (which includes the loaded libraries) is the upper bound.",
        "",
        "## Dice under simulated acquisition shifts (baseline for test-time adaptation)",
        "",
        "Shifts from `napari_medadapt.core.synth.shifts.STANDARD_SHIFTS`, applied to the raw volume with seed 0.",
        "",
        "| condition | all four WT | TC | ET | FLAIR + T1c WT | TC | ET |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["shifts"]:
        a, f = row["all four"], row["FLAIR + T1c"]
        lines.append(
            f"| {row['condition']} | {a['WT']:.3f} | {a['TC']:.3f} | {a['ET']:.3f} | "
            f"{f['WT']:.3f} | {f['TC']:.3f} | {f['ET']:.3f} |"
        )
    lines += ["", f"Total benchmark time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ``--json`` and ``--md``."""
    resolve_paths(args)
    import platform

    import torch

    from napari_medadapt.core.models import load_model

    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    model = load_model(args.model, device="cpu")
    volume, fusion, _ = load_reference_case(args.data / HELD_OUT_CASE)
    report = {
        "model": model.card.name,
        "weights_sha256": model.card.weights_sha256,
        "case": HELD_OUT_CASE,
        "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch thread(s))",
        "threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "throughput": measure_throughput(model, volume, args.batch),
        "shifts": shift_table(model, volume, fusion, args.shifts, args.batch),
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(report, args.json, indent=1)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(_markdown(report), encoding="utf-8")
    print(f"wrote {args.json} and {args.md}")
    return 0
