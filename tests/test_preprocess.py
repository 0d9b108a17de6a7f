"""Raw scans in: SimpleITK bridge, skull-stripping detection, co-registration and its quality check, bias field,
the chain's decisions and outputs, the CLI; the raw real case end to end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from _data import REAL_DATA, needs_real_data
from scipy import ndimage

from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.files import OutputError
from napari_medadapt.core.preprocess.bias import field_spread, fit_bias_field
from napari_medadapt.core.preprocess.brain import check_stripped
from napari_medadapt.core.preprocess.chain import load_sequences, prepare_scans, save_prepared
from napari_medadapt.core.preprocess.itk import from_sitk, to_sitk
from napari_medadapt.core.preprocess.register import coregister
from napari_medadapt.core.volume import Geometry, Volume, load_volume

RAW = REAL_DATA / "glioma_tcga_fg6692_raw"


def _head(shape=(40, 64, 64), scalp=True, background_noise=True, seed=0) -> np.ndarray:
    """A phantom head: an ellipsoid brain with two dark 'ventricles', a bright scalp shell, noise outside."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = (z / 0.8) ** 2 + (y / 0.75) ** 2 + (x / 0.6) ** 2
    image = np.where(radius < 0.55, 100.0, 0.0)
    image[(radius < 0.55) & (np.abs(x + 0.15) < 0.08) & (np.abs(y) < 0.3)] = 30.0  # an asymmetric structure
    image[(radius < 0.55) & ((y - 0.3) ** 2 + (x - 0.2) ** 2 < 0.02)] = 160.0
    if scalp:
        image[(radius >= 0.7) & (radius < 0.85)] = 180.0
    image = ndimage.gaussian_filter(image, 1.0)
    if background_noise:
        image += np.abs(rng.normal(0, 3, size=shape))
    return image.astype(np.float32)


def _affine(spacing=(2.0, 1.5, 1.5), degrees=0.0, shift=(0.0, 0.0, 0.0), shape=(40, 64, 64)) -> np.ndarray:
    """An RAS affine of a (i, j, k) = (x, y, z) file, rotated about the grid centre (about the S axis)."""
    sz, sy, sx = spacing
    base = np.diag([sx, sy, sz, 1.0])
    centre = base[:3, :3] @ (np.array(shape[::-1]) - 1) / 2
    theta = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    base[:3, 3] = -centre
    out = rotation @ base
    out[:3, 3] += np.asarray(shift)
    return out


def _volume(array_zyx: np.ndarray, affine: np.ndarray, name: str) -> Volume:
    header = nib.Nifti1Header()
    geometry = Geometry(affine, array_zyx.shape[::-1], header)
    data = geometry.to_display(array_zyx.transpose(2, 1, 0))  # the file's (i, j, k) array
    return Volume(data[None].astype(np.float32), geometry, (name,))


