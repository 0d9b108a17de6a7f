"""Intensity normalisation (napari_medadapt.core.intensity) on synthetic arrays and the real volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from _data import REAL_DATA, SAMPLE_CASE, needs_real_data

from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.intensity import (
    CT_WINDOWS,
    ct_window,
    foreground_mask,
    percentile_range,
    resolve_ct_window,
    robust_scale,
    window_to_uint8,
    zscore,
)


def test_robust_scale_uses_foreground_percentiles():
    image = np.zeros((10, 10, 10), np.float32)
    image[2:8, 2:8, 2:8] = np.linspace(100.0, 300.0, 216).reshape(6, 6, 6)
    image[5, 5, 5] = 1e6  # a single hot voxel must not set the scale
    low, high = percentile_range(image, 0.5, 99.5)
    assert 100.0 <= low < 102.0 and 298.0 < high < 1e6
    scaled = robust_scale(image)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert 0.45 < float(np.median(scaled[image > 0])) < 0.55
    assert np.all(scaled[image == 0] == 0.0)
    unclipped = robust_scale(image, clip=False)
    assert unclipped.max() > 1.0


def test_robust_scale_keeps_background_at_zero_when_the_brain_has_negative_values():
    # interpolation undershoot leaves negative voxels inside the brain, so the lower percentile is < 0
    image = np.zeros((10, 10, 10), np.float32)
    image[2:8, 2:8, 2:8] = np.linspace(-20.0, 300.0, 216).reshape(6, 6, 6)
    low, _ = percentile_range(image, 5.0, 95.0)
    assert low < 0.0
    scaled = robust_scale(image, 5.0, 95.0)
    assert np.all(scaled[image == 0] == 0.0)
    lifted = robust_scale(image, 5.0, 95.0, outside=None)  # plain scaling lifts the background to a grey level
    assert float(lifted[0, 0, 0]) > 0.0
    brain = image != 0
    np.testing.assert_array_equal(scaled[brain], lifted[brain])


def test_robust_scale_explicit_mask_and_degenerate_inputs():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    mask = np.zeros_like(image, bool)
    mask[:5] = True  # values 0..49
    assert percentile_range(image, 0, 100, mask) == (0.0, 49.0)
    assert percentile_range(np.full((3, 3), 7.0)) == (7.0, 8.0)
    assert percentile_range(np.zeros((3, 3))) == (0.0, 1.0)  # empty foreground falls back to all voxels
    assert percentile_range(np.full((2, 2), np.nan)) == (0.0, 1.0)
    with pytest.raises(VolumeError, match="Percentiles"):
        percentile_range(image, 60, 40)
    with pytest.raises(VolumeError, match="mask has shape"):
        robust_scale(image, mask=np.ones((3, 3), bool))


def test_zscore_within_foreground():
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 20), np.float32)
    image[5:15, 5:15, 5:15] = rng.normal(500.0, 50.0, (10, 10, 10))
    z = zscore(image)
    fg = foreground_mask(image)
    assert abs(float(z[fg].mean())) < 1e-4 and abs(float(z[fg].std()) - 1.0) < 1e-3
    assert np.all(z[~fg] == 0.0)
    kept = zscore(image, outside=None)
    assert kept[0, 0, 0] < -5.0
    assert np.all(zscore(np.zeros((3, 3))) == 0.0)


def test_one_table_of_windows_for_segmentation_sam_and_training():
    from napari_medadapt.core.sam import AUTO_WINDOW, WINDOW_PRESETS, resolve_window
    from napari_medadapt.training.sam_small import TRAINING_CT_WINDOWS

    assert WINDOW_PRESETS == {f"ct-{name}": window for name, window in CT_WINDOWS.items()}
    assert set(TRAINING_CT_WINDOWS) <= set(CT_WINDOWS.values())
    for name, window in CT_WINDOWS.items():
        assert resolve_window(np.zeros(3), f"ct-{name}") == resolve_ct_window(name) == window
    mri = np.concatenate([np.zeros(100), np.linspace(1, 100, 1000)]).astype(np.float32)
    assert resolve_window(mri, AUTO_WINDOW) == percentile_range(mri, 0.5, 99.5)


def test_ct_windows():
    hu = np.array([-2000.0, -150.0, 50.0, 250.0, 3000.0, np.nan], np.float32)
    np.testing.assert_allclose(ct_window(hu, "abdomen"), [0.0, 0.0, 0.5, 1.0, 1.0, 0.0], atol=1e-6)
    for spelling in ("soft tissue", "Soft_Tissue", "ct-soft-tissue"):
        assert resolve_ct_window(spelling) == (-160.0, 240.0) == CT_WINDOWS["soft-tissue"]  # width 400, level 40
    for name in ("brain", "subdural", "lung", "bone"):
        low, high = CT_WINDOWS[name]
        assert ct_window(np.array([low, high]), name).tolist() == [0.0, 1.0]
    np.testing.assert_allclose(ct_window(np.array([0.0, 50.0, 100.0]), (0, 100)), [0.0, 0.5, 1.0])
    with pytest.raises(VolumeError, match="Unknown CT window"):
        ct_window(hu, "liver-ish")
    with pytest.raises(VolumeError, match="high > low"):
        resolve_ct_window((10, 10))


def test_window_to_uint8():
    out = window_to_uint8(np.array([[-10.0, 0.0, 50.0], [100.0, 500.0, np.nan]]), 0.0, 100.0)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128], [255, 255, 0]]
    with pytest.raises(VolumeError, match="high > low"):
        window_to_uint8(np.zeros(3), 5.0, 5.0)


@needs_real_data
def test_real_mri_and_ct():
    t1 = np.asarray(nib.load(str(SAMPLE_CASE / "t1.nii.gz")).dataobj, np.float32)[:, :, 70:90]
    scaled = robust_scale(t1)
    brain = t1 != 0
    inside = scaled[brain]
    assert 0.0 <= inside.min() and inside.max() <= 1.0
    assert 0.005 < float((inside == 0).mean()) < 0.02  # ~0.5 % clipped at each end
    assert 0.005 < float((inside == 1).mean()) < 0.02
    # this FLAIR has negative voxels inside the brain (lower percentile < 0): its background must stay 0
    flair = np.asarray(nib.load(str(SAMPLE_CASE / "flair.nii.gz")).dataobj, np.float32)
    assert percentile_range(flair)[0] < 0.0
    assert np.all(robust_scale(flair)[flair == 0] == 0.0)
    ct = np.asarray(nib.load(str(REAL_DATA / "ct_abdomen_totalseg_example" / "ct.nii.gz")).dataobj, np.float32)
    lung = ct_window(ct, "lung")
    soft = ct_window(ct, "abdomen")
    air = ct < -900
    assert np.all(soft[air] == 0.0) and float(lung[air].mean()) < 0.3
    slice_u8 = window_to_uint8(ct[:, :, 15], *CT_WINDOWS["abdomen"])
    assert slice_u8.min() == 0 and slice_u8.max() == 255
