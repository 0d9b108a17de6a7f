"""``medadapt train sam-clicks``: teach LiteMedSAM's prompt encoder and mask decoder to take clicks.

LiteMedSAM was trained with boxes only: a click alone gives it no mask, and clicks added to a box barely
improve the box's mask. This fine-tunes its prompt encoder and mask decoder (the TinyViT image encoder stays frozen, so
each training slice is embedded once, into an embedding cache on disk that a re-run reuses) with the
interactive protocol of METHODS section 5: a box (0-10 px jitter) or a first click, then corrective clicks in
the largest error region with the previous low-resolution mask fed back; a share of box-only samples keeps the
box quality. ``--protocols object`` adds the "object" protocol (30 % of the steps), which asks as the 3D object
engine asks a clicked slice: the box's answer, spoiled (another structure of the slice joined, dilated, eroded or
kept as it is), then corrective clicks, each round prompted with the box of the previous answer, every click and
that answer as a binary mask prompt (meant to teach negative clicks against a confident mask prompt; measured
2026-12-07 and not shipped: docs/benchmarks/segfm.md). Simulated clicks before the last round run without gradients
(their number is drawn per step), the last round is trained: Dice + cross-entropy on the best candidate and MSE of
the IoU head.

Data: every tumour region of glioma_tcga_du7294 and its brain (t1, t1c, t2, flair; three axes), the organs of
ct_abdomen_totalseg_example (three axes; ``--hold-out-segfm-organs`` leaves out the eight that ``medadapt bench
segfm`` scores), two phantom gliomas (:mod:`napari_medadapt.core.synth`) and the MNI152 anatomy shipped with nilearn
(brain, grey and white matter). glioma_tcga_fg6692 (the benchmark case) is never used. Seeded; ``--max-steps`` sets
the schedule, ``--minutes`` caps the wall time. Writes ``litemedsam_clicks.safetensors`` (fp16 prompt encoder + mask
decoder) and its card ``litemedsam_clicks.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.bench.segfm import CT_ORGANS as SEGFM_SCORED_ORGANS
from napari_medadapt.training.sam_small import MRI_MODALITIES, TRAIN_CT, TRAIN_GLIOMA, _losses

HELP = "fine-tune LiteMedSAM's prompt encoder and mask decoder for clicks (CPU, seeded, embeddings cached)"
DEFAULT_OUT = Path("litemedsam-clicks-model") / "litemedsam_clicks.safetensors"
MIN_AREA = 16
GLIOMA_TARGETS = {"whole tumour": [1, 2, 4], "core": [1, 4], "edema": [2], "NCR/NET": [1], "enhancing": [4]}
#: share of each protocol in the training steps (the bundled decoder's)
PROTOCOLS = {"box": 0.3, "box + clicks": 0.35, "clicks": 0.35}
#: ``--protocols object``: with the prompts the 3D object engine gives (:func:`_object_step`)
OBJECT_PROTOCOLS = {"box": 0.2, "box + clicks": 0.25, "clicks": 0.25, "object": 0.3}
#: how the object protocol's starting mask is spoiled: a neighbouring target of the same slice joined, the mask
#: dilated or eroded by 1-4 px, or kept as the box gave it
SPOILS = {"neighbour": 0.35, "dilate": 0.25, "erode": 0.15, "as is": 0.25}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options."""
    parser.add_argument(
        "--data-root", type=Path, default=None,
        help="folder of the real cases (default: MEDADAPT_DATA_DIR, or ../shared/data/real beside a checkout)",
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-time cap for the training steps")
    parser.add_argument("--max-steps", type=int, default=1000, help="steps; the learning-rate schedule follows them")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--slices-per-axis", type=int, default=12, help="slices per volume and axis (evenly spaced)")
    parser.add_argument("--max-clicks", type=int, default=6, help="most simulated clicks before the trained round")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=f"weights path, the card is written beside it (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache folder (default: beside --out)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--protocols", choices=("default", "object"), default="default",
                        help="'object' adds the 3D object engine's prompts (30 %% of the steps)")
    parser.add_argument("--hold-out-segfm-organs", action="store_true",
                        help="leave out the CT organs that medadapt bench segfm scores")


def _even(indices: np.ndarray, count: int) -> np.ndarray:
    if len(indices) <= count:
        return indices
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)]


