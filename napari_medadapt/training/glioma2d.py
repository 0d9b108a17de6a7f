"""``medadapt train glioma2d``: train the bundled 2D brain-tumour model from scratch (seeded, CPU).

Recipe (see docs/models/glioma2d.md):

- Network: MONAI DynUNet 2D, filters 16/32/64/128, BatchNorm, residual blocks, no deep supervision; a
  per-modality normaliser in front (3 convolutions, trained jointly) and a local prototype head (K = 10 per
  class) over the last decoder map. Inputs t1, t1c, t2, flair; outputs BraTS ids 0, 1, 2, 4.
- Data: phantom slices from :mod:`napari_medadapt.core.synth` (MNI152 anatomy, random tumours and
  institutions) plus heavily augmented slices of the real case ``glioma_tcga_du7294`` (seg_fusion labels).
  ``glioma_tcga_fg6692`` is never used for training or model selection: it is evaluated once at the end.
- Normalisation: per-modality percentile scaling (0.5 -> 0, 99.5 -> 1, clipped) over the nonzero voxels
  of the volume; a missing modality is all zeros (modality dropout keeps FLAIR, drops each other modality
  with probability 1/2 in half of the samples).
- Loss: cross-entropy on the head logits + cross-entropy on the prototype logits + soft Dice (tumour
  classes) on the combined probabilities + 0.1 * the clustering loss of METHODS section 3 (mini-batch
  k-means targets per prototype from the embeddings of the prototype's own class, running means reset every
  100 steps because features move while the network trains from scratch).
- Adam (lr 2e-3 network, 1e-2 prototypes, weight decay 1e-5), polynomial decay over a fixed number of
  steps (never over wall time, so a seeded run is reproducible).
- Post-processing in the card: keep the largest connected component (one glioma per brain).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "train the bundled 2D brain-tumour model glioma2d from scratch (phantoms + augmented real case, CPU)"

MODALITIES = ["t1", "t1c", "t2", "flair"]
CLASS_NAMES = ["background", "necrotic / non-enhancing core", "edema", "enhancing tumour"]
TRAIN_CASE = "glioma_tcga_du7294"
HELD_OUT_CASE = "glioma_tcga_fg6692"


def architecture() -> dict:
    """The glioma2d architecture config (see ``core/models/network.py``)."""
    from napari_medadapt.core.models import default_architecture

    return default_architecture(
        spatial_dims=2,
        in_channels=4,
        out_channels=4,
        filters=(16, 32, 64, 128),
        normalizer={"hidden": 8, "residual": True},
        prototypes={"per_class": 10, "dim": 32, "scale": 10.0},
    )


def supported_subsets() -> list[list[str]]:
    """Every subset of the modalities that contains FLAIR (modality dropout trains them all)."""
    others = ["t1", "t1c", "t2"]
    subsets = []
    for mask in range(7, -1, -1):
        subsets.append([m for i, m in enumerate(others) if mask >> (2 - i) & 1] + ["flair"])
    return subsets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``medadapt train glioma2d``."""
    parser.add_argument("--out", type=Path, default=Path("glioma2d-model"), help="output folder")
    parser.add_argument("--minutes", type=float, default=58.0, help="wall-time cap in minutes (stops training early)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--steps", type=int, default=900, help="optimisation steps")
    parser.add_argument("--batch", type=int, default=8, help="slices per step")
    parser.add_argument("--crop", type=int, default=160, help="training crop size (pixels)")
    parser.add_argument("--phantoms", type=int, default=80, help="phantoms rendered (8 slices each)")
    parser.add_argument("--real-fraction", type=float, default=0.35, help="share of real-case slices per batch")
    parser.add_argument(
        "--data", type=Path, default=None, help="folder of the real cases (default: MEDADAPT_DATA_DIR, or ../shared/data/real beside a checkout)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (float rounding may differ with the count)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")


