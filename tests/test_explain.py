"""Prototype explanations (core): the bundled bank, projection, explanations, heatmaps, forgetting, post-hoc
banks, source slices and the Captum baselines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_medadapt.core.errors import ModelError, PromptError
from napari_medadapt.core.explain import (
    Explainer,
    SourceUnavailable,
    case_slices,
    find_bank,
    kmeans_bank,
    load_bank,
    save_bank,
    source_plane,
)
from napari_medadapt.core.explain.features import bank_embedding, decoder_features
from napari_medadapt.core.files import OutputError
from napari_medadapt.core.model_input import prepare_model_input
from napari_medadapt.core.models import ModelCard, default_architecture, load_model
from napari_medadapt.core.synth.training_data import MODALITIES, phantom_planes
from napari_medadapt.core.volume import Geometry, Volume


def phantom_volume(seed: int = 100_003 * 7 + 1) -> tuple[Volume, np.ndarray]:
    """Eight planes of a phantom glioma (not a training phantom) as a 4-channel volume, and its labels."""
    images, labels = phantom_planes(seed)
    data = images.transpose(1, 0, 2, 3).astype(np.float32)  # (C, Z, Y, X), already in [0, 1]
    return Volume(data, Geometry.from_display_grid(data.shape[1:]), tuple(MODALITIES)), labels


@pytest.fixture(scope="module")
def glioma():
    return load_model("glioma2d")


@pytest.fixture(scope="module")
def explainer(glioma):
    volume, labels = phantom_volume()
    return Explainer(glioma, find_bank(glioma), prepare_model_input(glioma, volume)), labels


def test_bundled_bank_is_projected_onto_distinct_real_patches(glioma):
    bank = find_bank(glioma)
    assert bank is not None and bank.space == "head" and len(bank) == 40
    assert bank.card["projection"]["kept"] is True
    drop = bank.card["projection"]["mean_drop"]
    assert drop <= 0.02 and bank.card["base_sha256"] == glioma.card.weights_sha256
    for cls in range(4):  # per-class Hungarian assignment: no two prototypes of a class share a source plane
        sources = [(p["source"]["case"], p["source"]["plane"]) for p in bank.card["prototypes"] if p["network_class"] == cls]
        assert len(set(sources)) == len(sources) == 10
    assert bank.patches.shape == (40, 4, 48, 48) and bank.patch_labels.shape == (40, 48, 48)
    assert bank.plane_vectors.shape == (len(bank.card["planes"]), 32) == (771, 32)
    for entry, labels in zip(bank.card["prototypes"], bank.patch_labels, strict=True):
        assert labels[24, 24] == entry["label"]  # every prototype sits on a voxel of its own class


def test_a_projected_prototype_is_its_source_feature(glioma):
    """Rebuild a phantom source plane and check the explained model's prototype equals the feature there."""
    bank = find_bank(glioma)
    pid = next(p["id"] for p in bank.card["prototypes"] if "phantom_seed" in p["source"])
    source = bank.entry(pid)["source"]
    image, labels = source_plane(source, bank.card["modalities"])
    assert labels[source["y"], source["x"]] == bank.entry(pid)["label"]
    volume = Volume(image[:, None], Geometry.from_display_grid((1, *image.shape[1:])), tuple(MODALITIES))
    explainer = Explainer(glioma, bank, prepare_model_input(glioma, volume))
    embedding = bank_embedding(explainer.model, "head", decoder_features(explainer.model, image[:, None].astype(np.float32)))
    feature = embedding[0, :, source["y"], source["x"]].numpy()
    prototype = explainer.vectors[pid] / np.linalg.norm(explainer.vectors[pid])
    assert float(feature @ prototype) > 0.999