def training_slices(
    data_root: Path, per_axis: int, held_out_ct: tuple[int, ...] = ()
) -> list[tuple[np.ndarray, Any, dict[str, np.ndarray], str]]:
    """``(slice, window spec, {target name: mask}, description)`` for every training slice (CT organ ids in
    ``held_out_ct`` left out)."""
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.sam.prompts import resolve_window
    from napari_medadapt.core.synth import make_phantom_volume
    from napari_medadapt.core.volume import load_volume

    out: list[tuple[np.ndarray, Any, dict[str, np.ndarray], str]] = []

    def add(image: np.ndarray, window: Any, targets: dict[str, np.ndarray], desc: str, axes=(0, 1, 2)) -> None:
        anything = np.any(np.stack(list(targets.values())), axis=0)
        for axis in axes:
            areas = anything.sum(axis=tuple(a for a in range(3) if a != axis))
            for index in _even(np.flatnonzero(areas >= MIN_AREA), per_axis):
                masks = {n: np.take(t, index, axis=axis) for n, t in targets.items()}
                masks = {n: m for n, m in masks.items() if m.sum() >= MIN_AREA}
                if masks:
                    out.append((np.take(image, index, axis=axis), window, masks, f"{desc} axis {axis} slice {index}"))

    case = data_root / TRAIN_GLIOMA
    seg = None
    for modality in MRI_MODALITIES:
        volume = load_volume(case / f"{modality}.nii.gz", name=modality)
        seg = load_labels(case / "seg_fusion.nii.gz", volume.geometry) if seg is None else seg
        image = volume.data[0]
        targets = {n: np.isin(seg, v) for n, v in GLIOMA_TARGETS.items()} | {"brain": image > 0}
        add(image, resolve_window(image, "mri-auto"), targets, f"{TRAIN_GLIOMA}/{modality}")
    ct = load_volume(data_root / TRAIN_CT / "ct.nii.gz", name="ct")
    labels = load_labels(data_root / TRAIN_CT / "seg.nii.gz", ct.geometry)
    organs = {f"label {int(v)}": labels == v for v in np.unique(labels)
              if v and int(v) not in held_out_ct and (labels == v).sum() >= 100}
    add(ct.data[0], "ct-soft-tissue", organs, TRAIN_CT)
    for seed in (0, 1):
        images, tumour = make_phantom_volume(seed)
        for channel in (1, 3):  # t1c, flair
            targets = {n: np.isin(tumour, v) for n, v in GLIOMA_TARGETS.items()}
            add(images[channel], resolve_window(images[channel], "mri-auto"), targets, f"phantom {seed}", axes=(0,))
    template, maps = _mni_anatomy()
    add(template, resolve_window(template, "mri-auto"), maps, "MNI152 anatomy")
    return out


def _mni_anatomy() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The MNI152 T1 template (nilearn, offline) and its brain, grey-matter and white-matter masks."""
    from nilearn import datasets

    template = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32)
    maps = {
        "brain": datasets.load_mni152_brain_mask(resolution=1),
        "grey matter": datasets.load_mni152_gm_template(resolution=1),
        "white matter": datasets.load_mni152_wm_template(resolution=1),
    }
    return template, {n: np.asarray(m.get_fdata()) > 0.5 for n, m in maps.items()}


class ClickData:
    """Frozen-encoder embeddings of the training slices and their targets in the model's input frame."""

    def __init__(self, model: Any, slices: list, cache_dir: Path) -> None:
        import torch
        import torch.nn.functional as F

        from napari_medadapt.core.sam.predictor import EmbeddingCache, SamPredictor
        from napari_medadapt.core.sam.prompts import resolve_window

        predictor = SamPredictor(model, cache=EmbeddingCache(max_bytes=1 << 34, disk_dir=cache_dir))
        size = model.image_size
        embeddings, targets, owner, frames, jitter, self.description = [], [], [], [], [], []
        start = time.time()
        for number, (image, window, masks, desc) in enumerate(slices):
            embeddings.append(torch.from_numpy(predictor.embedding(image, resolve_window(image, window))))
            h, w = model.input_size(image.shape)
            for name, mask in masks.items():
                t = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], (h, w), mode="bilinear")
                framed = F.pad(t, (0, size - w, 0, size - h))[0, 0] > 0.5
                if framed.sum() >= 8:
                    targets.append(framed.numpy())
                    owner.append(len(embeddings) - 1)
                    frames.append((h, w))
                    jitter.append(max(1, round(10 * size / max(image.shape))))
                    self.description.append(f"{desc}: {name}")
            if (number + 1) % 50 == 0:
                print(f"embedded {number + 1}/{len(slices)} slices ({time.time() - start:.0f} s)", flush=True)
        self.embeddings = torch.stack(embeddings)
        self.targets = np.stack(targets)
        self.owner = np.asarray(owner)
        self.frames = np.asarray(frames)
        self.jitter = np.asarray(jitter)


