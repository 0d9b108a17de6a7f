"""``medadapt bench batch``: cases per minute over a cohort, loading the model once vs once per case.

Cohort (at least 8 volumes): the two real gliomas (``glioma_tcga_du7294``, ``glioma_tcga_fg6692``) and phantom
brain volumes with tumours (:mod:`napari_medadapt.core.synth`, seeded), written as case folders (four
modalities and the reference labels) into a temporary folder. The same ``segment`` run with the bundled
``glioma2d`` three ways, one after another in one run:

- ``medadapt batch --scheduler none`` (one process, the model loaded once);
- ``medadapt batch --scheduler local --workers 2`` (a Dask LocalCluster of 2 single-threaded processes);
- the naive loop: one ``medadapt segment`` process per case (python, torch and the model loaded every time).

Each run is the command a user types, timed from start to exit. Reported: cases per minute, the ratio to the
naive loop, memory per worker process (resident set after a case, from the manifest; the naive processes' peak,
sampled), model loads per worker, and the Dice summary the batch wrote.
Writes ``docs/benchmarks/batch.json`` and ``batch.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json

HELP = "cohorts: cases per minute of medadapt batch (in-process, 2-worker Dask) vs one CLI process per case"

REAL_CASES = ("glioma_tcga_du7294", "glioma_tcga_fg6692")
MODALITIES = ("t1", "t1c", "t2", "flair")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt bench batch``."""
    add_data_argument(parser)
    add_report_arguments(parser, "batch")
    parser.add_argument("--phantoms", type=int, default=6, help="phantom volumes added to the two real cases")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")


def write_cohort(folder: Path, data: Path, phantoms: int, seed: int) -> list[str]:
    """The benchmark's case folders under ``folder``; returns the case ids."""
    import shutil

    from napari_medadapt.core.labelmaps import save_labels
    from napari_medadapt.core.synth import make_phantom_volume
    from napari_medadapt.core.volume import Geometry, save_image

    ids = []
    for case in REAL_CASES:
        target = folder / case
        target.mkdir(parents=True)
        for name in (*MODALITIES, "seg_fusion"):
            shutil.copy(data / case / f"{name}.nii.gz", target / f"{name}.nii.gz")
        ids.append(case)
    for index in range(phantoms):
        images, labels = make_phantom_volume(seed * 1000 + 500 + index)
        geometry = Geometry.from_display_grid(labels.shape, (1.0, 1.0, 1.0))
        target = folder / f"phantom_{index}"
        target.mkdir(parents=True)
        for channel, modality in enumerate(MODALITIES):
            save_image(images[channel], geometry, target / f"{modality}.nii.gz")
        save_labels(labels, geometry, target / "seg.nii.gz")
        ids.append(target.name)
    return ids


def _medadapt() -> str:
    """The ``medadapt`` console script installed beside this Python."""
    return str(Path(sys.executable).with_name("medadapt"))


def _run_polled(command: list[str]) -> float:
    """Run ``command``; return the peak resident memory (MB) of it and its children, sampled every 0.2 s."""
    import psutil

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(process.pid), 0.0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed: {process.stderr.read().decode()[-2000:]}")
    return round(peak, 1)


def _timed_batch(cases: Path, out: Path, scheduler: str) -> dict[str, Any]:
    """``medadapt batch segment`` as a user runs it (one process; with ``local``, its 2 worker processes)."""
    from napari_medadapt.core.batch.manifest import read

    start = time.perf_counter()
    _run_polled([_medadapt(), "batch", "segment", "--cases", str(cases), "--out", str(out), "--scheduler", scheduler, "--workers", "2"])
    seconds = time.perf_counter() - start
    records = [r for r in read(out) if r["status"] == "done"]
    memory: dict[str, float] = {}
    for record in records:
        memory[str(record["worker_pid"])] = max(memory.get(str(record["worker_pid"]), 0.0), record.get("rss_mb", 0.0))
    summary = json.loads((out / "summary.json").read_text())
    return {
        "cases": len(records), "seconds": round(seconds, 1), "cases_per_minute": round(60 * len(records) / seconds, 2),
        "rss_mb_per_worker": memory, "model_loads_per_worker": {str(r["worker_pid"]): r["model_loads"] for r in records},
        "dice": summary["metrics"],
    }


def _naive(cases: Path, out: Path, ids: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True)
    start, peaks = time.perf_counter(), []
    for case in ids:
        images = [arg for m in MODALITIES for arg in ("--image", f"{m}={cases / case / f'{m}.nii.gz'}")]
        peaks.append(_run_polled([_medadapt(), "segment", *images, "--out", str(out / f"{case}.nii.gz")]))
    seconds = time.perf_counter() - start
    return {"cases": len(ids), "seconds": round(seconds, 1), "cases_per_minute": round(60 * len(ids) / seconds, 2),
            "peak_rss_mb_per_process": max(peaks)}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write its reports."""
    import os
    import platform

    resolve_paths(args)
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-batch-") as tmp:
        root = Path(tmp)
        ids = write_cohort(root / "cases", args.data, args.phantoms, args.seed)
        print(f"cohort of {len(ids)} cases written", flush=True)
        report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU", "cohort": ids}
        report["none"] = _timed_batch(root / "cases", root / "none", "none")
        print(f"in-process: {report['none']['cases_per_minute']} cases/min", flush=True)
        report["local2"] = _timed_batch(root / "cases", root / "local", "local")
        print(f"LocalCluster(2): {report['local2']['cases_per_minute']} cases/min", flush=True)
        report["naive"] = _naive(root / "cases", root / "naive", ids)
        print(f"one process per case: {report['naive']['cases_per_minute']} cases/min", flush=True)
    for name in ("none", "local2"):
        report[name]["ratio_to_naive"] = round(report[name]["cases_per_minute"] / report["naive"]["cases_per_minute"], 2)
    write_json(report, args.json)
    _markdown(report, args.md)
    print(f"wrote {args.json} and {args.md}")
    return 0


def _markdown(report: dict[str, Any], path: Path) -> None:
    rows = [("batch, --scheduler none (model loaded once)", report["none"]),
            ("batch, LocalCluster with 2 workers", report["local2"]),
            ("one `medadapt segment` process per case", report["naive"])]
    lines = [
        "# Cohorts: cases per minute",
        "",
        f"Generated by `medadapt bench batch` ({report['machine']}, one run; the three runs one after another). "
        f"Cohort: {len(report['cohort'])} volumes of 240 x 240 x 155 (the two real gliomas and phantoms), `segment` "
        "with the bundled `glioma2d`.",
        "",
        "| run | cases | seconds | cases / min | vs one process per case | memory per worker (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        peaks = row.get("rss_mb_per_worker")
        peak = f"{max(peaks.values()):.0f}" if peaks else f"{row.get('peak_rss_mb_per_process', 0):.0f}"
        lines.append(f"| {name} | {row['cases']} | {row['seconds']:.1f} | {row['cases_per_minute']:.2f} | "
                     f"{row.get('ratio_to_naive', 1.0):.2f}x | {peak} |")
    lines += ["", "Memory: the batch workers' resident set after a case (model and volume loaded), from the manifest; "
              "for one process per case, the peak sampled every 0.2 s. Seconds are wall time of the whole command "
              "(start-up, model loads and writing included).",
              "", "Dice of the batch runs (metrics.csv summary): " + ", ".join(
        f"{region} {stats['mean']:.3f} (sd {stats['std']:.3f})" for region, stats in report["none"]["dice"].items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
