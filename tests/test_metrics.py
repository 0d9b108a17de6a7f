"""Dice, HD95, BraTS regions and volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _data import REAL_DATA, needs_real_data

from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.metrics import (
    dice,
    evaluate_labels,
    format_results,
    hd95,
    label_volumes_ml,
    region_masks,
)


def test_dice_values_and_empty_conventions():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(MedAdaptError, match="different shapes"):
        dice(a, np.zeros((3, 3), bool))


def test_hd95_uses_spacing_and_documented_empty_values():
    a = np.zeros((5, 5, 9), bool)
    b = np.zeros_like(a)
    assert math.isnan(hd95(a, b))
    a[2, 2, 1] = True
    assert math.isinf(hd95(a, b))
    b[2, 2, 4] = True
    assert hd95(a, b, spacing=(1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, a, spacing=(1.0, 1.0, 2.0)) == pytest.approx(0.0)


def test_region_schemes():
    labels = np.array([0, 1, 2, 3, 4])
    brats = region_masks(labels, "brats")
    assert brats["WT"].tolist() == [False, True, True, False, True]
    assert brats["TC"].tolist() == [False, True, False, False, True]
    assert brats["ET"].tolist() == [False, False, False, False, True]
    b13 = region_masks(labels, "brats2013")
    assert b13["WT"].tolist() == [False, True, True, True, True]
    assert b13["TC"].tolist() == [False, True, False, True, True]
    assert list(region_masks(labels, "labels")) == ["1", "2", "3", "4"]
    with pytest.raises(MedAdaptError, match="unknown region scheme"):
        region_masks(labels, "nope")


def test_volumes_ml():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2] = 1
    labels[5] = 4
    vols = label_volumes_ml(labels, (2.0, 1.0, 1.0))
    assert vols == {1: pytest.approx(0.4), 4: pytest.approx(0.2)}
    assert label_volumes_ml(labels, (1, 1, 1), [1, 2])[2] == 0.0


@needs_real_data
def test_evaluate_real_algorithms_against_fusion():
    from napari_medadapt.core.labelmaps import load_labels
    from napari_medadapt.core.volume import read_geometry

    case = REAL_DATA / "glioma_tcga_du7294"
    geometry = read_geometry(case / "t1.nii.gz")
    ref = load_labels(case / "seg_fusion.nii.gz", geometry)
    pred = load_labels(case / "seg_algorithms" / "isen-20.nii.gz", geometry)
    results = evaluate_labels(pred, ref, geometry.spacing, "brats")
    assert set(results) == {"WT", "TC", "ET"}
    assert 0.7 < results["WT"]["dice"] < 1.0
    assert 0.0 < results["WT"]["hd95"] < 30.0
    assert results["WT"]["ref_ml"] == pytest.approx(np.isin(ref, [1, 2, 4]).sum() / 1000.0)
    same = evaluate_labels(ref, ref, geometry.spacing, "labels")
    assert all(row["dice"] == 1.0 and row["hd95"] == 0.0 for row in same.values())
    assert "WT" in format_results(results)
