"""``medadapt bench TARGET``: benchmarks that write JSON and Markdown reports (see docs/benchmarks)."""

from __future__ import annotations

import argparse

from napari_medadapt.cli._dispatch import register_targets

# target name -> module under napari_medadapt.bench defining HELP, add_arguments and run
BENCH_TARGETS: dict[str, str] = {
    "batch": "napari_medadapt.bench.batch",
    "dicom": "napari_medadapt.bench.dicom",
    "engine": "napari_medadapt.bench.engine",
    "explain": "napari_medadapt.bench.explain",
    "fewshot": "napari_medadapt.bench.fewshot",
    "preprocess": "napari_medadapt.bench.preprocess",
    "sam": "napari_medadapt.bench.sam",
    "segfm": "napari_medadapt.bench.segfm",
    "tts": "napari_medadapt.bench.tts",
    "tta": "napari_medadapt.bench.tta",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    register_targets(subparsers, "bench", "run a benchmark and write its report", BENCH_TARGETS, extra="bench")
