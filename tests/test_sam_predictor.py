"""Predictor: embedding cache hit/miss, disk store, precompute with cancel/resume, prompt validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medadapt.core.jobs import JobCancelled, JobContext
from napari_medadapt.core.sam import (
    EmbeddingCache,
    PromptError,
    SamPredictor,
    load_sam,
    make_prompts,
    resolve_window,
    slice_key,
)


@pytest.fixture(scope="module")
def model():
    return load_sam("sam-small", device="cpu")


def _slices(n: int = 3, shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(100, 20, size=(n, *shape)).astype(np.float32)


def test_cache_hit_and_miss(model) -> None:
    predictor = SamPredictor(model)
    image = _slices(1)[0]
    window = resolve_window(image, None)
    first = predictor.predict(image, window, points=[[30, 40]])
    assert (predictor.cache.misses, predictor.cache.hits) == (1, 0)
    assert first.masks.shape == (3, 60, 80) and first.mask.shape == (60, 80)  # one click: multimask
    assert first.best == int(np.argmax(first.scores))
    second = predictor.predict(image, window, points=[[30, 40], [5, 5]], labels=[1, 0], mask_input=first.feedback)
    assert (predictor.cache.misses, predictor.cache.hits) == (1, 1)
    assert second.masks.shape == (1, 60, 80)
    other_window = (window[0], window[1] + 10)
    assert slice_key(image, other_window, model.model_hash) != slice_key(image, window, model.model_hash)
    predictor.predict(image, other_window, box=(10, 10, 40, 60))
    assert predictor.cache.misses == 2


def test_lru_is_bounded_in_bytes() -> None:
    cache = EmbeddingCache(max_bytes=3 * 100 * 2)
    for k in range(5):
        cache.put(f"k{k}", np.zeros(100, np.float32))
    assert len(cache) == 3 and cache.nbytes <= 600
    assert cache.get("k0") is None and cache.get("k4") is not None
    assert cache.get("k4").dtype == np.float16


def test_disk_store_survives_a_new_cache(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path))
    slices = _slices(3)
    window = (50.0, 150.0)
    first = SamPredictor(model, disk_cache=True)
    stats = first.precompute(slices, window)
    assert (stats.computed, stats.cached) == (3, 0)
    assert len(list((tmp_path / "embeddings").glob("*/*.npy"))) == 3
    second = SamPredictor(model, disk_cache=True)
    assert second.is_cached(slices[1], window)
    emb = second.embedding(slices[1], window)
    assert second.cache.disk_hits == 1 and emb.dtype == np.float16
    np.testing.assert_array_equal(emb, first.embedding(slices[1], window))


def test_precompute_cancel_then_resume(model) -> None:
    predictor = SamPredictor(model)
    slices = _slices(4, (40, 40))
    seen: list[int] = []
    ctx = JobContext(on_progress=lambda done, total, msg: seen.append(done))

    def cancel_after_first_batch(done: int, total: int, msg: str) -> None:
        seen.append(done)
        if done >= 2:
            ctx.cancel()

    ctx._on_progress = cancel_after_first_batch
    with pytest.raises(JobCancelled):
        predictor.precompute(slices, (0.0, 200.0), ctx=ctx, batch_size=2)
    assert len(predictor.cache) == 2
    stats = predictor.precompute(slices, (0.0, 200.0), batch_size=2)
    assert (stats.computed, stats.cached) == (2, 2)


def test_prompts_outside_the_slice_are_clear_errors(model) -> None:
    predictor = SamPredictor(model)
    image = _slices(1, (50, 70))[0]
    with pytest.raises(PromptError, match="outside the slice"):
        predictor.predict(image, (0.0, 200.0), points=[[55, 10]])
    with pytest.raises(PromptError, match="outside the slice"):
        predictor.predict(image, (0.0, 200.0), box=(60, 80, 90, 100))
    with pytest.raises(PromptError, match="one label"):
        make_prompts(points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(PromptError, match="2D slice"):
        predictor.predict(np.zeros((2, 3, 4)), (0.0, 1.0), points=[[1, 1]])
    assert make_prompts(box=(9, 8, 1, 2)).box == (1, 2, 9, 8)
    assert make_prompts(points=[[1, 2]], labels=[0]).negative_only


def test_neighbour_slices_follow_the_scroll_direction() -> None:
    from napari_medadapt.core.sam.workspace import neighbour_slices

    assert neighbour_slices(5, 20, 1) == [6, 7, 4]
    assert neighbour_slices(5, 20, -1) == [4, 3, 6]
    assert neighbour_slices(5, 20, 0) == [6, 4, 7, 3]
    assert neighbour_slices(0, 3, -1) == [1] and neighbour_slices(2, 3, 1) == [1]