class _ClusterTargets:
    """Mini-batch k-means targets ``fbar_ck`` (METHODS section 3) with their counts ``n_ck``."""

    def __init__(self, num_prototypes: int, dim: int) -> None:
        import torch

        self.mean = torch.zeros(num_prototypes, dim)
        self.count = torch.zeros(num_prototypes)

    def reset(self) -> None:
        self.mean.zero_()
        self.count.zero_()

    def loss(self, head, embedding, classes, generator, per_class: int = 256):
        """Update the targets with sampled embeddings of every class; return mean ||fbar - p|| over seen ones."""
        import torch
        import torch.nn.functional as F

        emb = F.normalize(embedding.detach(), dim=1).permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])
        flat = classes.reshape(-1)
        protos = F.normalize(head.prototypes, dim=1)
        k = head.per_class
        for cls in range(head.num_classes):
            idx = torch.nonzero(flat == cls)[:, 0]
            if len(idx) == 0:
                continue
            idx = idx[torch.randperm(len(idx), generator=generator)[:per_class]]
            feats = emb[idx]
            own = protos[cls * k : (cls + 1) * k].detach()
            nearest = torch.argmax(feats @ own.T, dim=1) + cls * k
            sums = torch.zeros_like(self.mean).index_add_(0, nearest, feats)
            counts = torch.bincount(nearest, minlength=len(self.count)).float()
            total = self.count + counts
            seen = counts > 0
            self.mean[seen] = (self.mean[seen] * self.count[seen, None] + sums[seen]) / total[seen, None]
            self.count = total
        seen = self.count > 0
        if not seen.any():
            return protos.sum() * 0.0
        return torch.linalg.vector_norm(self.mean[seen] - protos[seen], dim=1).mean()


