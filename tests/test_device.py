"""Device choice, torch thread bounds, cache paths and ``medadapt info``."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import napari_medadapt
from napari_medadapt.cli import main
from napari_medadapt.core import device as device_module
from napari_medadapt.core.device import describe_device, limit_torch_threads, select_device
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.paths import cache_dir, checkpoint_dir, embedding_cache_dir


def test_env_override_selects_cpu(monkeypatch):
    monkeypatch.setenv("MEDADAPT_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    assert describe_device().startswith("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("MEDADAPT_DEVICE", raising=False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert select_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_argument_overrides_env(monkeypatch):
    monkeypatch.setenv("MEDADAPT_DEVICE", "not-a-device")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(MedAdaptError):
        select_device()


def test_invalid_value_lists_valid_choices(monkeypatch):
    monkeypatch.setenv("MEDADAPT_DEVICE", "gpu7")
    with pytest.raises(MedAdaptError) as info:
        select_device()
    message = str(info.value)
    assert "MEDADAPT_DEVICE='gpu7'" in message
    assert "cpu" in message and "cuda:N" in message and "mps" in message


def test_unavailable_cuda_is_reported_with_choices(monkeypatch):
    monkeypatch.delenv("MEDADAPT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)
    with pytest.raises(MedAdaptError, match=r"CUDA is not available.*Use one of: auto, cpu\."):
        select_device("cuda:0")
    with pytest.raises(MedAdaptError, match="MPS is not available"):
        select_device("mps")


def test_limit_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert limit_torch_threads(1) == 1
        monkeypatch.setattr(device_module.os, "cpu_count", lambda: 8)
        assert device_module.default_thread_count() == 7
        monkeypatch.setattr(device_module.os, "cpu_count", lambda: 1)
        assert device_module.default_thread_count() == 1
    finally:
        torch.set_num_threads(before)


def test_cache_paths_follow_env_and_are_created(monkeypatch, tmp_path):
    root = tmp_path / "medadapt-cache"
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(root))
    assert cache_dir() == root and root.is_dir()
    assert checkpoint_dir() == root / "checkpoints" and checkpoint_dir().is_dir()
    assert embedding_cache_dir() == root / "embeddings" and embedding_cache_dir().is_dir()


def test_info_text(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MEDADAPT_DEVICE", "cpu")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("napari_medadapt", "python", "torch", "monai", "napari", "numpy", "nibabel", "segment_anything"):
        assert f"\n  {name} " in f"\n{out}"
    assert "Compute device: cpu" in out
    assert str(tmp_path / "checkpoints") in out
    assert "Segmentation models:" in out and "SAM checkpoints:" in out


def test_info_json_reports_device_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MEDADAPT_DEVICE", "quantum")
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["napari_medadapt"] == napari_medadapt.__version__
    assert info["device"]["device"] is None and "quantum" in info["device"]["error"]
    assert info["cache"]["embeddings"] == str(tmp_path / "embeddings")
    assert set(info) == {"versions", "device", "cache", "models", "sam_checkpoints"}
    for key in ("models", "sam_checkpoints"):
        assert isinstance(info[key]["entries"], list)


def test_info_lists_registries_and_survives_missing_module(monkeypatch, tmp_path, capsys):
    import napari_medadapt.core.models as models_module

    card = {"name": "tiny2d", "modalities": ["t1", "flair"], "labels": [0, 1], "path": "/models/tiny2d.json"}
    monkeypatch.setattr(models_module, "list_models", lambda **_: [card], raising=False)
    monkeypatch.setitem(sys.modules, "napari_medadapt.core.sam", None)
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "tiny2d: inputs [t1, flair] -> labels [0, 1]  /models/tiny2d.json" in out
    assert "SAM checkpoint registry not available in this installation" in out