def test_explain_voxel_lists_prototypes_with_shares(explainer):
    ex, labels = explainer
    zyx = tuple(int(v[len(v) // 2]) for v in np.nonzero(labels == 2))
    explanation = ex.explain_voxel(zyx, top_k=5)
    assert explanation.predicted_label in (1, 2, 4) and len(explanation.matches) == 5
    sims = [m.similarity for m in explanation.matches]
    assert sims == sorted(sims, reverse=True) and -1 <= sims[-1] <= sims[0] <= 1
    assert abs(sum(s["share"] for s in explanation.shares) - 1.0) < 1e-3
    assert all(m.source["case"] for m in explanation.matches)
    similar = explanation.similar_planes  # the global view: nearest training planes by pooled features
    assert len(similar) == 5 and all({"case", "plane", "similarity", "label_voxels"} <= set(p) for p in similar)
    assert sum("2" in p["label_voxels"] for p in similar) >= 3  # a tumour region retrieves tumour planes
    json.dumps(explanation.as_dict())
    heat = ex.heatmaps([explanation.matches[0].id], planes=[zyx[0]])
    assert heat.shape == (1, *labels.shape) and heat[0, zyx[0]].max() <= 1.0
    assert not heat[0, [z for z in range(8) if z != zyx[0]]].any()  # only the plane asked for
    assert heat[0, zyx[0]][labels[zyx[0]] > 0].mean() > heat[0, zyx[0]][labels[zyx[0]] == 0].mean()


def test_region_explanation_and_evidence(explainer):
    ex, labels = explainer
    explanation = ex.explain_region(labels > 0, top_k=3, description="tumour")
    assert explanation.target == {"kind": "region", "description": "tumour", "voxels": int((labels > 0).sum())}
    maps = ex.heatmaps([m.id for m in explanation.matches])
    evidence = ex.evidence(explanation, maps).astype(np.float32)
    assert evidence[labels > 0].mean() > 3 * evidence[labels == 0].mean()


def test_bad_targets_are_named(explainer):
    ex, labels = explainer
    with pytest.raises(PromptError, match="outside the image"):
        ex.explain_voxel((8, 0, 0))
    with pytest.raises(PromptError, match="is empty"):
        ex.explain_region(np.zeros_like(labels, bool))
    with pytest.raises(PromptError, match="has shape"):
        ex.explain_region(np.ones((2, 2, 2), bool))
    background = ex.explain_voxel((0, 2, 2))  # the air in a corner: background, and said so
    assert background.predicted_label == 0 and "background" in background.notes[0]


def test_forgetting_prototypes_changes_the_prediction_and_restores(glioma):
    volume, labels = phantom_volume()
    ex = Explainer(glioma, find_bank(glioma), prepare_model_input(glioma, volume))
    before = ex.predict()
    edema = [p["id"] for p in ex.bank.card["prototypes"] if p["label"] == 2]
    ex.forget(edema)
    after = ex.predict()
    assert ex.model.card.architecture["prototypes"]["forgotten"] == edema
    assert (after == 2).sum() < (before == 2).sum()
    assert glioma.prototypes.forgotten == ()  # the session's model is untouched
    ex.forget(())
    np.testing.assert_array_equal(ex.predict(), before)


def test_forgotten_prototypes_survive_saving(glioma, tmp_path):
    from napari_medadapt.core.models import save_model

    volume, _labels = phantom_volume()
    ex = Explainer(glioma, find_bank(glioma), prepare_model_input(glioma, volume), forgotten=[3, 21])
    path = save_model(ex.model, tmp_path / "forgot.safetensors")
    reloaded = load_model(path)
    assert reloaded.prototypes.forgotten == (3, 21) and float(reloaded.prototypes.weights[21]) == 0.0


def tiny_card(name: str = "tinyglioma") -> ModelCard:
    return ModelCard(
        name=name, architecture=default_architecture(2, 4, 4, (8, 16, 32)), modalities=list(MODALITIES),
        labels=[0, 1, 2, 4], class_names=["background", "core", "edema", "enhancing"],
    )


@pytest.fixture
def labelled_cases(tmp_path):
    import nibabel as nib

    for case, seed in (("case_a", 11), ("case_b", 12)):
        images, labels = phantom_planes(seed, 4)
        folder = tmp_path / "cases" / case
        folder.mkdir(parents=True)
        for c, modality in enumerate(MODALITIES):
            nib.save(nib.Nifti1Image(images[:, c].transpose(2, 1, 0).astype(np.float32), np.eye(4)), folder / f"{modality}.nii.gz")
        nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).astype(np.uint8), np.eye(4)), folder / "seg.nii.gz")
    return tmp_path / "cases"


def test_post_hoc_bank_for_a_model_without_prototypes(save_tiny_model, labelled_cases, tmp_path):
    model = load_model(save_tiny_model(tmp_path, tiny_card()))
    assert find_bank(model) is None
    slices = case_slices(sorted(labelled_cases.iterdir()), model)
    bank = kmeans_bank(model, slices, per_class=3)
    assert bank.space == "decoder" and bank.vectors.shape[1] == model.decoder_channels
    for cls in np.unique(bank.network_classes):
        sources = [(p["source"]["case"], p["source"]["plane"]) for p in bank.card["prototypes"] if p["network_class"] == cls]
        assert len(set(sources)) == len(sources)
    path = save_bank(bank, tmp_path / "tiny.prototypes.json")
    with pytest.raises(OutputError, match="never replaced"):
        save_bank(bank, path)
    loaded = load_bank(path, model)
    np.testing.assert_allclose(loaded.vectors, bank.vectors)
    volume, labels = phantom_volume()
    ex = Explainer(model, loaded, prepare_model_input(model, volume))
    explanation = ex.explain_region(labels > 0)
    assert len(explanation.matches) == 5
    with pytest.raises(ModelError, match="post-hoc"):
        ex.forget([0])
    image, plane_labels = source_plane(loaded.entry(0)["source"], loaded.card["modalities"])  # from its case folder
    assert image.shape == (4, 240, 240) and plane_labels.shape == (240, 240)
    shutil.rmtree(labelled_cases)
    with pytest.raises(SourceUnavailable, match="stored patch"):
        source_plane(loaded.entry(0)["source"], loaded.card["modalities"])


