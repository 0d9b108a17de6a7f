"""Whole-volume inference with tiny models on a crop of a real glioma volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import SAMPLE_CASE

from napari_medadapt.core.cases import load_case
from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.inference import predict_volume
from napari_medadapt.core.jobs import JobCancelled, JobContext
from napari_medadapt.core.model_input import prepare_input, prepare_model_input
from napari_medadapt.core.models import ModelCard, build_model, default_architecture
from napari_medadapt.core.postprocess import keep_largest_component
from napari_medadapt.core.volume import Geometry, Volume

MODALITIES = ["t1", "t1c", "t2", "flair"]


@pytest.fixture(scope="module")
def crop() -> Volume:
    volume, _ = load_case(SAMPLE_CASE)
    data = volume.data[:, 100:110, 64:112, 72:120]
    return Volume(data, Geometry.from_display_grid(data.shape[1:], volume.geometry.spacing), volume.channels)


def tiny_model(dims: int = 2, voxel_size=None, **arch) -> torch.nn.Module:
    torch.manual_seed(0)
    architecture = default_architecture(dims, 4, 4, filters=(4, 8, 16))
    architecture.update(arch)
    card = ModelCard(
        name="tiny",
        architecture=architecture,
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        supported_subsets=[MODALITIES, ["t1c", "t2", "flair"]],
        voxel_size=voxel_size,
    )
    model = build_model(card)
    with torch.no_grad():  # non-trivial BN statistics so classes differ
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_2d_prediction_matches_direct_forward(crop):
    model = tiny_model()
    steps = []
    ctx = JobContext(on_progress=lambda d, t, m: steps.append((d, t)))
    pred = predict_volume(model, crop, ctx=ctx, device="cpu", batch_size=4)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert pred.labels.shape == crop.data.shape[1:] and pred.labels.dtype == np.uint8
    assert set(np.unique(pred.labels)) <= {0, 1, 2, 4}
    assert pred.probabilities.shape == (4, *crop.data.shape[1:])
    np.testing.assert_allclose(pred.probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)
    prepared = prepare_input(model, crop)
    with torch.no_grad():
        logits = model(torch.from_numpy(prepared).permute(1, 0, 2, 3))
    expected = np.array([0, 1, 2, 4])[logits.argmax(1).numpy()]
    np.testing.assert_array_equal(pred.labels, expected)
    np.testing.assert_allclose(pred.confidence, torch.softmax(logits, 1).max(1).values.numpy(), atol=1e-5)
    for label_id, ml in pred.volumes_ml.items():
        assert ml == pytest.approx((pred.labels == label_id).sum() / 1000.0)
    assert "volume mL" in pred.format_volumes()


def test_cancel_stops_between_batches(crop):
    def cancel_after_first(done, total, message):
        ctx.cancel()

    ctx = JobContext(on_progress=cancel_after_first)
    with pytest.raises(JobCancelled):
        predict_volume(tiny_model(), crop, ctx=ctx, device="cpu", batch_size=2)


def test_modalities_missing_optional_renamed_and_nan(crop):
    model = tiny_model()
    without_t1 = crop.subset(["t1c", "t2", "flair"])
    pred = predict_volume(model, without_t1, device="cpu")
    assert pred.missing == ("t1",) and any("filled with zeros" in n for n in pred.notes)
    with pytest.raises(ModelError, match="needs FLAIR; got t1, t1c, t2"):
        predict_volume(model, crop.subset(["t1", "t1c", "t2"]), device="cpu")
    renamed = Volume(crop.data.copy(), crop.geometry, ("a", "b", "c", "d"))
    mapping = dict(zip(MODALITIES, "abcd", strict=True))
    ref = predict_volume(model, crop, device="cpu")
    np.testing.assert_array_equal(predict_volume(model, renamed, device="cpu", modalities=mapping).labels, ref.labels)
    with_nan = Volume(crop.data.copy(), crop.geometry, crop.channels)
    with_nan.data[3, 0, :5, :5] = np.nan
    pred = predict_volume(model, with_nan, device="cpu")
    assert any("NaN" in n for n in pred.notes)
    assert np.isfinite(pred.confidence).all()


def test_resampling_to_model_voxel_size_returns_source_grid(crop):
    model = tiny_model(voxel_size=[None, 2.0, 2.0])
    prepared = prepare_model_input(model, crop)
    assert prepared.data.shape[1:] == (10, 24, 24) and prepared.resampled
    assert prepare_input(model, crop, resample=False).shape == crop.data.shape
    pred = predict_volume(model, crop, device="cpu", return_probabilities=False)
    assert pred.labels.shape == crop.data.shape[1:] and pred.probabilities is None
    assert any("resampled" in n for n in pred.notes)


def test_3d_sliding_window(crop):
    model = tiny_model(dims=3, roi_size=[8, 32, 32])
    steps = []
    pred = predict_volume(
        model, crop, device="cpu", batch_size=2, ctx=JobContext(on_progress=lambda d, t, m: steps.append((d, t)))
    )
    assert pred.labels.shape == crop.data.shape[1:]
    assert len(steps) == steps[-1][1] > 1 and steps[-1][0] == steps[-1][1]
    np.testing.assert_allclose(pred.probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_crop_to_input_skips_empty_border(crop, dims):
    data = np.zeros((4, 10, 96, 96), np.float32)
    data[:, :, 20:68, 30:78] = crop.data
    padded = Volume(data, Geometry.from_display_grid(data.shape[1:], (1.0, 1.0, 1.0)), crop.channels)
    model = tiny_model(dims=dims, roi_size=[16, 128, 128])  # one window: no tiling differences
    fast = predict_volume(model, padded, device="cpu")
    full = predict_volume(model, padded, device="cpu", crop_to_input=False)
    outside = np.ones(data.shape[1:], bool)
    outside[:, 20 - 20 : 68 + 16, 30 - 20 : 78 + 16] = False  # margin 16, start rounded to the stride 4
    assert (fast.labels[outside] == 0).all() and (fast.confidence[outside] == 1.0).all()
    assert (fast.probabilities[0][outside] == 1).all()
    inside = fast.labels[:, 20:68, 30:78] == full.labels[:, 20:68, 30:78]
    assert inside.mean() > 0.97


def test_keep_largest_component_removes_islands_and_keeps_label_ids():
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:4, 2:9, 2:9] = 2
    labels[2, 4:6, 4:6] = 4  # inside the big region: kept with its own id
    labels[4:6, 15:18, 15:18] = 1  # a separate island
    cleaned, removed = keep_largest_component(labels)
    assert removed == 2 * 3 * 3
    assert (cleaned[4:6, 15:18, 15:18] == 0).all()
    np.testing.assert_array_equal(cleaned[:4], labels[:4])
    assert keep_largest_component(np.zeros((2, 3, 3), np.uint8))[1] == 0


def test_card_postprocess_applies_unless_switched_off(crop):
    model = tiny_model()
    plain = predict_volume(model, crop, device="cpu", largest_component=False)
    assert plain.labels.any()
    model.card.postprocess = {"largest_component": True}
    cleaned = predict_volume(model, crop, device="cpu")
    expected, removed = keep_largest_component(plain.labels)
    np.testing.assert_array_equal(cleaned.labels, expected)
    assert any("largest connected component" in note for note in cleaned.notes) == (removed > 0)
    switched_off = predict_volume(model, crop, device="cpu", largest_component=False)
    np.testing.assert_array_equal(switched_off.labels, plain.labels)


def test_card_rejects_unknown_postprocess_step():
    architecture = default_architecture(2, 1, 2, filters=(4, 8, 16))
    with pytest.raises(ModelError, match="postprocess.fill_holes: unknown setting"):
        ModelCard(name="x", architecture=architecture, modalities=["t1"], labels=[0, 1], postprocess={"fill_holes": True})