def _point_tensors(points: list[list[tuple[float, float, int]]]) -> tuple[Any, Any]:
    """``(B, N, 2)`` x/y and ``(B, N)`` labels, padded with label -1 (SAM's "no point"); ``None`` without points."""
    import torch

    n = max(len(p) for p in points)
    if n == 0:
        return None, None
    xy = torch.zeros(len(points), n, 2)
    labels = -torch.ones(len(points), n, dtype=torch.int64)
    for j, sample in enumerate(points):
        for k, (x, y, label) in enumerate(sample):
            xy[j, k] = torch.tensor([x, y])
            labels[j, k] = label
    return xy, labels


def _first_prompts(
    data: ClickData, picks: np.ndarray, protocol: str, rng: np.random.Generator
) -> tuple[Any, list[list[tuple[float, float, int]]]]:
    import torch

    from napari_medadapt.core.sam.clicks import interior_point, jittered_box

    boxes = None
    points: list[list[tuple[float, float, int]]] = [[] for _ in picks]
    if protocol in ("box", "box + clicks"):
        xyxy = []
        for t, j in zip(data.targets[picks], data.jitter[picks], strict=True):
            r0, c0, r1, c1 = jittered_box(t, rng, max_jitter=int(j))
            xyxy.append((c0, r0, c1, r1))
        boxes = torch.tensor(xyxy, dtype=torch.float32)
    else:
        for k, t in enumerate(data.targets[picks]):
            if rng.random() < 0.5:
                r, c = interior_point(t)
            else:
                r, c = np.argwhere(t)[rng.integers(int(t.sum()))]
            points[k].append((float(c), float(r), 1))
    return boxes, points


def train_step(sam: Any, data: ClickData, batch: int, max_clicks: int, rng: np.random.Generator,
               protocols: dict[str, float] = PROTOCOLS) -> tuple[Any, float]:
    """One step: simulate a user (no gradients), then the trained round; returns (loss, IoU of that round)."""
    import torch

    from napari_medadapt.core.sam.clicks import next_click
    from napari_medadapt.core.sam.decoding import decode

    picks = rng.integers(len(data.targets), size=batch)
    emb = data.embeddings[torch.as_tensor(data.owner[picks])].float()
    target = torch.from_numpy(data.targets[picks][:, None].astype(np.float32))
    protocol = str(rng.choice(list(protocols), p=list(protocols.values())))
    if protocol == "object":
        logits, iou_pred = _object_step(sam, data, picks, emb, max_clicks, rng)
        loss, got = _losses(logits, iou_pred, target)
        return loss.mean(), float(got.mean())
    boxes, points = _first_prompts(data, picks, protocol, rng)
    rounds = 0 if protocol == "box" else int(rng.integers(0, max_clicks + 1))
    feedback = rng.random() < 0.8
    previous = None
    with torch.no_grad():
        for _ in range(rounds):
            xy, labels = _point_tensors(points)
            single = xy is not None and xy.shape[1] == 1 and boxes is None
            logits, iou_pred = decode(sam, emb, xy, labels, boxes, previous if feedback else None, multimask=single)
            best = iou_pred.argmax(1)
            previous = logits[torch.arange(batch), best][:, None]
            pred = (previous[:, 0] > 0).numpy()
            for k in range(batch):
                h, w = data.frames[picks[k]]
                click = next_click(pred[k, :h, :w], data.targets[picks[k]][:h, :w])
                if click is not None:
                    points[k].append((float(click[1]), float(click[0]), 1 if click[2] else 0))
    xy, labels = _point_tensors(points)
    single = xy is not None and xy.shape[1] == 1 and boxes is None
    logits, iou_pred = decode(sam, emb, xy, labels, boxes, previous if feedback else None, multimask=single)
    loss, got = _losses(logits, iou_pred, target)
    return loss.mean(), float(got.mean())


