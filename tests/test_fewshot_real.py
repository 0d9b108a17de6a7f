"""Few-shot fits on real volumes: the bundled glioma model on painted coronal slices of its training case, and
LiteMedSAM on a CT organ (slow: whole volumes)."""

from __future__ import annotations

import numpy as np
import pytest
from _data import REAL_DATA, needs_real_data

from napari_medadapt.core.adapt.fewshot.fit import fit
from napari_medadapt.core.metrics import dice

pytestmark = [needs_real_data, pytest.mark.slow]


def _painted(reference: np.ndarray, axis: int, count: int) -> tuple[np.ndarray, list[int]]:
    extent = np.flatnonzero((reference > 0).any(axis=tuple(a for a in range(3) if a != axis)))
    picks = [int(extent[int(round(q * (len(extent) - 1)))]) for q in np.linspace(0, 1, count + 2)[1:-1]]
    support = np.zeros_like(reference)
    index = [slice(None)] * 3
    index[axis] = picks
    support[tuple(index)] = reference[tuple(index)]
    return support, picks


def _rest_dice(predicted: np.ndarray, reference: np.ndarray, axis: int, picks: list[int]) -> float:
    keep = np.ones(reference.shape[axis], bool)
    keep[picks] = False
    index = [slice(None)] * 3
    index[axis] = keep
    return dice(predicted[tuple(index)] > 0, reference[tuple(index)] > 0)


def test_glioma_model_learns_the_tumour_from_three_coronal_slices():
    from napari_medadapt.core.cases import load_case
    from napari_medadapt.core.models import load_model

    volume, labels = load_case(REAL_DATA / "glioma_tcga_du7294")
    reference = labels["seg_fusion"]
    support, picks = _painted(reference, axis=1, count=3)
    result = fit(load_model("glioma2d"), volume.subset(("t1", "t1c", "t2", "flair")), support, leave_one_out=False)
    assert result.support.axis == 1 and result.support.indices == picks
    assert _rest_dice(result.predicted, reference, 1, picks) > 0.85


def test_foundation_model_learns_a_ct_organ_it_was_never_labelled_for():
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.sam.predictor import SamPredictor
    from napari_medadapt.core.volume import load_volume

    case = REAL_DATA / "ct_abdomen_totalseg_example"
    volume = load_volume(case / "ct.nii.gz", name="ct")
    stomach = np.where(load_labels(case / "seg.nii.gz", volume.geometry) == 6, 6, 0).astype(np.uint8)
    support, picks = _painted(stomach, axis=0, count=3)
    result = fit(SamPredictor("litemedsam"), volume, support, largest_component=True, leave_one_out=False)
    assert result.settings["window"] == [-160.0, 240.0]  # LiteMedSAM's CT window from the one window table
    assert _rest_dice(result.predicted, stomach, 0, picks) > 0.6
