"""TTS keypoint feature muting: scoring, masks, hooks, per-slice logic (SliceTTS), classification, CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _data import SAMPLE_CASE

from napari_medadapt.core.adapt.tts.classify import tts_classify
from napari_medadapt.core.adapt.tts.engine import background_channels, keep_count
from napari_medadapt.core.adapt.tts.run import (
    KeypointError,
    TTSWarning,
    lost_target_message,
    tts,
    validate_keypoints,
)
from napari_medadapt.core.adapt.tts.select import score_channels, select_channels
from napari_medadapt.core.adapt.tts.slices import SliceTTS
from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.models import build_model, default_architecture


def tiny_model(dims: int = 2, seed: int = 0, in_channels: int = 2):
    torch.manual_seed(seed)
    model = build_model(default_architecture(dims, in_channels, 2, filters=(8, 16, 32), res_block=False))
    model.eval()
    return model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 5, 24, 28)).astype(np.float32)


def test_score_formula_hand_example():
    features = np.zeros((3, 4, 4))
    features[0] = 1.0  # same everywhere
    features[1, 1, 1] = 5.0  # fires on the positive only
    features[2, 2, 2] = 4.0  # fires on the first negative only
    features[2, 3, 3] = 2.0
    pos = np.array([[1, 1]])
    neg = np.array([[2, 2], [3, 3]])
    scores = score_channels(features, pos, neg, alpha=0.4)
    # S_c = 0.4 * S_pos - 0.6 * S_neg: channel 0: 0.4*1 - 0.6*2; channel 1: 0.4*5; channel 2: -0.6*6
    np.testing.assert_allclose(scores, [0.4 - 1.2, 2.0, -3.6])
    assert select_channels(scores, 0.10).tolist() == [1]
    assert select_channels(scores, 0.5).tolist() == [1, 0]
    # an excluded (background) channel is no candidate; the count still follows all C channels
    assert select_channels(scores, 0.5, exclude=np.array([1])).tolist() == [0, 2]
    only_negatives = score_channels(features, np.zeros((0, 2)), neg, alpha=0.2)
    np.testing.assert_allclose(only_negatives, [-0.8 * 2, 0.0, -0.8 * 6])


def test_lost_target_warning():
    baseline = np.zeros((4, 4), dtype=int)
    baseline[1, 1] = 1
    assert "no longer segmented as target" in lost_target_message(
        np.zeros_like(baseline), baseline, np.array([[1, 1]])
    )
    assert lost_target_message(baseline, baseline, np.array([[1, 1]])) is None
    assert lost_target_message(np.zeros_like(baseline), baseline, np.array([[2, 2]])) is None


def test_keep_count_rounds_up_and_keeps_one():
    assert keep_count(16, 0.10) == 2
    assert keep_count(30, 0.10) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert keep_count(3, 0.05) == 1
    assert keep_count(8, 1.0) == 8


def test_keypoints_outside_name_the_point():
    shape = (5, 24, 28)
    assert validate_keypoints([[1.4, 2.6, 3.0]], shape, "positive").tolist() == [[1, 3, 3]]
    with pytest.raises(KeypointError, match=r"negative keypoint #2 \(z=1, y=30, x=3\)"):
        validate_keypoints([[0, 0, 0], [1, 30, 3]], shape, "negative")
    with pytest.raises(KeypointError, match="at least one"):
        tts(tiny_model(), np.zeros((2, 5, 24, 28), np.float32), [], [])


@pytest.mark.parametrize(
    "layer, channels, keep, expected", [("decoder", 8, 0.25, 2), ("bottleneck", 32, 0.10, 4)]
)
def test_kept_channel_count_and_weights_unchanged(image, layer, channels, keep, expected):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = tts(model, image, [[2, 5, 5]], [[2, 20, 20]], keep_fraction=keep, layer=layer)
    assert result.scores.shape == (1, channels)
    assert len(result.kept_channels[0]) == expected
    assert result.labels.shape == image.shape[1:]
    assert result.probabilities.shape == (2, *image.shape[1:])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("layer", ["decoder", "bottleneck"])
def test_keeping_every_channel_reproduces_the_baseline(image, layer):
    result = tts(tiny_model(), image, [[2, 5, 5]], [[2, 20, 20]], keep_fraction=1.0, layer=layer)
    np.testing.assert_allclose(result.probabilities, result.baseline_probabilities, atol=1e-5)


@pytest.mark.parametrize("keep_background", [True, False])
def test_decoder_muting_is_the_head_on_masked_features(image, keep_background):
    model = tiny_model()
    result = tts(model, image, [[2, 5, 5]], [[2, 20, 20]], keep_fraction=0.25, keep_background=keep_background)
    selection = result.selections[0]
    kept = np.union1d(selection.kept, selection.background)
    with torch.no_grad():
        decoder = model.forward_features(torch.from_numpy(image[:, 2][None])).features["decoder"]
        mask = torch.zeros(decoder.shape[1])
        mask[torch.from_numpy(kept)] = 1
        expected = torch.softmax(model.head(decoder * mask[None, :, None, None]), dim=1)[0].numpy()
    np.testing.assert_array_equal(np.flatnonzero(selection.mask), kept)
    np.testing.assert_allclose(result.probabilities[:, 2], expected, atol=1e-5)
    assert not np.allclose(result.probabilities[:, 2], result.baseline_probabilities[:, 2])
    if keep_background:
        assert np.array_equal(selection.background, background_channels(model, "decoder"))
        assert not np.isin(selection.kept, selection.background).any()
    else:
        assert selection.background.size == 0


def test_background_channels_follow_the_head_weights():
    model = tiny_model()
    weight = model.head.conv.conv.weight
    with torch.no_grad():
        weight[:] = 0.0
        weight[0, [1, 4, 6], 0, 0] = 1.0  # these channels vote for class 0 (background)
        weight[1, [0, 2, 3, 5, 7], 0, 0] = 1.0
    assert background_channels(model, "decoder").tolist() == [1, 4, 6]
    assert background_channels(model, "bottleneck").size == 0  # no linear head after that tap
    # they stay on with keep_background, whatever their score
    image = np.ones((2, 3, 16, 16), np.float32)
    result = tts(model, image, [[1, 5, 5]], [[1, 12, 12]], keep_fraction=0.1)
    assert result.selections[0].mask[[1, 4, 6]].tolist() == [1.0, 1.0, 1.0]
    assert result.selections[0].mask.sum() == 4  # 1 scored channel (10 % of 8, rounded up) + 3 background


def test_per_slice_versus_whole_volume_mask(image):
    model = tiny_model()
    pos = [[1, 4, 4], [3, 10, 12]]
    neg = [[1, 20, 20], [3, 2, 25]]
    per = tts(model, image, pos, neg, keep_fraction=0.25, per_slice=True)
    assert per.slice_selection.tolist() == [-1, 0, -1, 1, -1]
    for z in (0, 2, 4):
        np.testing.assert_array_equal(per.labels[z], per.baseline_labels[z])
        np.testing.assert_array_equal(per.attention_after[z], per.attention_before[z])
    assert per.selection_for_slice(3).slices == (3,)
    whole = tts(model, image, pos, neg, keep_fraction=0.25, per_slice=False)
    assert whole.slice_selection.tolist() == [0] * 5 and len(whole.selections) == 1
    # scores are sums over keypoints, so the whole-volume score is the sum of the per-slice scores
    np.testing.assert_allclose(whole.scores[0], per.scores.sum(axis=0), rtol=1e-5)
    assert not np.array_equal(whole.labels[0], whole.baseline_labels[0])


def test_one_sided_keypoints_warn_and_still_mute(image):
    model = tiny_model()
    with pytest.warns(TTSWarning, match="only negative"):
        result = tts(model, image, [], [[2, 3, 3]], keep_fraction=0.25)
    assert result.selections[0].n_positive == 0 and len(result.kept_channels[0]) == 2
    with pytest.warns(TTSWarning, match="only positive"):
        tts(model, image, [[2, 3, 3]], None)


def test_missing_tap_and_bad_settings(image):
    model = tiny_model()
    with pytest.raises(ModelError, match="no feature tap 'encoder9'"):
        tts(model, image, [[2, 3, 3]], [[2, 9, 9]], layer="encoder9")
    with pytest.raises(Exception, match="alpha"):
        tts(model, image, [[2, 3, 3]], [[2, 9, 9]], alpha=1.5)


def test_slice_tts_matches_tts_and_reuses_features(image):
    model = tiny_model()
    pos, neg = [[2, 5, 5], [1, 3, 3]], [[2, 20, 20]]
    full = tts(model, image, pos, neg, keep_fraction=0.25)
    slice_tts = SliceTTS(model, image)
    out = slice_tts.predict_slice(2, pos, neg, keep_fraction=0.25)
    np.testing.assert_allclose(out.probabilities, full.probabilities[:, 2], atol=1e-5)
    np.testing.assert_array_equal(out.selection.kept, full.selection_for_slice(2).kept)
    assert slice_tts.cached_slices == [2]
    empty = slice_tts.predict_slice(4, pos, neg)
    assert empty.selection is None
    np.testing.assert_array_equal(empty.labels, empty.baseline_labels)
    with pytest.raises(ModelError, match="2D model"):
        SliceTTS(tiny_model(dims=3), image)


def test_3d_model_and_flip_replicas(image):
    model = tiny_model(dims=3)
    result = tts(model, image, [[2, 5, 5]], [[3, 20, 20]], keep_fraction=0.25, tta_flips=True)
    assert result.selections[0].slices is None
    assert result.slice_selection.tolist() == [0] * 5
    assert result.probabilities.shape == (2, *image.shape[1:])
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)


def _bordered_volume():
    """Two channels of noise inside an all-zero border (like the air around a skull-stripped scan)."""
    from napari_medadapt.core.volume import Geometry, Volume

    data = np.zeros((2, 6, 64, 60), np.float32)
    data[:, 1:5, 12:44, 20:52] = np.random.default_rng(3).normal(size=(2, 4, 32, 32))
    return Volume(data, Geometry.from_display_grid(data.shape[1:], (1.0, 1.0, 1.0)), ("ch0", "ch1"))


@pytest.mark.parametrize("dims", [2, 3])
def test_tts_runs_where_segment_volume_runs(dims):
    """TTS is a hook on Segment volume's path: same crop, windows and post-processing; unmuted = Segment."""
    from napari_medadapt.core.inference import predict_volume

    model, volume = tiny_model(dims=dims), _bordered_volume()
    model.card.architecture["roi_size"] = [4, 32, 32]  # several 3D windows over the crop
    plain = predict_volume(model, volume, device="cpu", probability_dtype=np.float32)
    pos, neg = [[2, 20, 30]], [[3, 40, 45]]
    # keep_background=False: with this random model most decoder channels favour the background
    result = tts(model, volume, pos, neg, keep_fraction=0.25, keep_background=False, warn=False)
    np.testing.assert_array_equal(result.baseline_labels, plain.labels)
    np.testing.assert_allclose(result.baseline_probabilities, plain.probabilities, atol=1e-6)
    outside = np.ones(volume.data.shape[1:], bool)
    outside[:, 12 - 12 : 44 + 16, 20 - 20 : 52 + 8] = False  # crop margin 16, starts on the stride 4
    assert (result.probabilities[0][outside] == 1).all() and (result.attention_before[outside] == 0).all()
    everything = tts(model, volume, pos, neg, keep_fraction=1.0, keep_background=False, warn=False)
    np.testing.assert_allclose(everything.probabilities, plain.probabilities, atol=1e-5)
    muted_slices = [2, 3] if dims == 2 else list(range(6))
    changed = [z for z in range(6) if not np.allclose(result.probabilities[:, z], plain.probabilities[:, z])]
    assert set(changed) <= set(muted_slices) and changed


