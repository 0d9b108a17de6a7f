"""BN-KL test-time adaptation, Tent, the shift score and its CLI, on tiny models and crops of a real case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _data import MISSING_REASON, REAL_DATA, needs_real_data
from torch import nn

from napari_medadapt.core.adapt.tta.methods import adapt, require_batchnorm, resolve_blocks
from napari_medadapt.core.adapt.tta.samples import network_inputs, select_slices
from napari_medadapt.core.adapt.tta.score import (
    classify_shift,
    shift_score,
    shift_score_distribution,
    store_shift_distribution,
)
from napari_medadapt.core.adapt.tta.stats import (
    FeatureStatistics,
    ReferenceStatistics,
    batchnorm_layers,
    bn_kl_loss,
    gaussian_kl,
)
from napari_medadapt.core.cases import load_case
from napari_medadapt.core.errors import ModelError, VolumeError
from napari_medadapt.core.jobs import JobCancelled, JobContext
from napari_medadapt.core.models import build_model, default_architecture, save_model
from napari_medadapt.core.synth.shifts import apply_shift
from napari_medadapt.core.volume import Geometry, Volume

CASE = REAL_DATA / "glioma_tcga_du7294"  # the training case of the bundled model
MODALITIES = ("t1", "t1c", "t2", "flair")


def crop_volume(data: np.ndarray) -> Volume:
    return Volume(data, Geometry.from_display_grid(data.shape[1:]), MODALITIES)


@pytest.fixture(scope="module")
def clean() -> Volume:
    if not CASE.is_dir():
        pytest.skip(MISSING_REASON)
    volume, _ = load_case(CASE)
    data = volume.subset(MODALITIES).data[:, 60:96:6, 88:152, 88:152]
    return crop_volume(np.ascontiguousarray(data))


@pytest.fixture(scope="module")
def shifted(clean: Volume) -> Volume:
    return crop_volume(apply_shift(clean.data, "gamma", gamma=1.8))


def calibrated_model(clean: Volume, normalizer: bool = False, seed: int = 0):
    """A tiny glioma-style model whose BN running statistics are those of the clean crop (as if trained on it)."""
    torch.manual_seed(seed)
    arch = default_architecture(
        2, 4, 4, filters=(8, 16, 32), res_block=False, normalizer={"hidden": 4} if normalizer else False
    )
    model = build_model(arch, modalities=MODALITIES)
    if normalizer:  # a non-identity normaliser, so that it has something to adapt
        for branch in model.normalizer.branches:
            nn.init.normal_(branch[-1].weight, std=0.05)
    _, inputs = network_inputs(model, clean, "all")
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    with torch.no_grad():
        model(inputs)
    for layer in layers:
        layer.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def model(clean: Volume):
    return calibrated_model(clean)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------- formulas
def test_gaussian_kl_matches_closed_form_hand_example():
    # KL(N(1, 2^2) || N(0, 1)) = log(1/2) + (4 + 1) / 2 - 1/2
    value = gaussian_kl(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.0), torch.tensor(1.0))
    assert float(value) == pytest.approx(math.log(0.5) + 2.5 - 0.5)
    assert float(gaussian_kl(torch.tensor(0.3), torch.tensor(2.0), torch.tensor(0.3), torch.tensor(2.0))) == 0.0


def test_bn_kl_loss_sums_channels_and_averages_layers():
    eps = 1e-5
    refs = [
        ReferenceStatistics(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64) - eps, eps),
        ReferenceStatistics(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64) - eps, eps),
    ]
    moments = [
        (torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64) - eps),
        (torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64) - eps),
    ]
    # layer 1: KL(N(1,1)||N(0,1)) = 0.5, KL(N(0,4)||N(0,1)) = log(1/2) + 2 - 0.5; layer 2: KL(N(2,1)||N(0,1)) = 2
    expected = ((0.5 + math.log(0.5) + 1.5) + 2.0) / 2
    assert float(bn_kl_loss(moments, refs)) == pytest.approx(expected)


def test_feature_statistics_are_exact_across_minibatches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)).eval()
    x = torch.randn(7, 2, 9, 11) * 3 + 1
    statistics = FeatureStatistics(batchnorm_layers(net))
    with statistics.recording(), torch.no_grad():
        for chunk in x.split(3):
            net(chunk)
    (mean, var), = statistics.rows().moments()
    features = net[0](x).detach().double()
    np.testing.assert_allclose(mean.numpy(), features.mean(dim=(0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), features.var(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-5)
    # a subset of rows gives the statistics of those samples only
    (sub_mean, _), = statistics.rows().subset([0, 1]).moments()
    np.testing.assert_allclose(sub_mean.numpy(), features[:2].mean(dim=(0, 2, 3)).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- slices
def test_slice_policies(clean: Volume):
    assert select_slices(clean.data, "all").tolist() == list(range(clean.data.shape[1]))
    assert select_slices(clean.data, 4).tolist() == [0, 2, 3, 5]
    assert select_slices(clean.data, [5, 2, 2]).tolist() == [2, 5]
    with pytest.raises(VolumeError):
        select_slices(clean.data, [99])
    empty = np.zeros((4, 3, 8, 8), dtype=np.float32)
    with pytest.raises(VolumeError, match="no foreground"):
        select_slices(empty, None)


def test_empty_volume_is_a_clear_error(model):
    with pytest.raises(VolumeError, match="no foreground"):
        shift_score(model, crop_volume(np.zeros((4, 4, 32, 32), dtype=np.float32)), device="cpu")


# ----------------------------------------------------------------------------------------------- adapt
def test_bn_affine_adapts_only_the_chosen_bn_parameters(model, shifted):
    source = state(model)
    seen_modes: list[bool] = []
    first_bn = model.bn_groups()["input"][0]
    handle = first_bn.register_forward_pre_hook(lambda module, args: seen_modes.append(module.training))
    try:
        result = adapt(model, shifted, "bn_affine", lr=5e-3, iterations=4, device="cpu")
    finally:
        handle.remove()
    assert_same_state(source, state(model))  # the source is untouched
    assert seen_modes and not any(seen_modes)  # BN stayed in eval mode throughout
    adapted = result.model
    for src, new in zip(batchnorm_layers(model), batchnorm_layers(adapted), strict=True):
        assert torch.equal(src.running_mean, new.running_mean)  # running statistics never updated
        assert torch.equal(src.running_var, new.running_var)
    groups = adapted.bn_groups()
    allowed = {id(p) for name in resolve_blocks(adapted, ("input", "down")) for bn in groups[name]
               for p in (bn.weight, bn.bias)}
    changed = [
        (name, id(p)) for (name, p), q in zip(adapted.named_parameters(), model.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed and all(pid in allowed for _, pid in changed)
    assert all(not p.requires_grad for p in adapted.parameters()) and not adapted.training
    # the loss went down on the shifted input, and the minimal-loss iteration was kept
    history = result.loss_history
    assert len(history) == 5 and result.best_iteration == int(np.argmin(history))
    assert result.best_loss < history[0]
    assert result.shift_score_before == pytest.approx(history[0])
    assert result.shift_score_after == pytest.approx(history[result.best_iteration])
    assert shift_score(adapted, shifted, device="cpu") == pytest.approx(result.shift_score_after, rel=1e-5)
    before, after = result.params["foreground_voxels_sampled"]
    assert before >= 0 and after >= 0
    assert result.params["trained_parameters"] == sum(p.numel() for name in resolve_blocks(adapted, ("input", "down"))
                                                      for bn in groups[name] for p in (bn.weight, bn.bias))


def test_blocks_select_other_bn_groups(model, shifted):
    result = adapt(model, shifted, "bn_affine", lr=5e-3, iterations=1, blocks=("bottleneck",), device="cpu")
    changed = {n for (n, p), q in zip(result.model.named_parameters(), model.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert changed and all(n.startswith("network.bottleneck.") for n in changed)
    with pytest.raises(ModelError, match="unknown block"):
        adapt(model, shifted, "bn_affine", blocks=("decoder",), device="cpu")


def test_cancel_midway_leaves_source_untouched(model, shifted):
    source = state(model)

    def cancel_at_second_iteration(done: int, total: int, message: str) -> None:
        if done >= 2:
            ctx.cancel()

    ctx = JobContext(on_progress=cancel_at_second_iteration)
    with pytest.raises(JobCancelled):
        adapt(model, shifted, "bn_affine", lr=5e-3, iterations=10, ctx=ctx, device="cpu")
    assert_same_state(source, state(model))


def test_nan_divergence_stops_and_keeps_the_best_iteration(model, shifted):
    calls = {"n": 0}
    conv = model.network.input_block.conv1.conv

    def poison(module, args, output):  # NaN features from the 5th forward pass on (1st: foreground count)
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 4 else output

    handle = conv.register_forward_hook(poison)
    try:
        result = adapt(model, shifted, "bn_affine", lr=5e-3, iterations=10, batch_size=64, device="cpu")
    finally:
        handle.remove()
    history = result.loss_history
    assert len(history) == 4 and math.isnan(history[-1])
    assert result.warnings and "diverged" in result.warnings[0]
    assert result.best_iteration == int(np.nanargmin(history)) and math.isfinite(result.shift_score_after)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_normalizer_method_trains_only_the_normalizer(clean, shifted):
    model = calibrated_model(clean, normalizer=True)
    result = adapt(model, shifted, "normalizer", lr=1e-3, iterations=4, device="cpu")
    changed = {n for (n, p), q in zip(result.model.named_parameters(), model.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert changed and all(n.startswith("normalizer.") for n in changed)
    assert result.best_loss <= result.loss_history[0]


def test_normalizer_method_needs_a_normalizer(model, shifted):
    with pytest.raises(ModelError, match="no normalizer"):
        adapt(model, shifted, "normalizer", device="cpu")


def test_tent_uses_volume_statistics_and_keeps_the_source(model, shifted):
    source = state(model)
    result = adapt(model, shifted, "tent", lr=1e-3, iterations=3, device="cpu")
    assert_same_state(source, state(model))
    assert result.best_iteration == len(result.loss_history) - 1
    adapted_layers = batchnorm_layers(result.model)
    assert not any(layer.training for layer in adapted_layers)
    assert all(layer.track_running_stats for layer in adapted_layers)
    assert not torch.equal(adapted_layers[0].running_mean, batchnorm_layers(model)[0].running_mean)
    assert math.isfinite(result.shift_score_after)


def test_model_without_batchnorm_is_rejected(model, shifted):
    no_bn = model.copy()
    for block in [no_bn.network.input_block, *no_bn.network.downsamples, no_bn.network.bottleneck,
                  *[up.conv_block for up in no_bn.network.upsamples]]:
        block.norm1, block.norm2 = nn.Identity(), nn.Identity()
    with pytest.raises(ModelError, match="this model has none"):
        require_batchnorm(no_bn, "bn_affine")
    for method in ("bn_affine", "tent"):
        with pytest.raises(ModelError, match="none of bn_affine, normalizer, tent"):
            adapt(no_bn, shifted, method, device="cpu")
    with pytest.raises(ModelError):
        shift_score(no_bn, shifted, device="cpu")


# ----------------------------------------------------------------------------------------------- shift score
def test_shift_score_grows_with_the_shift_and_is_classified(model, clean, shifted, tmp_path):
    score_clean = shift_score(model, clean, slices="all", device="cpu")
    score_shifted = shift_score(model, shifted, slices="all", device="cpu")
    assert score_clean < 1e-3 < score_shifted
    noisy = crop_volume(apply_shift(clean.data, "noise", sigma_fraction=0.05))
    distribution = shift_score_distribution(model, [("clean", clean), ("noisy", noisy)], device="cpu")
    assert distribution["volumes"] == ["clean", "noisy"] and len(distribution["scores"]) == 2
    card_path = save_model(model, tmp_path / "tiny.safetensors")
    store_shift_distribution(card_path, distribution)
    from napari_medadapt.core.models import ModelCard

    card = ModelCard.load(card_path)
    assert classify_shift(0.0, card) == "typical"
    assert classify_shift(distribution["typical_max"] * 1.5, card) == "unusual"
    assert classify_shift(distribution["far_min"] * 1.01, card) == "far"
    assert classify_shift(float("nan"), card) == "far"
    with pytest.raises(ModelError, match="no shift-score distribution"):
        classify_shift(0.1, model.card)


@needs_real_data
def test_shift_score_cli(model, tmp_path):
    from napari_medadapt.cli import main

    card_path = save_model(model, tmp_path / "tiny.safetensors")
    images = [f"{m}={CASE / f'{m}.nii.gz'}" for m in MODALITIES]
    out = tmp_path / "score.json"
    args = ["shift-score", "--model", str(card_path), "--slices", "2", "--json", str(out), "--device", "cpu"]
    for spec in images:
        args += ["--image", spec]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["shift_score"] > 0 and report["category"] is None and report["slices"] == 2
    provenance = report["provenance"]
    assert provenance["method"] == "shift-score" and provenance["settings"] == {"slices": 2}
    assert provenance["model"]["sha256"] and provenance["inputs"]["flair"]["sha256"] and provenance["device"] == "cpu"
    assert main(["shift-score", "--model", str(card_path), "--slices", "zero", "--image", images[0]]) == 2


def test_bench_summary_recovery_and_correlation():
    from napari_medadapt.bench._tta_report import summarise

    def record(name, score, wt_before, wt_after=None):
        methods = {} if wt_after is None else {
            "bn_affine": {"after": {"WT": wt_after, "TC": 0.0, "ET": 0.0}, "seconds": 10.0}}
        return {"volume": name, "shift_score": score, "before": {"WT": wt_before, "TC": 0.0, "ET": 0.0},
                "methods": methods}

    records = [record("clean", 0.1, 0.80, 0.795), record("a", 0.5, 0.60, 0.75), record("b", 0.9, 0.40, 0.50),
               record("c", 0.7, 0.50)]
    summary = summarise(records, ["bn_affine"])
    entry = summary["methods"]["bn_affine"]
    assert entry["adapted_shifted_volumes"] == 2
    assert entry["mean_wt_lost"] == pytest.approx(0.3) and entry["mean_wt_recovered"] == pytest.approx(0.125)
    assert entry["recovery_fraction"] == pytest.approx(0.125 / 0.3)
    assert summary["spearman_score_vs_wt"]["rho"] == pytest.approx(-1.0)
    assert summary["goals"] == {"clean_no_loss": True, "default_recovers_half": False, "score_correlates": True,
                                "default_within_60s": True}


def test_drastic_foreground_change_is_flagged():
    from napari_medadapt.core.adapt.tta.methods import foreground_change_warning

    assert foreground_change_warning(1000, 900) is None
    assert foreground_change_warning(10, 0) is None  # too few voxels to judge
    assert "collapsed" in foreground_change_warning(1000, 0)
    assert "1000 to 6000" in foreground_change_warning(1000, 6000)
    assert foreground_change_warning(0, 400) is not None


def test_whole_volume_collapse_is_flagged():
    from napari_medadapt.core.adapt.tta.methods import segmentation_change_warning

    before = np.zeros((4, 32, 32), np.uint8)
    before[1:3, 8:20, 8:20] = 2  # 288 tumour voxels
    assert segmentation_change_warning(before, before.copy()) is None
    message = segmentation_change_warning(before, np.zeros_like(before))
    assert "in the whole volume from 288 to 0 voxels" in message