def test_banks_are_refused_for_other_models_and_when_changed(glioma, save_tiny_model, tmp_path):
    other = load_model(save_tiny_model(tmp_path, tiny_card("other")))
    bank = find_bank(glioma)
    with pytest.raises(ModelError, match="built for the model 'glioma2d'"):
        load_bank(bank.path, other)
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in bank.path.parent.glob("glioma2d.prototypes.*"):
        shutil.copy(file, copy / file.name)
    arrays = copy / "glioma2d.prototypes.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(ModelError, match="changed since"):
        load_bank(copy / "glioma2d.prototypes.json")


def test_captum_baselines_and_scores(glioma):
    from napari_medadapt.core.explain.attribution import (
        activation_precision,
        deletion_insertion,
        gradient_map,
        target_score,
    )

    volume, labels = phantom_volume()
    plane = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    image = prepare_model_input(glioma, volume).data[:, plane]
    target = labels[plane] > 0
    attribution = gradient_map(glioma, image, target, [1, 2, 3], steps=8)
    assert attribution.shape == target.shape
    assert activation_precision(np.where(target, 1.0, 0.0), target) == 1.0
    score = target_score(glioma, target, [1, 2, 3])
    inside = np.any(image != 0, axis=0)
    truth = deletion_insertion(score, image, target.astype(np.float32) + np.random.default_rng(0).random(target.shape) * 0.1, inside, steps=10)
    shuffled = deletion_insertion(score, image, np.random.default_rng(1).random(target.shape), inside, steps=10)
    assert truth["iad"] > shuffled["iad"] + 0.1


def test_plane_heatmaps_on_a_resampled_input_match_the_volume_ones(glioma):
    """A 2 mm in-plane volume runs on the model's 1 mm grid: a plane computed alone is not dimmed."""
    volume, _labels = phantom_volume()
    coarse = volume.data[:, :, ::2, ::2]
    small = Volume(coarse, Geometry.from_display_grid(coarse.shape[1:], (1.0, 2.0, 2.0)), volume.channels)
    ex = Explainer(glioma, find_bank(glioma), prepare_model_input(glioma, small))
    assert ex.prepared.resampled
    plane, volume_maps = ex.heatmaps([26], planes=[3]), ex.heatmaps([26])
    assert plane.shape == (1, 8, 120, 120)
    np.testing.assert_allclose(plane[0, 3].astype(np.float32), volume_maps[0, 3].astype(np.float32), atol=2e-3)


def test_focus_keeps_a_margin_in_millimetres_and_localisation_reads_volume_and_plane():
    from napari_medadapt.core.explain.localisation import focus_mask, focus_text, localisation

    obj = np.zeros((9, 21, 21), bool)
    obj[4, 10, 10] = True
    focus = focus_mask(obj, (3.0, 1.0, 1.0), margin_mm=5.0)  # 3 mm planes: one plane each side, 5 voxels in-plane
    assert focus[3:6, 10, 10].all() and not focus[2, 10, 10] and not focus[6, 10, 10]
    assert focus[4, 10, 5] and not focus[4, 10, 4] and focus[4].sum() == (np.hypot(*np.mgrid[-10:11, -10:11]) <= 5).sum()
    assert focus_text("label region") == "inside the label region + 5 mm"
    heat = np.zeros(obj.shape, np.float32)
    heat[4, 9:12, 9:12] = 1.0  # fires on the object's plane around it...
    heat[0, 0:6, 0:6] = 1.0  # ...and on look-alike tissue far away
    tumour = np.zeros(obj.shape, bool)
    tumour[4, 9:12, 9:12] = True
    raw, kept = localisation(heat, tumour), localisation(heat * focus_mask(tumour, (3.0, 1.0, 1.0)), tumour)
    assert raw["plane_index"] == 4 and raw["plane"] == 1.0 and raw["volume"] == pytest.approx(9 / 45)
    assert kept["volume"] == 1.0 and kept["marked_volume"] == 9


def test_whole_volume_heatmaps_are_kept_to_the_explained_object(glioma):
    from napari_medadapt.core.explain.workspace import ExplainWorkspace
    from napari_medadapt.core.session import ModelSession

    volume, labels = phantom_volume()
    workspace = ExplainWorkspace(ModelSession())
    zyx = np.argwhere(labels == 2)[len(np.argwhere(labels == 2)) // 2]
    result = workspace.explain("glioma2d", volume, "voxel", zyx=zyx, top_k=2)
    out = workspace.volume_heatmaps(result)
    assert out.heatmaps.shape == (2, *labels.shape) and out.focus[tuple(zyx)] and out.focus.sum() < out.focus.size / 4
    assert out.focus_text == "inside the predicted region at the point + 5 mm"
    assert (out.heatmaps[:, ~out.focus] > 0).any()  # the heatmaps stay whole: the dock restricts what it shows
    background = workspace.explain("glioma2d", volume, "voxel", zyx=(0, 0, 0), top_k=2)
    assert workspace.volume_heatmaps(background).focus is None  # nothing predicted there: no region to keep to
    region = workspace.explain("glioma2d", volume, "label region", region=labels == 2, top_k=2)
    kept = workspace.volume_heatmaps(region)
    assert kept.focus_text == "inside the label region + 5 mm" and kept.focus[labels == 2].all()