def test_keypoints_in_the_empty_border_are_not_used():
    model, volume = tiny_model(), _bordered_volume()
    with pytest.warns(TTSWarning, match="1 keypoint.*empty background"):
        result = tts(model, volume, [[2, 20, 30]], [[2, 2, 2]], keep_fraction=0.25)
    assert result.selections[0].n_negative == 0
    with pytest.raises(KeypointError, match="every keypoint lies in the empty background"):
        tts(model, volume, [[0, 20, 30]], [[2, 2, 2]], warn=False)
    slice_tts = SliceTTS(model, volume)
    out = slice_tts.predict_slice(2, [[2, 20, 30]], [[2, 2, 2]], keep_fraction=0.25, warn=False)
    assert out.selection.n_negative == 0 and "empty background" in out.warnings[0]
    np.testing.assert_allclose(out.probabilities, result.probabilities[:, 2], atol=1e-5)
    outside_crop = slice_tts.predict_slice(0, [[0, 20, 30]], [], warn=False)  # an empty end slice
    assert outside_crop.selection is None and (outside_crop.labels == 0).all()
    assert "1 keypoint(s) lie in the empty background" in outside_crop.warnings[0]


def test_live_tts_recomputes_only_what_changed():
    from napari_medadapt.core.adapt.tts.live import LiveTTS
    from napari_medadapt.core.inference import predict_volume

    model, volume = tiny_model(), _bordered_volume()
    live = LiveTTS(model, volume, predict_volume(model, volume, return_probabilities=False))
    positives, negatives = [[0, 20, 30], [2, 20, 30]], [[2, 40, 45]]
    first = live.apply(positives, negatives, keep_fraction=0.25)
    assert first.slices == [0, 2] and sorted(first.selections) == [2]
    assert any("empty background" in w for w in first.warnings)  # slice 0 holds no image
    assert live.apply(positives, negatives, keep_fraction=0.25).slices == []  # nothing changed
    assert live.apply(positives, negatives, keep_fraction=0.5).slices == [0, 2]  # a setting changed
    assert live.apply(positives[:1], negatives, keep_fraction=0.5).slices == [2]


