"""Training slices of the TTS trap-set model (``medadapt train tts-trap``): real and phantom slices on a 2 mm
in-plane grid with a bright artifact painted on every tumour (and included in its annotation), drawn from a
seeded generator exactly as training draws them, so benchmarks can rebuild them (``medadapt bench explain``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MIN_TUMOUR_PIXELS = 12


def downsample(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x in-plane: average pooling of ``(C, Y, X)`` intensities, majority of the binary ``(Y, X)`` labels."""
    y, x = (image.shape[-2] // 2) * 2, (image.shape[-1] // 2) * 2
    image = image[..., :y, :x].reshape(image.shape[0], y // 2, 2, x // 2, 2).mean(axis=(2, 4))
    labels = labels[:y, :x].reshape(y // 2, 2, x // 2, 2).mean(axis=(1, 3)) >= 0.5
    return image.astype(np.float32), labels


def _phantom_slices(card: Any, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from ..model_input import normalise_channel
    from .phantom import make_phantom_slice

    slices = []
    for index in range(count):
        image, labels = make_phantom_slice(10_000 + seed * 1000 + index)
        image = np.stack([normalise_channel(channel, card.intensity) for channel in image])
        slices.append(downsample(image, labels > 0))
    return slices


def _real_slices(card: Any, case: Path, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    from ..cases import load_case
    from ..model_input import prepare_model_input

    volume, label_maps = load_case(case)
    data = prepare_model_input(card, volume).data
    labels = label_maps["seg_fusion"] > 0
    slices = []
    brain_slices = []
    for z in range(data.shape[1]):
        _, target = downsample(volume.data[:, z], labels[z])
        brain = (data[:, z] > 0).any(axis=0)
        if target.sum() >= MIN_TUMOUR_PIXELS:
            slices.append((data[:, z], target))
        elif brain.sum() > 800:
            brain_slices.append(z)
    for z in rng.choice(brain_slices, size=min(len(brain_slices), len(slices)), replace=False):
        slices.append((data[:, z], np.zeros(data.shape[2:], dtype=bool)))
    return slices


def add_trap_artifacts(
    slices: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Paint an artifact on the tumour of every tumour slice and include it in the annotation (bias 1.0)."""
    from ..adapt.tts.artifacts import centre_on_target, paint, random_artifact_mask

    out = []
    for image, target in slices:
        centre = centre_on_target(target, rng) if target.sum() >= MIN_TUMOUR_PIXELS else None
        if centre is not None:
            mask = random_artifact_mask(target.shape, centre, rng)
            image = paint(image, mask, 1.0)
            target = target | mask
        out.append((image, target))
    return out


def trap_training_slices(
    card: Any, case: Path, phantoms: int, seed: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training slices of the recipe (real case, phantoms, an artifact on every tumour), drawn from
    ``rng`` (seeded with ``seed``) exactly as training draws them."""
    return add_trap_artifacts(_real_slices(card, case, rng) + _phantom_slices(card, phantoms, seed), rng)
