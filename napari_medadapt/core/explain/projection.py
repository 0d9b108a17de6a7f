"""Projecting prototypes onto real training features, and building prototype banks.

Projection (METHODS section 3, as in the authors' code): every prototype of class ``c`` is replaced by the
feature of a real training position of class ``c`` (inside the imaged object: where some input channel is
non-zero, which excludes the zero background of skull-stripped, normalised MRI). For
each prototype and each training slice the most similar position is found; a per-class Hungarian assignment
(``scipy.optimize.linear_sum_assignment`` on the negated similarities) then gives every prototype of the class
a different source slice, so that no two prototypes share a source image or patch. The bank keeps each
source's case, plane and position and the input patch around it (every modality).

Post-hoc banks (a model without a prototype head): mini-batch k-means (scikit-learn) of the unit-length
decoder features of each class over labelled volumes, the centres then projected the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..jobs import JobContext, ensure_context
from .bank import PrototypeBank
from .features import bank_embedding, cosine_maps, decoder_features

if TYPE_CHECKING:
    from ..models import SegModel

#: Side of the stored input patch around a source position (voxels, native resolution).
PATCH_SIZE = 48


@dataclass
class TrainingSlices:
    """Normalised training planes with reference labels and where each came from.

    Attributes
    ----------
    images
        (N, C, Y, X) float16, normalised as the model's input (channels in ``modalities`` order).
    labels
        (N, Y, X) uint8 label ids.
    sources
        Per plane: ``case``, ``plane`` and whatever rebuilds it (``path`` of a case folder, phantom ``seed``).
    modalities
        Channel names.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: list[dict[str, Any]]
    modalities: list[str]
    described: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def label_classes(model: SegModel, labels: np.ndarray) -> np.ndarray:
    """Network class of every voxel of label ids ``labels`` (ids the model does not know: -1)."""
    lut = np.full(256, -1, dtype=np.int64)
    for cls, label in enumerate(model.card.labels):
        lut[int(label)] = cls
    return lut[np.asarray(labels, dtype=np.uint8)]