def _spoiled(mask: np.ndarray, data: ClickData, pick: int, rng: np.random.Generator) -> np.ndarray:
    """The starting mask of the object protocol: ``mask`` (the box's answer) spoiled as :data:`SPOILS` draws."""
    from scipy import ndimage

    kind = str(rng.choice(list(SPOILS), p=list(SPOILS.values())))
    target = data.targets[pick]
    if kind == "neighbour":  # another structure of the slice joined (what a leaking propagation gives)
        others = [o for o in np.flatnonzero(data.owner == data.owner[pick])
                  if o != pick and 0 < (data.targets[o] & ~target).sum() <= 2 * target.sum()]
        if others:
            return mask | data.targets[int(rng.choice(others))]
        kind = "dilate"
    if kind == "dilate":
        return ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 5)))
    if kind == "erode":
        return ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 5)))
    return mask


def _object_prompts(
    sam: Any, masks: np.ndarray, points: list[list[tuple[float, float, int]]], frames: np.ndarray
) -> tuple[Any, Any]:
    """What ``SliceEngine`` asks a corrected slice with: the box of the object's mask there grown to each positive
    click +- ``BOX_MARGIN_PX`` and clipped to the slice's ``(h, w)`` frame, (the clicks,) and the mask itself as a
    mask prompt (``mask_to_logits``: +-8). One difference: for an empty mask the engine sends the clicks alone; a
    batch needs a box per sample, so here it is the positive clicks' (the spoiled starts are rarely empty)."""
    import torch
    import torch.nn.functional as F

    from napari_medadapt.core.sam.propagation import BOX_MARGIN_PX

    boxes = []
    for mask, clicks, (h, w) in zip(masks, points, frames, strict=True):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        positive = [(x, y) for x, y, label in clicks if label == 1]
        ys = [*rows[[0, -1]]] if rows.size else []
        xs = [*cols[[0, -1]]] if cols.size else []
        ys += [v for _, y in positive for v in (y - BOX_MARGIN_PX, y + BOX_MARGIN_PX)]
        xs += [v for x, _ in positive for v in (x - BOX_MARGIN_PX, x + BOX_MARGIN_PX)]
        if not ys:  # no mask and no positive click: the whole frame
            ys, xs = [0, h - 1], [0, w - 1]
        boxes.append((max(0.0, min(xs)), max(0.0, min(ys)), min(w - 1.0, max(xs)), min(h - 1.0, max(ys))))
    low = F.interpolate(torch.from_numpy(masks.astype(np.float32))[:, None], sam.prompt_encoder.mask_input_size,
                        mode="area")
    return torch.tensor(boxes, dtype=torch.float32), (low - 0.5) * 16.0


