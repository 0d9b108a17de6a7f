"""``medadapt train glioma2d-prototypes``: project glioma2d's prototypes onto its training patches (seeded, CPU).

The bundled model's prototype head was trained with free prototype vectors. This projects each one onto the
most similar real training position of its class (per-class Hungarian assignment: distinct source planes),
on the model's own training planes: every axial plane of ``glioma_tcga_du7294`` with brain, and the phantom
planes of the training recipe (same seed, so the same phantoms). It then measures what projection costs in Dice
on development phantoms the model never saw (another seed; never the held-out real case, which the explain
benchmark scores) and records whether the projected prototypes are kept (the explanations then use them:
every prototype is exactly its source patch's feature). Writes ``glioma2d.prototypes.json`` and
``.safetensors`` (the card, the vectors and the gallery of source patches).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "project glioma2d's prototypes onto real training patches and store the gallery (prototype bank)"

#: Largest mean Dice drop (WT, TC, ET) on the development phantoms at which the projected prototypes are kept.
KEEP_MAX_DROP = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options."""
    parser.add_argument("--model", default="glioma2d", help="the model (default glioma2d)")
    parser.add_argument("--out", type=Path, default=None, help="bank card to write (default: beside the model's card)")
    parser.add_argument("--replace", action="store_true", help="replace an existing bank at --out")
    parser.add_argument("--data", type=Path, default=None, help="folder of the real cases (default: MEDADAPT_DATA_DIR or ../shared/data/real)")
    parser.add_argument("--phantoms", type=int, default=80, help="training phantoms (the model's recipe: 80, seed 0)")
    parser.add_argument("--seed", type=int, default=0, help="the model's training seed (phantoms)")
    parser.add_argument("--dev-phantoms", type=int, default=16, help="development phantoms (seed + 1) for the Dice cost")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def training_slices(data: Path, phantoms: int, seed: int):
    """glioma2d's training planes with their sources (real case planes, then phantom planes)."""
    import numpy as np

    from napari_medadapt.core.explain import TrainingSlices
    from napari_medadapt.core.synth.training_data import MODALITIES, phantom_slice_bank, real_case_planes
    from napari_medadapt.training.glioma2d import TRAIN_CASE

    real_images, real_labels, planes = real_case_planes(data / TRAIN_CASE)
    sources = [{"case": TRAIN_CASE, "plane": int(z), "label_map": "seg_fusion"} for z in planes]
    phantom_images, phantom_labels = phantom_slice_bank(phantoms, seed)
    sources += [
        {"case": f"phantom {p}", "phantom_seed": seed * 100_003 + p, "slices_per_phantom": 8, "plane": s}
        for p in range(phantoms) for s in range(8)
    ]
    return TrainingSlices(
        np.concatenate([real_images, phantom_images]), np.concatenate([real_labels, phantom_labels]), sources,
        list(MODALITIES), {"real": TRAIN_CASE, "phantoms": f"{phantoms} phantoms x 8 planes, seed {seed}"},
    )


def slice_dice(model, images, labels) -> dict[str, float]:
    """BraTS-region Dice (WT, TC, ET) of ``model`` on stacked normalised planes against their labels."""
    import numpy as np
    import torch

    from napari_medadapt.core.metrics import dice, region_masks

    predicted = []
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            x = torch.from_numpy(images[start : start + 16].astype(np.float32))
            predicted.append(np.asarray(model.card.labels)[model.eval()(x).argmax(1).numpy()])
    ours, reference = region_masks(np.concatenate(predicted)), region_masks(labels)
    return {name: round(dice(ours[name], reference[name]), 4) for name in reference}


def run(args: argparse.Namespace) -> int:
    """Build, measure and write the bank."""
    import torch

    from napari_medadapt.core.explain import bank_path_for, head_bank, save_bank, with_prototypes
    from napari_medadapt.core.models import load_model
    from napari_medadapt.core.paths import data_dir
    from napari_medadapt.core.synth.training_data import phantom_slice_bank

    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = load_model(args.model).eval()
    slices = training_slices(data_dir(args.data), args.phantoms, args.seed)
    print(f"{len(slices)} training planes ({time.monotonic() - start:.0f} s)", flush=True)
    bank = head_bank(model, slices)
    print(f"projected {len(bank)} prototypes ({time.monotonic() - start:.0f} s)", flush=True)
    dev_images, dev_labels = phantom_slice_bank(args.dev_phantoms, args.seed + 1)
    before = slice_dice(model, dev_images, dev_labels)
    after = slice_dice(with_prototypes(model, bank.vectors), dev_images, dev_labels)
    drop = sum(before[k] - after[k] for k in before) / len(before)
    bank.card["projection"] = {
        "kept": bool(drop <= KEEP_MAX_DROP),
        "rule": f"kept when the mean Dice drop over WT, TC, ET on the development phantoms is <= {KEEP_MAX_DROP}",
        "dev_cases": f"{args.dev_phantoms} phantoms x 8 planes, seed {args.seed + 1} (not in training)",
        "dice_unprojected": before,
        "dice_projected": after,
        "mean_drop": round(drop, 4),
        "command": f"medadapt train glioma2d-prototypes --seed {args.seed} --phantoms {args.phantoms}",
        "seconds": round(time.monotonic() - start, 1),
    }
    bank.card["license"] = "Same terms as napari-medadapt. Source patches: TCGA (TCIA), CC BY 3.0; phantoms: MNI152 anatomy."
    out = args.out or bank_path_for(model)
    path = save_bank(bank, out, replace=args.replace)
    print(f"Dice on dev phantoms unprojected {before}, projected {after}: mean drop {drop:.4f} -> "
          f"{'kept' if bank.card['projection']['kept'] else 'not kept'}", flush=True)
    print(f"wrote {path}", flush=True)
    return 0
