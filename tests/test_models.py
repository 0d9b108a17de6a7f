"""SegModel, cards, registry, save/load (tiny DynUNets)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.models import (
    ModelCard,
    build_model,
    default_architecture,
    list_models,
    load_model,
    save_model,
)

MODALITIES = ["t1", "t1c", "t2", "flair"]


def tiny_card(dims: int = 2, **arch_options) -> ModelCard:
    arch = default_architecture(dims, 4, 4, filters=(4, 8, 16), **arch_options)
    return ModelCard(
        name=f"tiny{dims}d",
        architecture=arch,
        modalities=MODALITIES,
        labels=[0, 1, 2, 4],
        class_names=["background", "necrosis", "edema", "enhancing"],
        supported_subsets=[MODALITIES, ["t1c", "flair"]],
        voxel_size=[None, 1.0, 1.0],
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_any_size_and_taps(dims):
    torch.manual_seed(0)
    model = build_model(tiny_card(dims)).eval()
    shape = (1, 4, *([11] * (dims - 2)), 13, 18)[: 2 + dims]
    x = torch.randn(*shape)
    with torch.no_grad():
        logits = model(x)
        result = model.forward_features(x)
    assert logits.shape == (1, 4, *shape[2:])
    torch.testing.assert_close(result.logits, logits)
    assert result.features["decoder"].shape == (1, 4, *shape[2:])
    assert result.features["bottleneck"].shape[1] == 16
    assert set(model.bn_groups()) == {"input", "down1", "bottleneck", "up1", "up2"}
    assert all(len(v) > 0 for v in model.bn_groups().values())
    # the head maps decoder features to logits
    torch.testing.assert_close(model.head(result.features["decoder"]), logits)


def test_copy_is_independent_and_head_swappable():
    model = build_model(tiny_card()).eval()
    clone = model.copy()
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert not torch.equal(next(model.parameters()), next(clone.parameters()))
    clone.replace_head(torch.nn.Conv2d(model.decoder_channels, 2, 1))
    assert isinstance(model.head, torch.nn.Module) and model.head is not clone.head
    assert clone(torch.zeros(1, 4, 16, 16)).shape == (1, 2, 16, 16)  # the new head gives the logits
    assert model(torch.zeros(1, 4, 16, 16)).shape == (1, 4, 16, 16)  # the source keeps its own


def test_normalizer_starts_as_identity_and_prototypes_give_similarities():
    torch.manual_seed(0)
    plain = build_model(tiny_card()).eval()
    with_norm = build_model(tiny_card(normalizer=True)).eval()
    with_norm.network.load_state_dict(plain.network.state_dict())
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(with_norm(x), plain(x))
    proto = build_model(tiny_card(prototypes={"per_class": 3, "dim": 8})).eval()
    with torch.no_grad():
        res = proto.forward_features(x)
    sim = res.features["prototype_similarity"]
    assert sim.shape == (2, 12, 16, 16)
    assert float(sim.abs().max()) <= 1.0 + 1e-5
    probs = res.logits.exp().sum(1)
    torch.testing.assert_close(probs, torch.ones_like(probs), atol=1e-4, rtol=0)


def test_save_load_roundtrip_and_sha_check(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = build_model(tiny_card(normalizer=True)).eval()
    card_path = save_model(model, tmp_path / "tiny.safetensors")
    data = json.loads(card_path.read_text())
    assert data["weights_sha256"] and data["weights_file"] == "tiny.safetensors"
    x = torch.randn(1, 4, 16, 16)
    for ref in (card_path, tmp_path / "tiny.safetensors"):
        loaded = load_model(ref)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
    monkeypatch.setenv("MEDADAPT_MODEL_PATH", str(tmp_path))
    (tmp_path / "other_tool.json").write_text('{"name": "not a segmentation model"}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "tiny2d" in [c.name for c in list_models()]
    loaded = load_model("tiny")
    assert loaded.card.labels == [0, 1, 2, 4]
    # .pt state dict beside a card
    torch.save(model.state_dict(), tmp_path / "tiny_pt.pt")
    card = ModelCard.load(card_path)
    card.weights_file, card.weights_sha256 = "tiny_pt.pt", None
    card.save(tmp_path / "tiny_pt.json")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "tiny_pt.pt")(x), model(x))
    # corrupt file -> sha mismatch
    raw = bytearray((tmp_path / "tiny.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "tiny.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="does not match"):
        load_model(card_path)


def test_bad_inputs_raise_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no segmentation model called"):
        load_model("no-such-model")
    with pytest.raises(ModelError, match="no model card"):
        (tmp_path / "w.safetensors").write_bytes(b"x")
        load_model(tmp_path / "w.safetensors")
    card = tiny_card()
    with pytest.raises(ModelError, match="needs FLAIR; got t1, t1c, t2"):
        card.check_modalities(["t1", "t1c", "t2"])
    with pytest.raises(ModelError, match="needs T1C, FLAIR; got t1, t2"):
        card.check_modalities(["t1", "t2"])
    card.check_modalities(["t1c", "flair"])
    assert card.optional_modalities == ["t1", "t2"]
    with pytest.raises(ModelError, match="input channels"):
        ModelCard(name="x", architecture=default_architecture(2, 3, 4), modalities=MODALITIES, labels=[0, 1, 2, 4])
    model = build_model(tiny_card())
    with pytest.raises(ModelError, match="takes 4 channels"):
        model(torch.zeros(1, 3, 16, 16))


def test_pickled_objects_are_refused(tmp_path):
    model = build_model(tiny_card()).eval()
    card_path = save_model(model, tmp_path / "tiny.safetensors")
    card = ModelCard.load(card_path)
    card.weights_file, card.weights_sha256 = "pickled.pt", None
    card.save(tmp_path / "pickled.json")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="not a plain weight file: it holds pickled Python objects"):
        load_model(tmp_path / "pickled.json")
    card.weights_file = "other.safetensors"
    card.save(tmp_path / "other.json")
    save_model(build_model(tiny_card(prototypes={"per_class": 2, "dim": 4})), tmp_path / "proto.safetensors")
    (tmp_path / "other.safetensors").write_bytes((tmp_path / "proto.safetensors").read_bytes())
    with pytest.raises(ModelError, match="does not fit the architecture"):
        load_model(tmp_path / "other.json")