def _in_frames(masks: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``masks`` with everything outside each sample's ``(h, w)`` frame (the model input's padding) cleared."""
    for mask, (h, w) in zip(masks, frames, strict=True):
        mask[h:], mask[:, w:] = False, False
    return masks


def _object_step(sam: Any, data: ClickData, picks: np.ndarray, emb: Any, max_clicks: int,
                 rng: np.random.Generator) -> tuple[Any, Any]:
    """The object protocol: the box's answer (of the decoder being trained; in the app LiteMedSAM's published decoder
    answers a box, but the start is spoiled anyway), spoiled (:func:`_spoiled`), then 1..``max_clicks`` corrective
    clicks each asked as the 3D object engine asks a clicked slice (:func:`_object_prompts`: the previous answer as
    box and binary mask prompt); only the last round is trained. Returns its logits and IoU predictions."""
    import torch

    from napari_medadapt.core.sam.clicks import next_click
    from napari_medadapt.core.sam.decoding import decode

    frames = data.frames[picks]
    boxes, points = _first_prompts(data, picks, "box", rng)  # jittered boxes, no clicks yet
    with torch.no_grad():
        logits, _ = decode(sam, emb, None, None, boxes, None)
        masks = (logits[:, 0] > 0).numpy()
        for k, pick in enumerate(picks):
            masks[k] = _spoiled(masks[k], data, int(pick), rng)
        masks = _in_frames(masks, frames)
        rounds = int(rng.integers(1, max_clicks + 1))
        for number in range(rounds):
            for k, pick in enumerate(picks):
                h, w = frames[k]
                click = next_click(masks[k, :h, :w], data.targets[pick][:h, :w])
                if click is not None:
                    points[k].append((float(click[1]), float(click[0]), 1 if click[2] else 0))
            if number == rounds - 1:
                break
            xy, labels = _point_tensors(points)
            logits, _ = decode(sam, emb, xy, labels, *_object_prompts(sam, masks, points, frames))
            masks = _in_frames((logits[:, 0] > 0).numpy(), frames)
    xy, labels = _point_tensors(points)
    return decode(sam, emb, xy, labels, *_object_prompts(sam, masks, points, frames))


def run(args: argparse.Namespace) -> int:
    """Embed the training slices (cached), fine-tune, save the decoder and its card."""
    import torch

    from napari_medadapt.core.paths import data_dir
    from napari_medadapt.core.sam.registry import load_sam
    from napari_medadapt.training._sam_clicks_card import save_decoder_and_card

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.data_root = data_dir(args.data_root)  # only the training cases named above are read from it
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = load_sam("litemedsam", device="cpu")
    model.cpu_bf16 = False  # train on the fp32 embeddings the default path gives, whatever MEDADAPT_SAM_PRECISION says
    held_out_ct = tuple(SEGFM_SCORED_ORGANS) if args.hold_out_segfm_organs else ()
    protocols = OBJECT_PROTOCOLS if args.protocols == "object" else PROTOCOLS
    slices = training_slices(args.data_root, args.slices_per_axis, held_out_ct)
    print(f"{len(slices)} training slices; embedding (cached in {args.cache or out_path.parent / 'embeddings'})",
          flush=True)
    t0 = time.time()
    data = ClickData(model, slices, args.cache or out_path.parent / "embeddings")
    embed_minutes = (time.time() - t0) / 60
    print(f"{len(data.targets)} targets on {len(data.embeddings)} slices ({embed_minutes:.1f} min)", flush=True)
    sam = model.sam
    trained = [*sam.prompt_encoder.parameters(), *sam.mask_decoder.parameters()]
    sam.prompt_encoder.train()
    sam.mask_decoder.train()
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=1e-4)
    start, step, history = time.time(), 0, []
    while step < args.max_steps and time.time() - start < args.minutes * 60:
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / args.max_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss, got = train_step(sam, data, args.batch_size, args.max_clicks, rng, protocols)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        history.append((float(loss.detach()), got))
        if step % args.log_every == 0:
            recent = np.array(history[-args.log_every:])
            print(f"step {step} t={time.time() - start:.0f}s lr={lr:.1e} loss={recent[:, 0].mean():.4f} "
                  f"trained-round IoU={recent[:, 1].mean():.3f}", flush=True)
    sam.eval()
    save_decoder_and_card(sam, out_path, model.weights_hash, {
        "steps": step,
        "minutes_training": round((time.time() - start) / 60, 1),
        "minutes_embedding": round(embed_minutes, 1),
        "slices": len(data.embeddings),
        "targets": len(data.targets),
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": args.threads,
        "max_simulated_clicks": args.max_clicks,
        "protocols": protocols,
        "final_train_loss": float(np.mean([h[0] for h in history[-100:]])) if history else None,
        "final_train_iou": float(np.mean([h[1] for h in history[-100:]])) if history else None,
        "command": f"medadapt train sam-clicks --max-steps {args.max_steps} --minutes {args.minutes:g} "
        f"--batch-size {args.batch_size} --lr {args.lr:g} --threads {args.threads} --seed {args.seed}"
        + (" --protocols object" if args.protocols == "object" else "")
        + (" --hold-out-segfm-organs" if held_out_ct else ""),
    }, sorted({d.split(" axis ")[0] for d in data.description}),
        "glioma_tcga_fg6692" + (" and the CT organs medadapt bench segfm scores" if held_out_ct else "")
        + " (never used in training)")
    return 0