def test_slice_tts_equals_segment_volume():
    from napari_medadapt.core.inference import predict_volume

    model, volume = tiny_model(), _bordered_volume()
    plain = predict_volume(model, volume, device="cpu", probability_dtype=np.float32, largest_component=False)
    slice_tts = SliceTTS(model, volume)
    for z in range(6):
        out = slice_tts.predict_slice(z, [], [])
        np.testing.assert_allclose(out.baseline_probabilities, plain.probabilities[:, z], atol=1e-5)


class TinyCNN(torch.nn.Module):
    """Channel 0 of the image is the lesion, channel 1 an artifact; features copy them (plus 2 mixes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(2, 4, 1, bias=False)
        self.classifier = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.features.weight[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])[
                :, :, None, None
            ]
            self.classifier.weight[:] = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 1.0, 1.0]])
            self.classifier.bias[:] = torch.tensor([1.0, 0.0])

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3)))


def test_tts_classify_mutes_the_artifact_channel():
    net = TinyCNN()
    image = np.zeros((2, 16, 16), np.float32)
    image[1, 10:14, 10:14] = 4.0  # a bright artifact, no lesion
    image[0, 2:4, 2:4] = 1.0  # a faint lesion
    result = tts_classify(net.features, net.head, image, [[3, 3]], [[12, 12]], alpha=0.2, keep_fraction=0.25)
    assert result.baseline_label == 1  # the artifact drives the class
    assert result.selection.kept.tolist() == [0]  # only the lesion channel survives
    assert result.label == 0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flipped = tts_classify(
        net.features, net.head, image, [[3, 3]], [[12, 12]], keep_fraction=1.0, tta_flips=True
    )
    np.testing.assert_allclose(flipped.probabilities, flipped.baseline_probabilities, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def crop_case(tmp_path_factory) -> dict[str, Path]:
    """t1c and flair crops of the real test case around its tumour, written as NIfTI with their affine."""
    out = tmp_path_factory.mktemp("tts_case")
    paths = {}
    for modality in ("t1c", "flair"):
        image = nib.load(str(SAMPLE_CASE / f"{modality}.nii.gz"))
        crop = image.slicer[100:140, 90:126, 80:84]
        paths[modality] = out / f"{modality}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(crop.dataobj), crop.affine, crop.header), str(paths[modality]))
    return paths


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory, save_tiny_model) -> Path:
    from napari_medadapt.core.models import ModelCard

    card = ModelCard(
        name="tiny_tts",
        architecture=default_architecture(2, 2, 2, filters=(8, 16, 32), res_block=False),
        modalities=["t1c", "flair"],
        labels=[0, 1],
        voxel_size=[None, 2.0, 2.0],
    )
    return save_tiny_model(tmp_path_factory.mktemp("tts_model"), card, seed=1)


def _live_expected(model, volume, positives, negatives, **settings):
    """What the dock and the CLI compute: "before" = predict_volume (post-processed), each keypoint slice
    replaced by its muted prediction from cached features."""
    from napari_medadapt.core.adapt.tts.slices import SliceTTS
    from napari_medadapt.core.inference import predict_volume

    before = predict_volume(model, volume, return_probabilities=False).labels
    after = before.copy()
    slice_tts = SliceTTS(model, volume)
    for z in sorted({int(p[0]) for p in (*positives, *negatives)}):
        on_slice = [points[points[:, 0] == z] for points in (positives, negatives)]
        after[z] = slice_tts.predict_slice(z, *on_slice, warn=False, **settings).labels
    return before, after


def test_live_tts_mutes_only_keypoint_slices_on_top_of_the_ordinary_segmentation(crop_case, tiny_model_file):
    from napari_medadapt.core.adapt.tts.live import TTSWorkspace
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.models import load_model
    from napari_medadapt.core.session import ModelSession

    volume, _ = load_case(crop_case)
    model = load_model(tiny_model_file)
    positives, negatives = np.array([[2, 20, 18]]), np.array([[2, 5, 30], [1, 30, 6]])
    session = ModelSession(device="cpu")
    workspace = TTSWorkspace(session)
    result = workspace.apply(
        str(tiny_model_file), "key", volume, "decoder", positives, negatives, 0.2, 0.25, True, True, ctx=None
    )
    before, after = _live_expected(model, volume, positives, negatives, alpha=0.2, keep_fraction=0.25)
    np.testing.assert_array_equal(result.before, before)
    np.testing.assert_array_equal(result.after, after)
    assert result.slices == [1, 2] and sorted(result.selections) == [1, 2]
    assert workspace.live(str(tiny_model_file), "key", volume, "decoder").slices.cached_slices == [1, 2]
    # removing the keypoints of slice 1 returns it to "before"; nothing else is recomputed
    live = workspace.live(str(tiny_model_file), "key", volume, "decoder")
    again = live.apply(positives, negatives[:1], 0.2, 0.25)
    assert again.slices == [1] and sorted(again.selections) == [2]  # only the slice whose keypoints changed
    np.testing.assert_array_equal(again.after[1], before[1])
    assert session.loads == 1 and session.hits == 0


def test_live_tts_post_processes_after_as_the_card_says(crop_case, tiny_model_file):
    from napari_medadapt.core.adapt.tts.live import LiveTTS
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.inference import predict_volume
    from napari_medadapt.core.models import load_model
    from napari_medadapt.core.postprocess import keep_largest_component

    volume, _ = load_case(crop_case)
    model = load_model(tiny_model_file)
    model.card.postprocess = {"largest_component": True}
    before = predict_volume(model, volume, return_probabilities=False)
    live = LiveTTS(model, volume, before)
    result = live.update([2], np.array([[2, 20, 18]]), np.array([[2, 5, 30]]), alpha=0.2, keep_fraction=0.25)
    raw = before.labels.copy()
    raw[2] = live.slices.predict_slice(2, [[2, 20, 18]], [[2, 5, 30]], 0.2, 0.25, warn=False).labels
    np.testing.assert_array_equal(result.after, keep_largest_component(raw)[0])


def test_cli_writes_muted_labels_on_the_source_grid(crop_case, tiny_model_file, tmp_path, capsys):
    from napari_medadapt.cli import main
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.models import load_model

    points = tmp_path / "points.csv"
    points.write_text("i,j,k,kind\n20,18,2,positive\n5,30,2,negative\n30,6,1,negative\n")
    out = tmp_path / "muted.nii.gz"
    args = ["tts", "--model", str(tiny_model_file), "--image", f"t1c={crop_case['t1c']}",
            "--image", f"flair={crop_case['flair']}", "--points", str(points), "--alpha", "0.2", "--keep", "0.25",
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    written = nib.load(str(out))
    assert written.shape == (40, 36, 4)
    np.testing.assert_allclose(written.affine, nib.load(str(crop_case["t1c"])).affine)
    volume, _ = load_case(crop_case)
    geometry = volume.geometry
    positives = geometry.source_index_to_display(np.array([[20, 18, 2]]))
    negatives = geometry.source_index_to_display(np.array([[5, 30, 2], [30, 6, 1]]))
    model = load_model(tiny_model_file)
    _before, expected = _live_expected(model, volume, positives, negatives, alpha=0.2, keep_fraction=0.25)
    np.testing.assert_array_equal(load_labels(out, geometry), expected)
    assert expected.shape == geometry.display_shape  # resampled to 2 mm and back
    assert "background channels never muted" in capsys.readouterr().err

    assert main([*args, "--mute-background"]) == 0  # the published rule
    _before, published = _live_expected(
        model, volume, positives, negatives, alpha=0.2, keep_fraction=0.25, keep_background=False
    )
    np.testing.assert_array_equal(load_labels(out, geometry), published)
    assert "background channels never muted" not in capsys.readouterr().err

    assert main([*args, "--whole-volume"]) == 0  # one mask for every slice: tts() on the whole volume
    whole = tts(model, volume, positives, negatives, alpha=0.2, keep_fraction=0.25, per_slice=False, warn=False)
    np.testing.assert_array_equal(load_labels(out, geometry), whole.labels)
    assert "kept channels" in capsys.readouterr().err

    points.write_text("i,j,k,kind\n20,18,2,positive\n50,3,2,negative\n")
    assert main(args) == 2
    assert "line 3: negative point (i=50, j=3, k=2) lies outside" in capsys.readouterr().err


def test_bench_goal_rows_pair_artifact_and_clean_rows_of_the_same_rule():
    from napari_medadapt.bench._tts_report import goal_rows

    def row(rule, version, change, fp=None):
        out = {"layer": "decoder", "rule": rule, "set": "real", "version": version, "keypoints": "1+1",
               "alpha": 0.2, "keep": 0.1, "dice_before": 0.8, "dice_change": change}  # fmt: skip
        if fp is not None:
            out.update(fp_ml_before=2.0, fp_ml_after=2.0 * (1 - fp), fp_reduction=fp)
        return out

    rows = [row("keep background", "artifact", -0.1, 0.6), row("published", "artifact", -0.1, 0.6),
            row("published", "clean", -0.08), row("keep background", "clean", -0.01)]  # fmt: skip
    goals = {g["rule"]: g for g in goal_rows(rows)}
    assert goals["keep background"]["met"] and goals["keep background"]["clean_dice_change"] == -0.01
    assert not goals["published"]["met"] and goals["published"]["clean_dice_change"] == -0.08
