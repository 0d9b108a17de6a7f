"""The bundled glioma2d model: weights and card, and that it finds the tumour in the held-out real case."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from _data import SAMPLE_CASE

HELD_OUT = SAMPLE_CASE  # the held-out case, packaged as sample data


@pytest.fixture(scope="module")
def model():
    from napari_medadapt.core.models import load_model

    return load_model("glioma2d", device="cpu")


def test_card_and_weights(model):
    from napari_medadapt.core.models import find_card, sha256_file

    card = model.card
    weights = find_card("glioma2d").with_name(card.weights_file)
    assert weights.stat().st_size < 20 * 2**20
    assert sha256_file(weights) == card.weights_sha256
    assert card.modalities == ["t1", "t1c", "t2", "flair"]
    assert card.labels == [0, 1, 2, 4]
    assert ["t1c", "flair"] in card.supported_subsets and ["flair"] in card.supported_subsets
    assert all("flair" in subset for subset in card.supported_subsets)
    assert card.missing_for(["flair", "t1c"]) == [] and card.missing_for(["t1", "t2"]) == ["flair"]
    assert card.intensity["method"] == "percentile"
    assert set(card.evaluation["dice_vs_fusion"]) >= {"all four", "FLAIR + T1c"}
    # every dock's hook exists: BatchNorm groups, the normaliser, the prototype head
    groups = model.bn_groups()
    assert groups["input"] and groups["bottleneck"] and groups["down1"]
    assert model.normalizer is not None and model.prototypes is not None
    assert model.spatial_dims == 2


@pytest.fixture(scope="module")
def held_out():
    from napari_medadapt.core.cases import load_case

    return load_case(HELD_OUT)


def _tumour_slices(model, held_out, channels):
    """Normalised (whole-volume statistics) 10 most tumorous slices, cropped to the brain box in-plane."""
    from napari_medadapt.core.model_input import normalise_channel

    volume, labels = held_out
    ref = labels["seg_fusion"]
    slices = np.sort(np.argsort((ref > 0).sum(axis=(1, 2)))[-10:])
    brain = np.any(volume.data != 0, axis=0).any(axis=0)
    ys, xs = np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0))
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    x = np.zeros((len(slices), 4) + ref[:, box[0], box[1]].shape[1:], dtype=np.float32)
    for c, name in enumerate(model.card.modalities):
        if name in channels:
            norm = normalise_channel(volume.channel(name), model.card.intensity)
            x[:, c] = norm[slices][:, box[0], box[1]]
    return x, ref[slices][:, box[0], box[1]]


@pytest.mark.parametrize(("channels", "threshold"), [(("t1", "t1c", "t2", "flair"), 0.65), (("t1c", "flair"), 0.65)])
def test_finds_the_tumour_in_the_held_out_case(model, held_out, channels, threshold):
    import torch

    from napari_medadapt.core.metrics import dice

    x, ref = _tumour_slices(model, held_out, channels)
    with torch.inference_mode():
        classes = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    labels = np.asarray(model.card.labels)[classes]
    assert dice(labels > 0, ref > 0) > threshold
    # no tumour invented outside the brain
    assert not np.any(labels[x.sum(axis=1) == 0] > 0)


def test_training_pieces_are_consistent():
    import torch

    from napari_medadapt.core.synth.training_data import augment_batch, labels_to_classes, modality_dropout
    from napari_medadapt.training import glioma2d

    parser = argparse.ArgumentParser()
    glioma2d.add_arguments(parser)
    args = parser.parse_args([])
    assert args.seed == 0 and args.minutes <= 60
    subsets = glioma2d.supported_subsets()
    assert len(subsets) == 8 and all(s[-1] == "flair" for s in subsets)
    assert np.array_equal(labels_to_classes(np.array([0, 1, 2, 4, 3])), [0, 1, 2, 3, 0])
    rng = np.random.default_rng(0)
    images = np.zeros((4, 4, 64, 64), dtype=np.float16)
    images[:, :, 16:48, 16:48] = rng.uniform(0.2, 1.0, (4, 4, 32, 32))
    labels = np.zeros((4, 64, 64), dtype=np.uint8)
    labels[:, 28:36, 28:36] = 4
    generator = torch.Generator().manual_seed(0)
    x, y = augment_batch(images, labels, generator, crop=48)
    assert x.shape == (4, 4, 48, 48) and y.shape == (4, 48, 48)
    assert set(np.unique(y.numpy())) <= {0, 3} and (y == 3).any()
    x = modality_dropout(torch.ones(64, 4, 2, 2), generator, probability=1.0)
    assert torch.all(x[:, 3] == 1)  # FLAIR is never dropped
    assert (x[:, :3] == 0).any()
