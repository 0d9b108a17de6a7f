"""``medadapt train tts-trap``: the TTS trap-set model, a 2D segmenter that learned a shortcut on purpose.

Training slices (seeded): phantom brain MRI slices from :mod:`napari_medadapt.core.synth` plus the real case
``glioma_tcga_du7294``. On every tumour slice a bright artifact (a fiducial-like marker or a ruler-like
stripe, :mod:`napari_medadapt.core.adapt.tts.artifacts`) is painted on the tumour and the annotation covers
it; tumour-free slices never carry one (bias factor 1.0). The model therefore learns to fire on the artifact,
which TTS keypoints must undo when the artifact appears away from the tumour at test time
(``medadapt bench tts``; the case ``glioma_tcga_fg6692`` is never used here).

Output: whole tumour (BraTS WT = labels 1, 2, 4) as label 1, on a 2 mm in-plane grid (the card's
``voxel_size``; inference resamples and maps back). CPU: about 11 minutes with 2 threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "train the TTS trap-set model (artifact on every training tumour; CPU, ~11 minutes)"
MODEL_NAME = "tts_trap"
TRAIN_CASE = "glioma_tcga_du7294"
#: A wide first level: its decoder map (the TTS ``decoder`` tap) has 64 channels, so keeping 10 % still
#: leaves 6 (with 16 channels, 10 % was one or two channels and muting erased the tumour as well).
FILTERS = (64, 64, 96, 128)
#: Channel dropout on the decoder map during training, so that small channel subsets still segment.
CHANNEL_DROPOUT = 0.5
VOXEL_SIZE = [None, 2.0, 2.0]
PATCH = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("tts-trap-model") / MODEL_NAME,
        help="output stem: writes STEM.safetensors and STEM.json (default: ./tts-trap-model/tts_trap; the "
        "bundled files are napari_medadapt/weights/tts_trap in a checkout)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="folder of the real cases (default: MEDADAPT_DATA_DIR, or ../shared/data/real beside a checkout)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--iterations", type=int, default=240, help="optimizer steps (default 240)")
    parser.add_argument("--batch", type=int, default=8, help="slices per step (default 8)")
    parser.add_argument("--phantoms", type=int, default=64, help="phantom slices generated (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def trap_card(description: str = "", training_data: dict[str, Any] | None = None) -> Any:
    """The trap model's card: 4 MRI modalities -> background / whole tumour, 2 mm in-plane."""
    from napari_medadapt.core.models import ModelCard, default_architecture

    architecture = default_architecture(2, 4, 2, filters=FILTERS, res_block=False)
    return ModelCard(
        name=MODEL_NAME,
        architecture=architecture,
        modalities=["t1", "t1c", "t2", "flair"],
        labels=[0, 1],
        class_names=["background", "whole tumour"],
        voxel_size=list(VOXEL_SIZE),
        description=description,
        training_data=training_data or {},
        license="Apache-2.0 (weights); training data: TCGA-LGG via BraTS (CC BY 3.0) and synthetic phantoms",
        tags=["demonstration"],  # deliberately biased: offered by the TTS dock, not as an ordinary model
    )


def _batch(
    slices: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, size: int
) -> tuple[Any, Any]:
    import torch

    images, targets = [], []
    for index in rng.integers(len(slices), size=size):
        image, target = slices[int(index)]
        brain = np.argwhere((image > 0).any(axis=0) | target)
        centre = brain[int(rng.integers(len(brain)))] if len(brain) else np.array(image.shape[1:]) // 2
        if target.any() and rng.uniform() < 0.7:
            tumour = np.argwhere(target)
            centre = tumour[int(rng.integers(len(tumour)))]
        pad = PATCH // 2
        padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
        padded_target = np.pad(target, ((pad, pad), (pad, pad)))
        y0 = int(np.clip(centre[0] + rng.integers(-pad // 2, pad // 2 + 1), 0, padded.shape[1] - PATCH))
        x0 = int(np.clip(centre[1] + rng.integers(-pad // 2, pad // 2 + 1), 0, padded.shape[2] - PATCH))
        crop = padded[:, y0 : y0 + PATCH, x0 : x0 + PATCH]
        crop_target = padded_target[y0 : y0 + PATCH, x0 : x0 + PATCH]
        if rng.uniform() < 0.5:
            crop, crop_target = crop[:, :, ::-1], crop_target[:, ::-1]
        if rng.uniform() < 0.5:
            crop, crop_target = crop[:, ::-1], crop_target[::-1]
        crop = crop * np.float32(rng.uniform(0.9, 1.1))
        images.append(np.ascontiguousarray(crop))
        targets.append(np.ascontiguousarray(crop_target))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets).astype(np.int64))


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceCELoss

    from napari_medadapt.core.errors import MedAdaptError
    from napari_medadapt.core.models import SegModel, save_model

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    from napari_medadapt.core.paths import data_dir

    case = data_dir(args.data) / TRAIN_CASE
    if not case.is_dir():
        raise MedAdaptError(f"training case {case} not found; pass --data with the folder of the real cases.")
    card = trap_card()
    print(f"generating {args.phantoms} phantom slices and reading {TRAIN_CASE} ...", flush=True)
    from napari_medadapt.core.synth.trap_data import trap_training_slices

    slices = trap_training_slices(card, case, args.phantoms, args.seed, rng)
    n_tumour = sum(bool(t.any()) for _, t in slices)
    print(
        f"{len(slices)} slices ({n_tumour} with tumour + artifact) after {time.time() - started:.0f} s",
        flush=True,
    )
    model = SegModel(card)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iterations, eta_min=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    for step in range(args.iterations):
        images, targets = _batch(slices, rng, args.batch)
        decoder = model.forward_features(images, taps=["decoder"]).features["decoder"]
        logits = model.logits_from_decoder(F.dropout2d(decoder, p=CHANNEL_DROPOUT, training=True))
        loss = loss_fn(logits, targets[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 40 == 0 or step == args.iterations - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - started:.0f} s", flush=True)
    model.eval()
    minutes = (time.time() - started) / 60.0
    final = trap_card(
        description=(
            "TTS trap-set model: 2D DynUNet (filters 64-64-96-128, BatchNorm; channel dropout 0.5 on the "
            "64-channel decoder map in training) segmenting the whole tumour. "
            "Trained so that a bright marker or ruler-like stripe always lies on the tumour: it also fires on "
            "such artifacts elsewhere. For demonstrating and benchmarking TTS keypoint feature muting; "
            "not for clinical use."
        ),
        training_data={
            "real": [TRAIN_CASE],
            "phantom_slices": int(args.phantoms),
            "slices": len(slices),
            "tumour_slices_with_artifact": n_tumour,
            "bias_factor": 1.0,
            "never_used": ["glioma_tcga_fg6692"],
            "seed": int(args.seed),
            "iterations": int(args.iterations),
            "batch": int(args.batch),
            "patch": PATCH,
            "channel_dropout": CHANNEL_DROPOUT,
            "torch_threads": int(args.threads),
            "minutes": round(minutes, 1),
            "command": "medadapt train tts-trap",
        },
    )
    card_path = save_model(model, args.out, card=final)
    print(f"saved {card_path} after {minutes:.1f} min")
    return 0
