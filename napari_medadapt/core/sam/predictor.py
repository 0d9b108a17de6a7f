"""Embed once, decode many: per-slice embedding cache and the prompt -> mask predictor.

The image encoder runs once per slice; its embedding is cached under a key made of a hash of the
slice's voxels, the intensity window and the model's weights hash. The cache is an LRU bounded in
bytes holding fp16 arrays in memory, with an optional disk store (``np.save`` of fp16 arrays under
``core.paths.embedding_cache_dir()``) so a reopened volume needs no re-encoding.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..jobs import JobContext, ensure_context
from .model import MaskPrediction, PromptableModel
from .prompts import Prompts, make_prompts, resolve_window, slice_to_rgb

DEFAULT_CACHE_BYTES = 512 * 1024**2


def slice_key(image: np.ndarray, window: tuple[float, float], model_hash: str) -> str:
    """Cache key of a slice: sha1 over its voxels, shape, dtype, the window and the model hash."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha1(arr.view(np.uint8).reshape(-1))
    digest.update(f"{arr.shape}|{arr.dtype}|{window[0]:.6g}|{window[1]:.6g}|{model_hash}".encode())
    return digest.hexdigest()


class EmbeddingCache:
    """Memory-bounded LRU of fp16 slice embeddings with an optional disk store.

    Parameters
    ----------
    max_bytes
        Memory budget; least recently used embeddings are evicted beyond it.
    disk_dir
        Folder for the disk store (``True`` uses ``embedding_cache_dir()``); ``None`` disables it.
    write_disk
        Store new embeddings on disk too (``False``: only read those stored there, e.g. by ``medadapt batch
        embed``).
    """

    def __init__(
        self, max_bytes: int = DEFAULT_CACHE_BYTES, disk_dir: str | Path | bool | None = None, write_disk: bool = True,
    ) -> None:
        self.max_bytes = int(max_bytes)
        self.write_disk = bool(write_disk)
        if disk_dir is True:
            from ..paths import EMBEDDINGS_FOLDER, cache_dir, embedding_cache_dir

            try:  # reading only: a missing (or unwritable) cache folder is not created, and means no disk store
                disk_dir = embedding_cache_dir() if write_disk else cache_dir() / EMBEDDINGS_FOLDER
            except OSError:
                disk_dir = None
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items or (self._disk_path(key) is not None and self._disk_path(key).is_file())

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._bytes

    def _disk_path(self, key: str) -> Path | None:
        return None if self.disk_dir is None else self.disk_dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The fp16 embedding for ``key`` (memory first, then disk), or ``None``."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        path = self._disk_path(key)
        if path is not None and path.is_file():
            try:
                value = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                if self.write_disk:  # a damaged entry is removed by a cache that writes; a reader leaves it
                    path.unlink(missing_ok=True)
            else:
                self.disk_hits += 1
                self.hits += 1
                self._remember(key, value)
                return value
        self.misses += 1
        return None

    def put(self, key: str, embedding: np.ndarray) -> np.ndarray:
        """Store an embedding (converted to fp16); returns the stored array."""
        value = np.ascontiguousarray(embedding, dtype=np.float16)
        self._remember(key, value)
        path = self._disk_path(key) if self.write_disk else None
        if path is not None and not path.is_file():
            import os
            import tempfile

            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy", dir=path.parent)  # one per writer
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, value, allow_pickle=False)
                os.replace(tmp, path)  # the same key from two workers: the same bytes, the last rename wins
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return value

    def _remember(self, key: str, value: np.ndarray) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key).nbytes
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes

    def clear(self, disk: bool = False) -> None:
        """Empty the memory cache (and the disk store when ``disk``)."""
        self._items.clear()
        self._bytes = 0
        if disk and self.disk_dir is not None and self.disk_dir.is_dir():
            for path in self.disk_dir.glob("*/*.npy"):
                path.unlink(missing_ok=True)


@dataclass
class PrecomputeStats:
    """Outcome of :meth:`SamPredictor.precompute`: slices encoded now and slices already cached."""

    computed: int
    cached: int