def train(args: argparse.Namespace, log=print):
    """Train and return ``(model, history)``; ``args`` as parsed by :func:`add_arguments`."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceLoss

    from napari_medadapt.core.models import DEFAULT_INTENSITY, ModelCard, SegModel
    from napari_medadapt.core.synth.training_data import (
        augment_batch,
        modality_dropout,
        phantom_slice_bank,
        real_slice_bank,
    )

    start = time.monotonic()
    deadline = start + 60.0 * args.minutes
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    real_images, real_labels = real_slice_bank(args.data / TRAIN_CASE)
    real_tumour = np.flatnonzero(real_labels.reshape(len(real_labels), -1).max(1) > 0)
    log(f"real case {TRAIN_CASE}: {len(real_labels)} slices, {len(real_tumour)} with tumour")
    phantom_images, phantom_labels = phantom_slice_bank(args.phantoms, args.seed)
    log(f"{len(phantom_labels)} phantom slices rendered in {time.monotonic() - start:.0f} s")

    card = ModelCard(
        name="glioma2d",
        architecture=architecture(),
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=CLASS_NAMES,
        supported_subsets=supported_subsets(),
        intensity={**DEFAULT_INTENSITY, "missing_modality": "zeros after normalisation"},
        voxel_size=[None, 1.0, 1.0],
        # one glioma per brain: islands elsewhere are false positives (the dock and CLI can switch it off)
        postprocess={"largest_component": True},
    )
    model = SegModel(card)
    head = model.prototypes
    proto_params = [head.prototypes]
    other_params = [p for p in model.parameters() if p is not head.prototypes]
    optimizer = torch.optim.Adam(
        [{"params": other_params, "lr": 2e-3}, {"params": proto_params, "lr": 1e-2}], weight_decay=1e-5
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    dice_loss = DiceLoss(include_background=False, to_onehot_y=True, softmax=False, batch=True)
    cluster = _ClusterTargets(head.num_classes * head.per_class, head.dim)
    n_real = int(round(args.batch * args.real_fraction))
    history = []
    model.train()
    step = 0
    for step in range(args.steps):
        if time.monotonic() > deadline:
            log(
                f"wall-time cap of {args.minutes} min reached after {step} of {args.steps} steps: the learning "
                "rate did not decay to zero, so these weights differ from the recipe's"
            )
            break
        # polynomial decay over the steps only, so that a seeded run is reproducible on any machine
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * (1 - step / args.steps) ** 0.9
        if step % 100 == 0:
            cluster.reset()
        real_pick = np.where(
            rng.uniform(size=n_real) < 0.7,
            rng.choice(real_tumour, size=n_real),
            rng.integers(len(real_labels), size=n_real),
        )
        phantom_pick = rng.integers(len(phantom_labels), size=args.batch - n_real)
        x_real, y_real = augment_batch(
            real_images[np.sort(real_pick)], real_labels[np.sort(real_pick)], generator, args.crop, strength=1.3
        )
        x_ph, y_ph = augment_batch(phantom_images[phantom_pick], phantom_labels[phantom_pick], generator, args.crop)
        x = modality_dropout(torch.cat([x_real, x_ph]), generator, probability=0.5)
        y = torch.cat([y_real, y_ph])
        result = model.forward_features(x, taps=["head_logits", "prototype_logits", "prototype_embedding"])
        feats = result.features
        loss_head = F.cross_entropy(feats["head_logits"], y)
        loss_proto = F.cross_entropy(feats["prototype_logits"], y)
        loss_dice = dice_loss(result.logits.exp(), y[:, None])
        loss_cluster = cluster.loss(head, feats["prototype_embedding"], y, generator)
        loss = loss_head + loss_proto + loss_dice + 0.1 * loss_cluster
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append([float(v.detach()) for v in (loss, loss_head, loss_proto, loss_dice, loss_cluster)])
        if step % 25 == 0 or step == args.steps - 1:
            recent = np.mean(history[-25:], axis=0)
            log(
                f"step {step}/{args.steps} loss {recent[0]:.3f} (ce {recent[1]:.3f} proto {recent[2]:.3f} "
                f"dice {recent[3]:.3f} cluster {recent[4]:.3f}) {time.monotonic() - start:.0f} s"
            )
    model.eval()
    info = {
        "steps_done": step + 1 if history else 0,
        "wall_seconds": round(time.monotonic() - start, 1),
        "final_loss": float(np.mean(history[-50:], axis=0)[0]) if history else None,
    }
    return model, info


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the held-out case, write ``glioma2d.safetensors`` + ``glioma2d.json`` to ``--out``."""
    import torch

    from napari_medadapt.core.models import save_model
    from napari_medadapt.core.paths import data_dir

    torch.set_num_threads(args.threads)
    args.data = data_dir(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.txt"

    def log(message: str) -> None:
        print(message, flush=True)
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(message + "\n")

    model, info = train(args, log)
    card = model.card
    card.description = (
        "Small 2D brain-tumour segmenter (MONAI DynUNet, BatchNorm) with a per-modality normaliser in front "
        "and a local prototype head; slice-wise on axial slices of skull-stripped 1 mm MRI."
    )
    card.training_data = {
        "phantoms": f"{args.phantoms} phantoms x 8 axial slices (napari_medadapt.core.synth, MNI152 anatomy)",
        "real": f"{TRAIN_CASE} (seg_fusion labels), heavily augmented",
        "held_out": f"{HELD_OUT_CASE} (never used for training or selection)",
        "recipe": {
            "seed": args.seed,
            "steps": args.steps,
            "batch": args.batch,
            "crop": args.crop,
            "real_fraction": args.real_fraction,
            "modality_dropout": "p=0.5 per sample; each of t1, t1c, t2 dropped with p=0.5; FLAIR kept",
            "loss": "CE(head) + CE(prototypes) + soft Dice(tumour classes) + 0.1 * prototype clustering",
            "optimizer": "Adam lr 2e-3 (prototypes 1e-2), weight decay 1e-5, poly decay 0.9 over the steps",
            **info,
        },
        "command": f"medadapt train glioma2d --seed {args.seed} --steps {args.steps} --minutes {args.minutes:g}",
    }
    card.license = "Weights: same terms as napari-medadapt. Training case: TCGA (TCIA), CC BY 3.0."
    save_model(model, args.out / "glioma2d.safetensors", card)
    if not args.no_eval:
        from napari_medadapt.bench.engine import evaluate_held_out

        card.evaluation = evaluate_held_out(model, args.data / HELD_OUT_CASE, log=log)
        card.save(args.out / "glioma2d.json")
    log(json.dumps(card.evaluation, indent=1))
    log(f"wrote {args.out / 'glioma2d.safetensors'} and {args.out / 'glioma2d.json'}")
    return 0
