"""``medadapt train sam-small``: train the bundled small Segment Anything model on CPU.

Data: slices (axial, coronal, sagittal) of the real glioma case glioma_tcga_du7294 (t1, t1c, t2,
flair; targets: each tumour label and the whole tumour from seg_fusion) and the real abdominal CT
ct_abdomen_totalseg_example (each organ). glioma_tcga_fg6692 is never used: it is the held-out
benchmark case. Prompts are simulated as in interactive use: a box (0-10 px jitter) or one click,
then corrective clicks in the largest error region with the previous mask fed back (SAM-style
iterative training). Augmentation: flips, 90-degree and small rotations, intensity window and gamma
jitter. Training is seeded; with ``--max-steps`` the learning-rate schedule follows the step count
(reproducible), and ``--minutes`` is a wall-time cap; weights go to
``napari_medadapt/weights/sam_small.safetensors`` with the card ``sam_small.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.core.intensity import CT_WINDOWS

HELP = "train the bundled small Segment Anything model (CPU, seeded, time-capped)"

DEFAULT_OUT = Path("sam-small-model") / "sam_small.safetensors"
TRAIN_GLIOMA = "glioma_tcga_du7294"
HELD_OUT = "glioma_tcga_fg6692"
TRAIN_CT = "ct_abdomen_totalseg_example"
MRI_MODALITIES = ("t1", "t1c", "t2", "flair")
#: CT windows (of the one table in core/intensity.py) a training slice is shown through, chosen at random
TRAINING_CT_WINDOWS = tuple(CT_WINDOWS[name] for name in ("soft-tissue", "mediastinum", "liver", "bone"))
MIN_AREA = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options."""
    parser.add_argument(
        "--data-root", type=Path, default=None,
        help="folder of the real cases (default: MEDADAPT_DATA_DIR, or ../shared/data/real beside a checkout)",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget for training")
    parser.add_argument(
        "--max-steps", type=int, default=0,
        help="number of steps; the learning-rate schedule follows it (0: time only, schedule over the wall time)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=f"weights path, the card is written beside it (default: ./{DEFAULT_OUT}; the bundled file is "
        "napari_medadapt/weights/sam_small.safetensors in a checkout)",
    )
    parser.add_argument("--init", type=Path, default=None, help="start from these safetensors weights")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="prompt rounds per sample (1 + corrective clicks)")
    parser.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")


class SliceSampler:
    """Random training slices with a target mask, from volumes along all three axes."""

    def __init__(self, data_root: Path, rng: np.random.Generator) -> None:
        from napari_medadapt.core.labelmaps import load_labels
        from napari_medadapt.core.volume import load_volume

        self.rng = rng
        self._volume_windows: dict[int, tuple[float, float]] = {}
        self.items: list[tuple[np.ndarray, tuple[float, float] | None, np.ndarray, int, np.ndarray]] = []
        self.description: list[str] = []
        case = data_root / TRAIN_GLIOMA
        seg_vol = None
        for modality in MRI_MODALITIES:
            vol = load_volume(case / f"{modality}.nii.gz", name=modality)
            if seg_vol is None:
                seg_vol = load_labels(case / "seg_fusion.nii.gz", vol.geometry)
            image = vol.data[0]
            targets = {"NCR/NET": [1], "edema": [2], "enhancing": [4], "whole tumour": [1, 2, 4], "core": [1, 4]}
            for tname, values in targets.items():
                self._add(image, None, np.isin(seg_vol, values), f"{TRAIN_GLIOMA}/{modality}/{tname}")
        ct = load_volume(data_root / TRAIN_CT / "ct.nii.gz", name="ct")
        seg = load_labels(data_root / TRAIN_CT / "seg.nii.gz", ct.geometry)
        for value in np.unique(seg):
            if value == 0 or (seg == value).sum() < 100:
                continue
            self._add(ct.data[0], TRAINING_CT_WINDOWS, seg == value, f"{TRAIN_CT}/label {int(value)}")
        if not self.items:
            raise RuntimeError(f"no training slices found under {data_root}")

    def _add(self, image: np.ndarray, ct_windows: Any, target: np.ndarray, desc: str) -> None:
        for axis in range(3):
            areas = target.sum(axis=tuple(a for a in range(3) if a != axis))
            valid = np.flatnonzero(areas >= MIN_AREA)
            if valid.size and min(s for a, s in enumerate(image.shape) if a != axis) >= 24:
                self.items.append((image, ct_windows, target, axis, valid))
                self.description.append(f"{desc} axis {axis}: {valid.size} slices")

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One augmented ``(H, W, 3)`` uint8 image and its boolean target mask."""
        from scipy import ndimage

        from napari_medadapt.core.sam.prompts import resolve_window, slice_to_rgb

        rng = self.rng
        image, ct_windows, target, axis, valid = self.items[rng.integers(len(self.items))]
        index = int(rng.choice(valid))
        img = np.take(image, index, axis=axis)
        mask = np.take(target, index, axis=axis)
        if ct_windows is None:
            if id(image) not in self._volume_windows:
                self._volume_windows[id(image)] = resolve_window(image, None)
            lo, hi = self._volume_windows[id(image)] if rng.random() < 0.7 else resolve_window(img, None)
            span = hi - lo
            window = (lo + span * rng.uniform(-0.05, 0.15), hi + span * rng.uniform(-0.3, 0.1))
        else:
            lo, hi = ct_windows[rng.integers(len(ct_windows))]
            span = hi - lo
            window = (lo + span * rng.uniform(-0.1, 0.1), hi + span * rng.uniform(-0.1, 0.1))
        rgb = slice_to_rgb(img, window)[:, :, 0].astype(np.float32) / 255.0
        rgb = rgb ** rng.uniform(0.7, 1.5)
        if rng.random() < 0.3:
            angle = rng.uniform(-20, 20)
            rgb = ndimage.rotate(rgb, angle, reshape=False, order=1)
            mask = ndimage.rotate(mask.astype(np.uint8), angle, reshape=False, order=0) > 0
        k = int(rng.integers(4))
        rgb, mask = np.rot90(rgb, k), np.rot90(mask, k)
        if rng.random() < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        if mask.sum() < MIN_AREA:
            return self.sample()
        grey = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), np.ascontiguousarray(mask)


def _losses(logits: Any, iou_pred: Any, target: Any) -> tuple[Any, Any]:
    """Dice + cross-entropy on the masks (as MedSAM; SAM's 20:1 focal weighting collapsed to empty
    masks on small targets in short CPU runs), MSE of the IoU head; min over candidates.

    ``logits`` (B, K, H, W), ``iou_pred`` (B, K), ``target`` (B, 1, H, W). Returns per-sample loss
    of the best candidate and the (B, K) actual IoUs.
    """
    import torch
    import torch.nn.functional as F

    t = target.expand_as(logits)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    ce = ce.flatten(2).mean(-1)
    inter = (prob * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    with torch.no_grad():
        hard = (logits > 0).float()
        i = (hard * t).flatten(2).sum(-1)
        u = ((hard + t) > 0).float().flatten(2).sum(-1)
        actual = i / u.clamp(min=1)
    per = ce + dice
    best = per.argmin(dim=1, keepdim=True)
    mask_loss = per.gather(1, best).squeeze(1)
    iou_loss = ((iou_pred - actual) ** 2).mean(1)
    return mask_loss + iou_loss, actual.gather(1, best).squeeze(1)


def run(args: argparse.Namespace) -> int:
    """Train, save the weights and the model card."""
    import torch
    import torch.nn.functional as F

    from napari_medadapt.core.models import PromptableCard
    from napari_medadapt.core.paths import data_dir
    from napari_medadapt.core.sam.clicks import jittered_box, next_click
    from napari_medadapt.core.sam.decoding import decode, dense_prior
    from napari_medadapt.core.sam.model import PromptableModel
    from napari_medadapt.core.sam.small_model import (
        DEFAULT_CONFIG,
        SMALL_CARD,
        build_small_sam,
        save_small_sam,
    )

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.data_root = data_dir(args.data_root)
    if HELD_OUT in str(args.data_root):
        raise SystemExit(f"{HELD_OUT} is the held-out benchmark case; do not train on it.")
    sampler = SliceSampler(args.data_root, rng)
    print(f"{len(sampler.items)} target/axis groups", flush=True)
    sam = build_small_sam(DEFAULT_CONFIG)
    if args.init is not None:
        from safetensors.torch import load_file

        sam.load_state_dict({k: v.float() for k, v in load_file(str(args.init)).items()})
    sam.train()
    wrapper = PromptableModel(sam, "training", "training", dense_prompts=True)
    size = wrapper.image_size
    low = 4 * wrapper.grid
    opt = torch.optim.AdamW(sam.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    start = time.time()
    step = 0
    history: list[tuple[float, float, float]] = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        elapsed = time.time() - start
        if elapsed > budget or (args.max_steps and step >= args.max_steps):
            break
        # cosine over the step count when one is given, so the weights do not depend on machine load
        frac = step / args.max_steps if args.max_steps else elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        samples = [sampler.sample() for _ in range(args.batch_size)]
        images = torch.stack([wrapper._prepare(img) for img, _ in samples])
        targets = []
        frames = []
        for _img, mask in samples:
            h, w = wrapper.input_size(mask.shape)
            t = torch.from_numpy(mask.astype(np.float32))[None, None]
            t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
            t = F.pad(t, (0, size - w, 0, size - h))
            targets.append((t[0] > 0.5).float())
            frames.append((h, w))
        target = torch.stack(targets)  # (B, 1, size, size)
        emb = sam.image_encoder(images)
        b = len(samples)
        use_box = rng.random(b) < 0.5
        points: list[list[tuple[float, float]]] = [[] for _ in range(b)]
        labels: list[list[int]] = [[] for _ in range(b)]
        boxes = np.zeros((b, 4), np.float32)
        tnp = target[:, 0].numpy() > 0.5
        for j in range(b):
            if use_box[j]:
                r0, c0, r1, c1 = jittered_box(tnp[j], rng, max_jitter=int(round(10 * size / max(samples[j][1].shape))))
                boxes[j] = (c0, r0, c1, r1)
            else:
                rr, cc = np.nonzero(tnp[j])
                if rng.random() < 0.5:
                    from napari_medadapt.core.sam.clicks import interior_point

                    r, c = interior_point(tnp[j])
                else:
                    k = rng.integers(len(rr))
                    r, c = rr[k], cc[k]
                points[j].append((float(c), float(r)))
                labels[j].append(1)
        feedback = rng.random() < 0.75
        rounds = args.rounds
        total = 0.0
        prev_logits = torch.zeros(b, 1, low, low)
        ious = np.zeros(b)
        for rnd in range(rounds):
            step_loss = torch.zeros(b)
            best_low = torch.zeros(b, 1, low, low)
            for group in (np.flatnonzero(use_box), np.flatnonzero(~use_box)):
                if group.size == 0:
                    continue
                gi = torch.as_tensor(group)
                n_pts = max(len(points[j]) for j in group)
                pts = lab = None
                if n_pts:
                    pts = torch.zeros(group.size, n_pts, 2)
                    lab = -torch.ones(group.size, n_pts, dtype=torch.int64)
                    for a, j in enumerate(group):
                        if points[j]:
                            pts[a, : len(points[j])] = torch.tensor(points[j])
                            lab[a, : len(labels[j])] = torch.tensor(labels[j])
                bx = torch.as_tensor(boxes[group]) if use_box[group[0]] else None
                previous = prev_logits[gi] if (feedback and rnd > 0) else None
                prior = dense_prior(group.size, size, low, pts, lab, bx, previous)
                multimask = rnd == 0 and not use_box[group[0]]
                logits, iou_pred = decode(sam, emb[gi], pts, lab, bx, prior, multimask=multimask, residual=prior)
                up = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
                loss, got = _losses(up, iou_pred, target[gi])
                step_loss[gi] = loss
                best = iou_pred.argmax(1) if multimask else torch.zeros(group.size, dtype=torch.int64)
                chosen = logits[torch.arange(group.size), best][:, None]
                best_low[gi] = chosen.detach()
                ious[group] = got.detach().numpy()
            total = total + step_loss.mean()
            prev_logits = best_low
            if rnd == rounds - 1:
                break
            pred_up = F.interpolate(best_low, (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
            for j in range(b):
                h, w = frames[j]
                nxt = next_click(pred_up[j, :h, :w].numpy(), tnp[j, :h, :w])
                if nxt is not None:
                    points[j].append((float(nxt[1]), float(nxt[0])))
                    labels[j].append(1 if nxt[2] else 0)
                elif points[j]:
                    points[j].append(points[j][-1])
                    labels[j].append(labels[j][-1])
            # keep point counts equal inside each group by repeating the last click
            for group in (np.flatnonzero(use_box), np.flatnonzero(~use_box)):
                if group.size and any(points[j] for j in group):
                    longest = max(len(points[j]) for j in group)
                    for j in group:
                        while len(points[j]) < longest:
                            r, c = np.argwhere(tnp[j])[0]
                            points[j].append(points[j][-1] if points[j] else (float(c), float(r)))
                            labels[j].append(labels[j][-1] if labels[j] else 1)
        opt.zero_grad()
        (total / rounds).backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        step += 1
        history.append((float(total.detach()) / rounds, float(ious.mean()), time.time() - start))
        if step % args.log_every == 0:
            recent = np.array(history[-args.log_every :])
            print(
                f"step {step} t={recent[-1, 2]:.0f}s lr={lr:.2e} loss={recent[:, 0].mean():.4f} "
                f"last-round IoU={recent[:, 1].mean():.3f}",
                flush=True,
            )
        if step % 200 == 0:
            save_small_sam(sam.eval(), out_path)
            sam.train()
    sam.eval()
    sha = save_small_sam(sam, out_path)
    card_path = out_path.with_suffix(".json")
    previous = json.loads((card_path if card_path.exists() else SMALL_CARD).read_text())
    card = {
        "format_version": 1,
        "kind": "promptable",
        "name": "sam-small",
        "title": "Bundled small SAM (instant masks on a slow CPU; less accurate than LiteMedSAM)",
        "description": (
            "Small promptable model in Segment Anything's architecture: SAM's PromptEncoder and "
            "MaskDecoder (TwoWayTransformer) on a small CNN image encoder; 256 px input, "
            f"{DEFAULT_CONFIG['embed_dim']}-channel 32x32 embedding, 128x128 mask logits."
        ),
        "architecture": {"encoder": "small", **DEFAULT_CONFIG},
        "preprocess": "sam",
        "dense_prompts": True,
        "parameters": int(sum(p.numel() for p in sam.parameters())),
        "weights_file": out_path.name,
        "weights_sha256": sha,
        "weights_dtype": "float16",
        "training_data": {
            "cases": [TRAIN_GLIOMA + " (t1, t1c, t2, flair; seg_fusion labels 1, 2, 4, WT, TC)",
                      TRAIN_CT + " (CT, TotalSegmentator organs with >= 100 voxels)"],
            "held_out": HELD_OUT + " (never used in training)",
            "slices": "axial, coronal and sagittal slices with >= 16 target pixels",
            "groups": sampler.description,
            "labels_note": "labels are automatic (algorithm fusion / TotalSegmentator), not expert ground truth",
        },
        "training": {
            "steps": step,
            "minutes": round((time.time() - start) / 60, 1),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "prompts": f"box (0-10 px jitter) or one click, then {args.rounds - 1} corrective click(s) "
            "from the largest error region; previous mask fed back with p=0.75",
            "loss": "dice + cross-entropy on the best candidate, MSE of the IoU head",
            "dense_prompts": "prompts also enter as a logit map through the mask input; the decoder "
            "predicts a residual on that map (core.sam.decoding.dense_prior)",
            "augmentation": "flips, 90-degree rotations, +-20 degree rotation (p=0.3), window and gamma jitter",
            "final_train_loss": float(np.mean([h[0] for h in history[-50:]])) if history else None,
            "final_train_iou_last_round": float(np.mean([h[1] for h in history[-50:]])) if history else None,
            "command": (
                f"medadapt train sam-small --max-steps {args.max_steps} --minutes {args.minutes:g} "
                f"--rounds {args.rounds} --threads {args.threads} --seed {args.seed}"
            ),
        },
        "evaluation": previous.get("evaluation", "run `medadapt bench sam` (docs/benchmarks/sam.md)"),
        "license": "same as napari-medadapt; trained on CC BY 3.0 (TCGA) and Apache-2.0 (TotalSegmentator) data",
        "note": "bundled with napari-medadapt (medadapt train sam-small); sha256 checked against this card",
    }
    PromptableCard.from_dict(card, source="the trained model's card").save(card_path)
    print(f"saved {out_path} (sha256 {sha}) after {step} steps", flush=True)
    return 0
