"""``medadapt train TARGET``: reproduce a bundled model from scratch (seeded, CPU)."""

from __future__ import annotations

import argparse

from napari_medadapt.cli._dispatch import register_targets

# target name -> module under napari_medadapt.training defining HELP, add_arguments and run
TRAIN_TARGETS: dict[str, str] = {
    "glioma2d": "napari_medadapt.training.glioma2d",
    "glioma2d-prototypes": "napari_medadapt.training.glioma2d_prototypes",
    "sam-small": "napari_medadapt.training.sam_small",
    "sam-clicks": "napari_medadapt.training.sam_clicks",
    "tts-trap": "napari_medadapt.training.tts_trap",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    register_targets(subparsers, "train", "train a bundled model from scratch", TRAIN_TARGETS, extra="train")