class SamPredictor:
    """Prompt -> mask on 2D slices with cached embeddings.

    Parameters
    ----------
    model
        A :class:`PromptableModel`, or a registry name / checkpoint path for ``load_sam``.
    cache
        Embedding cache to use (share one between predictors of the same model); a fresh in-memory
        cache when omitted.
    disk_cache
        When no cache is given: also keep embeddings on disk under ``embedding_cache_dir()``.
    device
        torch device when ``model`` is a name or path.
    """

    def __init__(
        self,
        model: PromptableModel | str | Path = "sam-small",
        cache: EmbeddingCache | None = None,
        disk_cache: bool = False,
        device: Any = None,
    ) -> None:
        if not isinstance(model, PromptableModel):
            from .registry import load_sam

            model = load_sam(model, device=device)
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache(disk_dir=True if disk_cache else None)

    def window_for(self, data: np.ndarray, window: str | Sequence[float] | None = None) -> tuple[float, float]:
        """Resolve a window spec for ``data`` (a volume or slice); see ``prompts.resolve_window``."""
        return resolve_window(data, window)

    def embedding(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """The fp16 ``(C, g, g)`` embedding of a 2D slice, from the cache or freshly encoded."""
        window = resolve_window(image, window)
        key = slice_key(image, window, self.model.model_hash)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        emb = self.model.embed([slice_to_rgb(image, window)])[0]
        return self.cache.put(key, emb)

    def is_cached(self, image: np.ndarray, window: tuple[float, float]) -> bool:
        """Whether the slice's embedding is already cached (memory or disk)."""
        window = resolve_window(image, window)
        return slice_key(image, window, self.model.model_hash) in self.cache

    def predict(
        self,
        image: np.ndarray,
        window: tuple[float, float],
        prompts: Prompts | None = None,
        *,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> MaskPrediction:
        """Segment one 2D slice from prompts.

        Parameters
        ----------
        image
            ``(rows, cols)`` slice in any plane, raw intensities.
        window
            ``(low, high)`` intensity window (or preset name) used to make the 8-bit image.
        prompts
            Ready :class:`Prompts`; or give ``points`` (``(N, 2)`` row, col), ``labels`` (1/0),
            ``box`` (r0, c0, r1, c1) and ``mask_input`` (previous ``MaskPrediction.feedback``).
        multimask
            Three candidates (best by predicted IoU selected); default only for a single click.
        """
        image = np.asarray(image)
        if prompts is None:
            prompts = make_prompts(points, labels, box, mask_input, shape=image.shape[:2])
        emb = self.embedding(image, window)
        return self.model.predict(emb, image.shape[:2], prompts, multimask=multimask)

    def precompute(
        self,
        slices: np.ndarray | Sequence[np.ndarray],
        window: tuple[float, float] | str | None,
        ctx: JobContext | None = None,
        batch_size: int | None = None,
    ) -> PrecomputeStats:
        """Embed many slices (e.g. all slices of a volume along one axis) into the cache.

        Already cached slices are skipped, so a cancelled run resumes where it stopped.

        Parameters
        ----------
        slices
            ``(N, rows, cols)`` array or a sequence of 2D slices.
        window
            One window for all slices (resolved from all of them when a preset or ``None``).
        ctx
            Progress (one step per slice) and cancellation.
        batch_size
            Slices per encoder call; default the model's (:attr:`PromptableModel.batch_size`: batches
            pay off on a GPU, not on a CPU).
        """
        ctx = ensure_context(ctx)
        batch_size = batch_size or self.model.batch_size
        if isinstance(window, str) or window is None:
            window = resolve_window(np.asarray(slices), window)
        total = len(slices)
        todo: list[tuple[str, np.ndarray]] = []
        cached = 0
        for image in slices:
            key = slice_key(image, window, self.model.model_hash)
            if key in self.cache:
                cached += 1
            else:
                todo.append((key, image))
        done = cached
        ctx.progress(done, total, f"{cached} slice embeddings already cached")
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start : start + batch_size]
            embs = self.model.embed([slice_to_rgb(img, window) for _, img in chunk])
            for (key, _), emb in zip(chunk, embs, strict=True):
                self.cache.put(key, emb)
            done += len(chunk)
            ctx.progress(done, total, f"embedded {done}/{total} slices")
        return PrecomputeStats(computed=len(todo), cached=cached)