def test_sitk_bridge_places_voxels_where_sitk_reads_them(tmp_path):
    import SimpleITK as sitk

    a, b = np.radians(15.0), np.radians(4.0)  # an oblique LAS-like grid of thick slices
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    turn = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ turn @ np.diag([-0.9, 0.9, 5.5])
    affine[:3, 3] = [90.0, -71.0, -98.0]
    data = np.random.default_rng(1).random((20, 24, 6)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    volume = load_volume(path)
    ours = to_sitk(volume.data[0], volume.geometry)
    theirs = sitk.ReadImage(str(path), sitk.sitkFloat32)
    same = sitk.Resample(theirs, ours, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    np.testing.assert_array_equal(from_sitk(same), volume.data[0])


def test_skull_stripping_is_detected():
    raw = _head()
    stripped = np.where(_head(scalp=False, background_noise=False) > 60, raw, 0.0)
    assert not check_stripped(raw, (2.0, 1.5, 1.5)).stripped  # noise floor outside the head
    assert check_stripped(stripped, (2.0, 1.5, 1.5)).stripped
    zeroed_background = np.where(raw > 20, raw, 0.0)  # a scanner that zeroes the background: head too large
    assert not check_stripped(zeroed_background, (5.0, 5.0, 5.0)).stripped
    assert "not skull-stripped" in check_stripped(raw, (2.0, 1.5, 1.5)).describe("flair")


def test_coregistration_undoes_a_rotation_and_shift_and_refuses_noise():
    reference = _volume(_head(), _affine(), "flair")
    moved = _volume(_head(seed=1), _affine(degrees=8.0, shift=(4.0, -3.0, 2.0)), "t2")
    array, record = coregister(reference, moved)
    assert record.head_dice > 0.95 and record.nmi > 1.1
    assert abs(abs(record.rotation_deg[2]) - 8.0) < 1.5  # about the S axis
    assert record.metric_after < record.metric_before
    assert array.shape == reference.geometry.display_shape
    noise = _volume(np.random.default_rng(2).random((40, 64, 64)).astype(np.float32) * 100, _affine(), "t1")
    with pytest.raises(VolumeError, match="failed the quality check"):
        coregister(reference, noise)
    far = _volume(_head(seed=1), _affine(degrees=5.0, shift=(500.0, 0.0, 0.0)), "t1c")  # headers do not overlap
    array, record = coregister(reference, far)
    assert record.start == "moments" and record.head_dice > 0.9


def test_cancelling_inside_simpleitk_stops_with_job_cancelled():
    from napari_medadapt.core.jobs import JobCancelled, JobContext

    reference = _volume(_head(), _affine(), "flair")
    moved = _volume(_head(seed=1), _affine(degrees=8.0), "t2")
    context = JobContext(on_progress=lambda *_: context.cancel())
    with pytest.raises(JobCancelled):
        coregister(reference, moved, ctx=context)
    head = _head(scalp=False, background_noise=False)
    geometry = Geometry.from_display_grid(head.shape, (2.0, 1.5, 1.5))
    context = JobContext(on_progress=lambda *_: context.cancel())
    with pytest.raises(JobCancelled):
        fit_bias_field(to_sitk(head, geometry), head > 60, ctx=context)


def test_brain_extraction_failure_and_thin_volumes_are_explained():
    from napari_medadapt.core.preprocess.brain import extract_brain

    with pytest.raises(VolumeError, match="found no brain"):
        extract_brain(np.zeros((16, 32, 32), np.float32), device="cpu")
    thin = _volume(_head()[:3], _affine(shape=(3, 64, 64)), "flair")
    with pytest.raises(VolumeError, match="too thin"):
        prepare_scans({"flair": thin})


def test_bias_field_is_measured_and_removed():
    head = _head(scalp=False, background_noise=False)
    brain = head > 60
    ramp = np.exp(np.linspace(-1.5, 1.5, head.shape[2]))[None, None, :].astype(np.float32)
    geometry = Geometry.from_display_grid(head.shape, (2.0, 1.5, 1.5))
    flat = fit_bias_field(to_sitk(head, geometry), brain)
    field = fit_bias_field(to_sitk(head * ramp, geometry), brain)
    assert field_spread(field, brain) > 1.6 > field_spread(flat, brain)
    residual = (head * ramp / field)[brain] / head[brain]  # what is left of the field after correction
    assert np.std(np.log(residual)) < 0.5 * np.std(np.log(np.broadcast_to(ramp, head.shape)[brain]))


def test_chain_decisions_and_messages(tmp_path):
    stripped = np.where(_head(scalp=False, background_noise=False) > 60, _head(), 0.0)
    one = {"flair": _volume(stripped, _affine(), "flair")}
    prepared = prepare_scans(one, n4="off")
    assert prepared.brain_mask is None and prepared.reference == "flair"
    assert any("one sequence" in n for n in prepared.notes) and any("skull-stripped" in n for n in prepared.notes)
    same_grid = {"flair": one["flair"], "t1": _volume(stripped * 0.5, _affine(), "t1")}
    prepared = prepare_scans(same_grid, reference="t1", n4="off")
    assert prepared.volume.channels == ("flair", "t1") and prepared.reference == "t1"
    assert any("grid of t1 already" in n for n in prepared.notes) and not prepared.registrations
    with pytest.raises(VolumeError, match="for brain MRI"):
        prepare_scans({"ct": _volume(stripped, _affine(), "ct")})
    with pytest.raises(VolumeError, match="n4 must be"):
        prepare_scans(one, n4="sometimes")
    with pytest.raises(VolumeError, match="reference 't2' is not among"):
        prepare_scans(one, reference="t2")


def test_localisers_and_series_are_skipped_and_inputs_never_overwritten(tmp_path):
    head = _head(scalp=False, background_noise=False)
    paths = {}
    for name, data in (("flair", head), ("t2", head[:, :, :1]), ("t1", np.stack([head, head], axis=-1))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0, *range(3, data.ndim))), np.eye(4)),
                 str(paths[name]))
    sequences, skipped = load_sequences(paths)
    assert list(sequences) == ["flair"]
    assert any("t2" in s and "2D image" in s for s in skipped) and any("t1" in s and "series" in s for s in skipped)
    prepared = prepare_scans(sequences, n4="off")
    with pytest.raises(OutputError):
        save_prepared(prepared, tmp_path, inputs=list(paths.values()))  # would replace flair.nii.gz
    before = paths["flair"].read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    written = save_prepared(prepared, out, inputs=list(paths.values()))
    assert [p.name for p in written] == ["flair.nii.gz", "preprocess.json"]
    assert paths["flair"].read_bytes() == before
    report = json.loads((out / "preprocess.json").read_text())
    assert report["reference"] == "flair" and report["brain_extracted"] is False