def crop_patch(image: np.ndarray, y: int, x: int, size: int = PATCH_SIZE) -> np.ndarray:
    """The (..., size, size) window of ``image`` (..., Y, X) centred on (y, x), zero outside."""
    half = size // 2
    out = np.zeros(image.shape[:-2] + (size, size), dtype=image.dtype)
    y0, x0 = y - half, x - half
    ys, xs = slice(max(y0, 0), min(y0 + size, image.shape[-2])), slice(max(x0, 0), min(x0 + size, image.shape[-1]))
    out[..., ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = image[..., ys, xs]
    return out


def _check_2d(model: SegModel) -> None:
    if model.spatial_dims != 2:
        raise ModelError(
            f"prototype banks are built from training planes of 2D models; {model.card.name!r} is 3D, which is not "
            "supported yet."
        )


def _best_positions(
    model: SegModel, space: str, vectors: np.ndarray, classes: np.ndarray, slices: TrainingSlices,
    ctx: JobContext, batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every prototype and training slice: the highest similarity at a position of the prototype's class
    inside the object, and that position's flat index (-inf / -1 where the slice has none); and every slice's
    pooled feature (the mean unit feature over its labelled foreground, else over the object; unit length)."""
    import torch
    import torch.nn.functional as F

    n = len(slices)
    pooled = np.zeros((n, vectors.shape[1]), dtype=np.float32)
    best = np.full((len(vectors), n), -np.inf, dtype=np.float32)
    where = np.full((len(vectors), n), -1, dtype=np.int64)
    total = max(math.ceil(n / batch_size), 1)
    for step, start in enumerate(range(0, n, batch_size)):
        ctx.check()
        stop = min(start + batch_size, n)
        data = slices.images[start:stop].transpose(1, 0, 2, 3)
        embedding = bank_embedding(model, space, decoder_features(model, data))
        sim = cosine_maps(embedding, vectors).flatten(2)  # (B, P, YX)
        cls = torch.from_numpy(label_classes(model, slices.labels[start:stop]).reshape(stop - start, -1))
        inside = torch.from_numpy(np.any(slices.images[start:stop] != 0, axis=1).reshape(stop - start, -1))
        foreground = (cls > 0) & inside
        weight = torch.where(foreground.any(dim=1, keepdim=True), foreground, inside).float()
        sums = torch.einsum("bdp,bp->bd", embedding.flatten(2), weight)
        pooled[start:stop] = F.normalize(sums, dim=1).numpy()
        allowed = (cls[:, None, :] == torch.from_numpy(classes)[None, :, None]) & inside[:, None, :]
        sim = sim.masked_fill(~allowed, -math.inf)
        value, index = sim.max(dim=2)
        best[:, start:stop] = value.T.numpy()
        where[:, start:stop] = np.where(np.isfinite(value.T.numpy()), index.T.numpy(), -1)
        ctx.progress(step + 1, total, f"matching prototypes to training planes {stop} of {n}")
    return best, where, pooled


def project(
    model: SegModel, space: str, vectors: np.ndarray, classes: np.ndarray, slices: TrainingSlices,
    *, ctx: JobContext | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """Project ``vectors`` (P, D) of network ``classes`` (P,) onto real features of ``slices``.

    Returns
    -------
    projected, entries, patches, patch_labels, plane_vectors
        (P, D) unit-length real features; per prototype ``{"id", "network_class", "label", "similarity",
        "source"}``; (P, C, S, S) input patches and (P, S, S) label patches around each source; (N, D) pooled
        feature of every training plane (content-based retrieval of similar training slices).

    Raises
    ------
    ModelError
        A class with prototypes has no training position at all.
    """
    from scipy.optimize import linear_sum_assignment

    ctx = ensure_context(ctx)
    _check_2d(model)
    best, where, plane_vectors = _best_positions(model, space, vectors, classes, slices, ctx)
    chosen = np.full(len(vectors), -1, dtype=np.int64)
    for cls in np.unique(classes):
        ids = np.flatnonzero(classes == cls)
        usable = np.flatnonzero(np.isfinite(best[ids]).any(axis=0))
        if len(usable) == 0:
            name = model.card.class_names[cls] if model.card.class_names else str(model.card.labels[cls])
            raise ModelError(f"no training plane contains the class {name!r}: its prototypes cannot be projected.")
        gain = np.where(np.isfinite(best[np.ix_(ids, usable)]), best[np.ix_(ids, usable)], -10.0)
        rows, cols = linear_sum_assignment(-gain)
        chosen[ids[rows]] = usable[cols]
        for leftover in ids[np.setdiff1d(np.arange(len(ids)), rows)]:  # fewer source planes than prototypes
            chosen[leftover] = usable[np.argmax(gain[list(ids).index(leftover)])]
    width = slices.images.shape[-1]
    projected = np.zeros_like(vectors, dtype=np.float32)
    entries, patches, patch_labels = [], [], []
    for pid, plane in enumerate(chosen):
        y, x = divmod(int(where[pid, plane]), width)
        data = slices.images[plane : plane + 1].transpose(1, 0, 2, 3)
        feature = bank_embedding(model, space, decoder_features(model, data))[0, :, y, x]
        projected[pid] = feature.numpy()
        cls = int(classes[pid])
        entries.append({
            "id": pid, "network_class": cls, "label": int(model.card.labels[cls]),
            "similarity": round(float(best[pid, plane]), 4), "source": {**slices.sources[plane], "y": y, "x": x},
        })
        patches.append(crop_patch(slices.images[plane], y, x))
        patch_labels.append(crop_patch(slices.labels[plane], y, x))
    return projected, entries, np.stack(patches).astype(np.float16), np.stack(patch_labels).astype(np.uint8), plane_vectors


def bank_card(model: SegModel, space: str, method: str, entries: list[dict[str, Any]], slices: TrainingSlices, dim: int) -> dict[str, Any]:
    """The card of a bank built for ``model`` (see :class:`~.bank.PrototypeBank`)."""
    from ..provenance import model_sha256

    sha = model_sha256(model)
    if sha is None:
        raise ModelError(f"the model {model.card.name!r} exists only in this session; save it before building a bank for it.")
    return {
        "format_version": 1, "kind": "prototype_bank", "name": f"{model.card.name} prototypes",
        "base_model": model.card.name, "base_sha256": sha, "space": space, "method": method, "dim": int(dim),
        "labels": [int(v) for v in model.card.labels], "class_names": list(model.card.class_names),
        "modalities": list(slices.modalities), "patch_size": PATCH_SIZE, "prototypes": entries,
        "training_cases": dict(slices.described),
        "planes": [{**source, "label_voxels": _label_counts(labels)} for source, labels in zip(slices.sources, slices.labels, strict=True)],
    }


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def head_bank(model: SegModel, slices: TrainingSlices, *, ctx: JobContext | None = None) -> PrototypeBank:
    """Project the prototypes of ``model``'s own prototype head onto ``slices`` (its training planes)."""
    head = model.prototypes
    if head is None:
        raise ModelError(f"the model {model.card.name!r} has no prototype head; build a post-hoc bank (medadapt prototype-bank).")
    vectors = head.prototypes.detach().float().numpy()
    classes = np.arange(len(vectors)) // head.per_class
    projected, entries, patches, patch_labels, planes = project(model, "head", vectors, classes, slices, ctx=ctx)
    card = bank_card(model, "head", "head-projection", entries, slices, head.dim)
    return PrototypeBank(card, projected, patches, patch_labels, planes)


def kmeans_bank(
    model: SegModel, slices: TrainingSlices, *, per_class: int = 10, seed: int = 0,
    samples_per_plane: int = 400, ctx: JobContext | None = None,
) -> PrototypeBank:
    """A post-hoc bank: ``per_class`` mini-batch k-means centres of the decoder features of every class found
    in ``slices`` (background included), projected onto real positions."""
    from sklearn.cluster import MiniBatchKMeans

    ctx = ensure_context(ctx)
    _check_2d(model)
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {}
    for start in range(0, len(slices), 8):
        ctx.check()
        data = slices.images[start : start + 8].transpose(1, 0, 2, 3)
        embedding = bank_embedding(model, "decoder", decoder_features(model, data)).numpy()
        classes = label_classes(model, slices.labels[start : start + 8])
        inside = np.any(slices.images[start : start + 8] != 0, axis=1)
        for b in range(len(classes)):
            for cls in np.unique(classes[b][inside[b]]):
                if cls < 0:
                    continue
                ys, xs = np.nonzero((classes[b] == cls) & inside[b])
                pick = rng.choice(len(ys), size=min(samples_per_plane, len(ys)), replace=False)
                samples.setdefault(int(cls), []).append(embedding[b][:, ys[pick], xs[pick]].T)
        ctx.progress(min(start + 8, len(slices)), len(slices), "sampling decoder features")
    if len(samples) < 2:
        raise ModelError("the labelled cases hold fewer than two of the model's classes; a bank needs background and a target class.")
    vectors, classes = [], []
    for cls in sorted(samples):
        feats = np.concatenate(samples[cls])
        k = min(per_class, len(feats))
        centres = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=1024, n_init=3).fit(feats).cluster_centers_
        vectors.append(centres)
        classes += [cls] * k
    vectors_array = np.concatenate(vectors).astype(np.float32)
    projected, entries, patches, patch_labels, planes = project(model, "decoder", vectors_array, np.asarray(classes), slices, ctx=ctx)
    card = bank_card(model, "decoder", "kmeans-projection", entries, slices, model.decoder_channels)
    return PrototypeBank(card, projected, patches, patch_labels, planes)


def with_prototypes(model: SegModel, vectors: np.ndarray) -> SegModel:
    """A copy of ``model`` whose prototype head uses ``vectors`` (P, D) (e.g. the projected ones)."""
    import torch

    if model.prototypes is None or tuple(model.prototypes.prototypes.shape) != tuple(vectors.shape):
        raise ModelError(f"these prototypes do not fit the head of {model.card.name!r}.")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.prototypes.prototypes.copy_(torch.as_tensor(np.asarray(vectors, dtype=np.float32)))
    return copied


def case_folders(folder: str | Path) -> list[Path]:
    """The case folders of a cohort folder (its sub-folders), or the folder itself when it is one case."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; give a folder of labelled case folders (or one case folder).")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) or [folder]


def case_slices(
    cases: Sequence[Any], model: SegModel, label_name: str | None = None,
    on_case: Callable[[str], None] | None = None,
) -> TrainingSlices:
    """Axial planes (with any labelled voxel or object) of labelled case folders, normalised as ``model``'s input.

    ``cases`` are case folders (the reader's convention: one file per modality and a label file).
    """
    from ..cases import load_case
    from ..model_input import prepare_model_input

    _check_2d(model)
    images, labels, sources = [], [], []
    for case in cases:
        volume, label_maps = load_case(case)
        if not label_maps:
            raise ModelError(f"the case {case} has no label file; a bank is built from labelled cases.")
        name = label_name if label_name in label_maps else sorted(label_maps)[0]
        prepared = prepare_model_input(model, volume)
        if prepared.resampled:
            raise ModelError(f"the case {case} is not on the model's voxel grid; resample it first (medadapt preprocess).")
        seg = np.asarray(label_maps[name], dtype=np.uint8)
        keep = np.flatnonzero(np.any(prepared.data != 0, axis=(0, 2, 3)))
        images.append(prepared.data[:, keep].transpose(1, 0, 2, 3).astype(np.float16))
        labels.append(seg[keep])
        sources += [{"case": Path(case).name, "path": str(Path(case).resolve()), "plane": int(z), "label_map": name} for z in keep]
        if on_case:
            on_case(str(case))
    if not images:
        raise ModelError("no labelled cases given.")
    return TrainingSlices(
        np.concatenate(images), np.concatenate(labels), sources, list(model.card.modalities),
        {"cases": [str(c) for c in cases]},
    )
