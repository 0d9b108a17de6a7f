"""Phantom brain-tumour MRI and simulated acquisition shifts: realism properties and shift semantics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medadapt.core.synth import phantom, shifts
from napari_medadapt.core.synth.phantom import MODALITIES

T1, T1C, T2, FLAIR = (MODALITIES.index(m) for m in ("t1", "t1c", "t2", "flair"))


def _params_of_type(tumour_type: str):
    for seed in range(200):
        params = phantom.random_phantom_params(seed)
        if params.tumour_type == tumour_type:
            return params
    raise AssertionError(f"no {tumour_type} phantom among 200 seeds")


@pytest.fixture(scope="module")
def gbm_slice():
    params = _params_of_type("gbm")
    images, labels, tissues = phantom.render_clean(params, [params.centre[0]])
    return params, images[:, 0], labels[0], {k: v[0] for k, v in tissues.items()}


@pytest.mark.slow
def test_anatomy_fills_the_sri24_brain_extent():
    anatomy = phantom.load_anatomy()
    assert anatomy.mask.shape == phantom.GRID_SHAPE
    idx = np.argwhere(anatomy.mask > 0.5)
    for axis, (lo, hi) in enumerate(phantom.SRI24_BRAIN_EXTENT):
        assert abs(int(idx[:, axis].min()) - lo) <= 2
        assert abs(int(idx[:, axis].max()) - hi) <= 2
    # tissue fractions are a partition of the brain
    total = anatomy.gm + anatomy.wm + anatomy.csf
    assert np.allclose(total[anatomy.mask > 0.5], 1.0, atol=1e-4)


def test_tumour_compartments_are_nested(gbm_slice):
    _, _, labels, _ = gbm_slice
    necrosis, enhancing, edema = labels == 1, labels == 4, labels == 2
    assert necrosis.sum() > 20 and enhancing.sum() > 20 and edema.sum() > 20
    # necrosis is wrapped by the enhancing rim: its neighbours are necrosis or enhancing only
    ring = ndimage.binary_dilation(necrosis, iterations=1) & ~necrosis
    assert np.all(np.isin(labels[ring], (1, 4)))
    # the core (1 + 4) lies inside the whole tumour and is mostly surrounded by edema
    core = necrosis | enhancing
    core_ring = ndimage.binary_dilation(core, iterations=1) & ~core
    assert (labels[core_ring] == 2).mean() > 0.5
    assert edema.sum() > core.sum() * 0.3


def test_lgg_phantom_has_no_enhancement():
    params = _params_of_type("lgg")
    _, labels, _ = phantom.render_clean(params, [params.centre[0]])
    assert not np.any(labels == 4)
    assert np.any(labels == 1) and np.any(labels == 2)


def test_relative_contrasts_per_modality(gbm_slice):
    _, images, labels, tissues = gbm_slice
    normal = labels == 0

    def mean(region, m):
        return float(images[m][region].mean())

    wm = normal & (tissues["wm"] > 0.9)
    gm = normal & (tissues["gm"] > 0.6)
    csf = normal & (tissues["csf"] > 0.9)
    edema, enhancing, necrosis = labels == 2, labels == 4, labels == 1
    assert wm.sum() > 50 and gm.sum() > 50 and csf.sum() > 10
    assert mean(wm, T1) > mean(gm, T1) > mean(csf, T1)  # T1: WM brightest, CSF dark
    assert mean(csf, T2) > mean(gm, T2) > mean(wm, T2)  # T2: CSF brightest
    assert mean(edema, FLAIR) > mean(gm, FLAIR) > mean(wm, FLAIR) > mean(csf, FLAIR)  # FLAIR: CSF suppressed
    # contrast uptake: 1.6 x WM before jitter; tumour +-30 % and WM +-10 % leave at least 1.6 * 0.7 / 1.1 = 1.02
    assert mean(enhancing, T1C) > 1.0 * mean(wm, T1C)
    assert mean(enhancing, T1C) / mean(wm, T1C) > 1.5 * mean(enhancing, T1) / mean(wm, T1)
    assert mean(necrosis, T1C) < mean(enhancing, T1C)
    assert mean(necrosis, T2) > mean(wm, T2)
    assert mean(edema, T2) > mean(wm, T2)


def test_phantom_slices_are_reproducible_and_vary_with_seed():
    a_img, a_lab = phantom.make_phantom_slice(11)
    b_img, b_lab = phantom.make_phantom_slice(11)
    c_img, _ = phantom.make_phantom_slice(12)
    assert a_img.shape == (4, 240, 240) and a_img.dtype == np.float32
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.allclose(a_img, c_img)
    # skull-stripped: background exactly zero, labels only inside the brain
    brain = np.any(a_img != 0, axis=0)
    assert not brain[0, 0] and np.all(brain[a_lab > 0])
    assert set(np.unique(a_lab)) <= {0, 1, 2, 4}


# ------------------------------------------------------------------------------------------------ shifts
@pytest.fixture(scope="module")
def smooth_volume():
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.uniform(50, 150, size=(2, 24, 40, 40)), (0, 2, 2, 2)).astype(np.float32)
    data += 100.0
    mask = np.zeros(data.shape[1:], dtype=bool)
    mask[2:-2, 4:-4, 4:-4] = True
    data[:, ~mask] = 0.0
    return data, mask


def test_every_standard_shift_keeps_shape_mask_and_is_seeded(smooth_volume):
    data, mask = smooth_volume
    assert {kind for _, kind, _ in shifts.STANDARD_SHIFTS} == set(shifts.KINDS)
    for name, kind, params in shifts.STANDARD_SHIFTS:
        out = shifts.apply_shift(data, kind, seed=3, mask=mask, **params)
        again = shifts.apply_shift(data, kind, seed=3, mask=mask, **params)
        assert out.shape == data.shape and out.dtype == np.float32, name
        assert np.all(out[:, ~mask] == 0), name
        assert np.array_equal(out, again), name
        assert not np.allclose(out, data), name
    with pytest.raises(ValueError, match="unknown shift kind"):
        shifts.apply_shift(data, "warp", mask=mask)


def test_intensity_scale_and_gamma(smooth_volume):
    data, mask = smooth_volume
    out = shifts.apply_shift(data, "intensity_scale", mask=mask, factor=[2.0, 0.5])
    assert np.allclose(out[0][mask], 2 * data[0][mask]) and np.allclose(out[1][mask], 0.5 * data[1][mask])
    out = shifts.apply_shift(data, "gamma", mask=mask, gamma=2.0)
    ref = np.percentile(data[0][mask], 99.5)
    assert np.allclose(out[0][mask], ref * (data[0][mask] / ref) ** 2, rtol=1e-4)


def test_bias_field_is_smooth_and_bounded(smooth_volume):
    data, mask = smooth_volume
    out = shifts.apply_shift(data, "bias_field", seed=1, mask=mask, strength=0.4)
    log_ratio = np.log(out[0][mask] / data[0][mask])
    assert np.abs(log_ratio).max() <= 0.4 + 1e-5
    assert log_ratio.std() > 0.02  # it varies across the volume
    field = np.zeros(mask.shape)
    field[mask] = log_ratio
    inner = ndimage.binary_erosion(mask, iterations=1)
    assert np.abs(np.diff(field, axis=2)[inner[:, :, 1:] & inner[:, :, :-1]]).max() < 0.05  # smooth


def test_noise_level_blur_and_resolution(smooth_volume):
    data, mask = smooth_volume
    noisy = shifts.apply_shift(data, "noise", seed=2, mask=mask, sigma_fraction=0.05)
    sigma = 0.05 * np.percentile(data[0][mask], 99)
    assert abs(float((noisy[0] - data[0])[mask].std()) - sigma) < 0.15 * sigma

    def roughness(a, axis):
        return float(np.abs(np.diff(a, n=2, axis=axis))[2:-2].mean())

    blurred = shifts.apply_shift(noisy, "blur", mask=mask, sigma=1.5)
    assert roughness(blurred[0], 2) < 0.5 * roughness(noisy[0], 2)
    coarse = shifts.apply_shift(noisy, "low_resolution", mask=mask, through_plane=4.0, in_plane=1.0)
    assert roughness(coarse[0], 0) < 0.5 * roughness(noisy[0], 0)  # through-plane detail lost
    inner = ndimage.binary_erosion(mask, iterations=2)
    assert np.allclose(coarse[0][:, inner.any(0)].mean(), noisy[0][:, inner.any(0)].mean(), rtol=0.1)
    # in-plane untouched apart from the through-plane smoothing
    assert roughness(coarse[0], 2) > 0.3 * roughness(noisy[0], 2)


def test_normalization_shifts(smooth_volume):
    data, mask = smooth_volume
    z = shifts.apply_shift(data, "normalization", mask=mask, method="zscore")
    assert abs(float(z[0][mask].mean())) < 1e-4 and abs(float(z[0][mask].std()) - 1) < 1e-3
    q = shifts.apply_shift(data, "normalization", mask=mask, method="uint8")
    assert q.max() <= 255 and np.array_equal(q, np.round(q))
    with pytest.raises(ValueError, match="normalization method"):
        shifts.apply_shift(data, "normalization", mask=mask, method="histogram")


def test_two_dimensional_slices_and_volume_wrapper(smooth_volume):
    data, mask = smooth_volume
    image = data[:, 10]
    out = shifts.apply_shift(image, "low_resolution", in_plane=2.0, through_plane=4.0)
    assert out.shape == image.shape
    from napari_medadapt.core.volume import Geometry, Volume

    volume = Volume(data, Geometry.from_display_grid(data.shape[1:]), ("t1", "flair"))
    shifted = shifts.shift_volume(volume, "gamma", gamma=1.5)
    assert shifted.channels == volume.channels and shifted.data.shape == data.shape
    assert not np.allclose(shifted.data, data)
