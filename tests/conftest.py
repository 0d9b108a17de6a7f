"""Helpers shared by the test modules: real-data crops, tiny saved models and docks on a viewer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
TRAINING_CASE = "glioma_tcga_du7294"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data folder (``../shared/data/real`` beside the repository)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def write_crops() -> Callable[..., Path]:
    """``write(folder, names, crop, case=TRAINING_CASE)``: save ``crop`` of each ``NAME.nii.gz`` of a real case."""

    def write(folder: Path, names: Sequence[str], crop: tuple[slice, ...], case: str = TRAINING_CASE) -> Path:
        for name in names:
            nib.save(nib.load(str(REAL_DATA / case / f"{name}.nii.gz")).slicer[crop], str(folder / f"{name}.nii.gz"))
        return folder

    return write


@pytest.fixture(scope="session")
def save_tiny_model() -> Callable[..., Path]:
    """``save(folder, card, seed=0)``: build ``card``'s untrained network (seeded), save it; the card's path."""
    import torch

    from napari_medadapt.core.models import build_model, save_model

    def save(folder: Path, card: Any, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        return save_model(build_model(card).eval(), folder / f"{card.name}.safetensors")

    return save


@pytest.fixture
def register_tiny_model(tmp_path, monkeypatch, save_tiny_model) -> Callable[[Any], Path]:
    """``register(card)``: save a tiny model in a temporary folder on ``MEDADAPT_MODEL_PATH``; the folder."""

    def register(card: Any) -> Path:
        save_tiny_model(tmp_path, card)
        monkeypatch.setenv("MEDADAPT_MODEL_PATH", str(tmp_path))
        return tmp_path

    return register


@pytest.fixture
def open_dock(make_napari_viewer) -> Callable[..., tuple[Any, Any]]:
    """``open(folder, widget_class, model_name)``: a viewer with ``folder``'s case and the dock on that model."""
    from napari_medadapt._reader import read_paths

    def open_(folder: Path, widget_class: type, model_name: str) -> tuple[Any, Any]:
        viewer = make_napari_viewer()
        for data, kwargs, kind in read_paths(str(folder)):
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        widget = widget_class(viewer)
        viewer.window.add_dock_widget(widget)
        index = widget.model_combo.findText(model_name)
        assert index >= 0
        widget.model_combo.setCurrentIndex(index)
        return viewer, widget

    return open_