def test_a_model_trained_on_stripped_scans_reports_a_raw_input():
    from napari_medadapt.core.model_input import prepare_model_input
    from napari_medadapt.core.models import ModelCard, default_architecture

    card = ModelCard(name="brain", architecture=default_architecture(2, 1, 2, filters=(4, 8, 16)),
                     modalities=["flair"], labels=[0, 1], skull_stripped=True)  # fmt: skip
    raw = Volume(_head()[None], Geometry.from_display_grid((40, 64, 64), (2.0, 1.5, 1.5)), ("flair",))
    notes = prepare_model_input(card, raw).notes
    assert any("not skull-stripped" in n and "prepare the scans first" in n for n in notes)
    stripped = Volume(np.where(_head(scalp=False) > 60, _head(), 0)[None].astype(np.float32), raw.geometry, ("flair",))
    assert not any("skull-stripped" in n for n in prepare_model_input(card, stripped).notes)


@needs_real_data
@pytest.mark.slow
def test_raw_case_is_prepared_and_segmented_on_the_flair_grid(tmp_path, capsys):
    from napari_medadapt.cli import main

    images = [f"--image={m}={RAW / (m + '.nii.gz')}" for m in ("flair", "t1", "t1c", "t2")]
    checksums = {m: (RAW / f"{m}.nii.gz").read_bytes() for m in ("flair", "t1")}
    assert main(["preprocess", *images, "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "preprocess.json").read_text())
    assert report["reference"] == "flair" and report["skull_stripped_as_given"] is False
    assert 1200 < report["brain_ml"] < 2000  # an adult brain, not a head
    assert all(r["head_dice"] > 0.95 and r["nmi"] > 1.05 for r in report["registrations"])
    flair = nib.load(str(tmp_path / "flair.nii.gz"))
    raw_flair = nib.load(str(RAW / "flair.nii.gz"))
    assert flair.shape == raw_flair.shape and np.allclose(flair.affine, raw_flair.affine)
    assert nib.load(str(tmp_path / "t2.nii.gz")).shape == raw_flair.shape  # on the reference grid
    capsys.readouterr()
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", *images, "--preprocess", "--out", str(out), "--device", "cpu"]) == 0
    labels = nib.load(str(out))
    assert labels.shape == raw_flair.shape and np.allclose(labels.affine, raw_flair.affine)
    assert "not skull-stripped" not in capsys.readouterr().err  # the model saw brain-only images
    assert {m: (RAW / f"{m}.nii.gz").read_bytes() for m in ("flair", "t1")} == checksums
    with pytest.raises(VolumeError, match="failed the quality check"):  # another patient's stripped T1
        prepare_scans({"flair": load_volume(RAW / "flair.nii.gz", "flair"),
                       "t1": load_volume(REAL_DATA / "glioma_tcga_du7294" / "t1.nii.gz", "t1")})  # fmt: skip


def test_brain_extraction_can_be_forced_on_a_scan_that_looks_stripped(monkeypatch):
    from napari_medadapt.core.preprocess import chain

    stripped = np.where(_head(scalp=False, background_noise=False) > 60, _head(), 0.0)
    calls = []
    monkeypatch.setattr(chain, "extract_brain", lambda array, **_: calls.append(array.shape) or array > 0)
    one = {"t1": _volume(stripped, _affine(), "t1")}
    assert prepare_scans(one, n4="off").brain_mask is None and not calls
    forced = prepare_scans(one, strip="on", n4="off")
    assert calls == [stripped.shape] and forced.brain_mask is not None


def test_a_z_scored_stripped_scan_is_stripped_whatever_its_background_value():
    from _data import SAMPLE_CASE

    from napari_medadapt.core.intensity import background_value, foreground_mask
    from napari_medadapt.core.preprocess.brain import unstripped_note

    flair = load_volume(SAMPLE_CASE / "flair.nii.gz")
    data, spacing = flair.data[0], flair.geometry.spacing
    brain = data != 0
    z_scored = (data - data.mean()) / data.std()  # z-scored over the whole box: the zeros become a constant
    constant = float(z_scored[0, 0, 0])
    assert constant < -0.1 and background_value(z_scored) == constant
    assert check_stripped(z_scored, spacing).stripped
    assert unstripped_note("glioma2d", "FLAIR", z_scored, spacing) is None
    np.testing.assert_array_equal(foreground_mask(z_scored), brain & (z_scored != constant))
    assert background_value(_head()) == 0.0  # a noise floor has no constant value
