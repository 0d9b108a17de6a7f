"""napari reader, writer, sample data and layer helpers: open -> draw -> save -> reload with nibabel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _data import REAL_DATA, needs_real_data
from _data import SAMPLE_CASE as SAMPLE_DIR
from npe2 import PluginManifest

import napari_medadapt
from napari_medadapt._reader import napari_get_reader, read_into_viewer, read_paths
from napari_medadapt._sample_data import SAMPLE_CASE, sample_case_dir
from napari_medadapt._writer import write_labels
from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.volume import Geometry, read_geometry
from napari_medadapt.widgets._layers import (
    image_layers_by_modality,
    labels_layer_kwargs,
    layer_geometry,
    set_labels_undoable,
    volume_from_layers,
)

GLIOMA = SAMPLE_DIR
CT = REAL_DATA / "ct_abdomen_totalseg_example" / "ct.nii.gz"
MANIFEST = Path(napari_medadapt.__file__).parent / "napari.yaml"
PLUGIN = "napari-medadapt"


@pytest.fixture(scope="module")
def glioma_crop(tmp_path_factory) -> Path:
    """A crop around the tumour of the real glioma case (four modalities + reference labels)."""
    folder = tmp_path_factory.mktemp("glioma_crop")
    crop = (slice(56, 108), slice(52, 120), slice(58, 116))
    for name in ("t1", "t1c", "t2", "flair", "seg_fusion"):
        nib.save(nib.load(str(GLIOMA / f"{name}.nii.gz")).slicer[crop], str(folder / f"{name}.nii.gz"))
    return folder


def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.round((affine @ np.c_[indices, np.ones(len(indices))].T).T[:, :3], 3)


def _assert_same_world_voxels(saved_path: Path, drawn: np.ndarray, geometry: Geometry, source: Path) -> None:
    saved, src = nib.load(str(saved_path)), nib.load(str(source))
    assert saved.shape == src.shape[:3]
    np.testing.assert_allclose(saved.affine, src.affine, atol=1e-6)
    for code in ("qform_code", "sform_code"):
        assert int(saved.header[code]) == int(src.header[code])
    assert nib.aff2axcodes(saved.affine) == nib.aff2axcodes(src.affine)
    data = np.asarray(saved.dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    for value in np.unique(drawn[drawn > 0]):
        world_saved = _world(saved.affine, np.argwhere(data == value))
        world_drawn = _world(geometry.display_affine, np.argwhere(drawn == value))
        assert len(world_saved) == len(world_drawn) > 0
        assert {tuple(w) for w in world_saved} == {tuple(w) for w in world_drawn}


def test_manifest_declares_reader_writer_sample():
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN and manifest.display_name == "MedAdapt"
    contributions = manifest.contributions
    assert contributions.readers[0].accepts_directories
    assert contributions.writers[0].layer_types == ["labels"]
    assert contributions.sample_data[0].key == SAMPLE_CASE
    ours = {c.id: c.python_name for c in contributions.commands}
    assert ours["napari-medadapt.read_nifti"] == "napari_medadapt._reader:napari_get_reader"
    assert ours["napari-medadapt.write_labels"] == "napari_medadapt._writer:write_labels"
    assert ours["napari-medadapt.sample_glioma"] == "napari_medadapt._sample_data:glioma_sample"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("npe2")), "validate", str(MANIFEST)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_reader_manifest_and_sample_path_do_not_import_torch():
    code = (
        "import sys\n"
        "from npe2 import PluginManifest\n"
        "import napari_medadapt._reader, napari_medadapt._writer, napari_medadapt._sample_data\n"
        "import napari_medadapt.widgets._layers\n"
        f"manifest = PluginManifest.from_file({str(MANIFEST)!r})\n"
        "napari_medadapt._sample_data.sample_case_dir()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@needs_real_data
def test_sample_case_is_bundled_with_attribution():
    folder = sample_case_dir()
    names = {p.name for p in folder.iterdir()}
    expected = {"t1.nii.gz", "t1c.nii.gz", "t2.nii.gz", "flair.nii.gz", "seg_fusion.nii.gz"}
    assert expected | {"SOURCE.txt", "ATTRIBUTION.md", "LICENSE_repo_Apache-2.0.txt"} <= names
    attribution = (folder / "ATTRIBUTION.md").read_text()
    assert "CC BY 3.0" in attribution and "TCGA-LGG" in attribution and "Clark" in attribution
    for name in expected:  # unmodified copies of the shared real data
        assert (folder / name).read_bytes() == (REAL_DATA / "glioma_tcga_fg6692" / name).read_bytes()


def test_reader_layer_data(glioma_crop, tmp_path):
    reader = napari_get_reader(str(glioma_crop))
    assert reader is read_into_viewer
    layers = reader(str(glioma_crop))
    assert [(kw["name"], kind) for _d, kw, kind in layers] == [
        ("t1", "image"), ("t1c", "image"), ("t2", "image"), ("flair", "image"), ("seg_fusion", "labels"),
    ]
    geometry = read_geometry(glioma_crop / "t1.nii.gz")
    for data, kwargs, kind in layers:
        meta = kwargs["metadata"]["medadapt"]
        assert meta["geometry"].matches(geometry) and Path(meta["source_path"]).parent == glioma_crop
        assert data.shape == geometry.display_shape and kwargs["scale"] == geometry.spacing
        if kind == "image":
            assert kwargs["colormap"] == "gray" and meta["modality"] == kwargs["name"]
            low, high = kwargs["contrast_limits"]
            assert data[data != 0].min() <= low < high <= data.max()
    assert napari_get_reader(str(tmp_path)) is None  # no NIfTI inside
    assert napari_get_reader("scan.png") is None
    single = read_paths([str(glioma_crop / "seg_fusion.nii.gz")])
    assert single[0][2] == "labels" and set(np.unique(single[0][0])) == {0, 1, 2, 4}


def test_open_draw_save_reload_real_glioma(make_napari_viewer, glioma_crop, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(glioma_crop), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["t1", "t1c", "t2", "flair", "seg_fusion"]
    geometry = layer_geometry(viewer.layers["t1"])
    drawn = viewer.add_labels(np.zeros(geometry.display_shape, np.uint8), **labels_layer_kwargs(geometry, "drawn"))
    drawn.brush_size = 3
    drawn.paint((10, 20, 30), 2)
    drawn.paint((40, 5, 7), 1)
    assert drawn.data.sum() > 0
    out = tmp_path / "drawn.nii.gz"
    viewer.layers["drawn"].save(str(out), plugin=PLUGIN)
    _assert_same_world_voxels(out, np.asarray(drawn.data), geometry, glioma_crop / "t1.nii.gz")
    # the reference labels survive open -> save unchanged
    viewer.layers["seg_fusion"].save(str(tmp_path / "seg_copy.nii.gz"), plugin=PLUGIN)
    original = np.asarray(nib.load(str(glioma_crop / "seg_fusion.nii.gz")).dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "seg_copy.nii.gz")).dataobj), original)


@needs_real_data
def test_open_draw_save_reload_real_ras_ct(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(CT), plugin=PLUGIN)
    assert image.name == "ct" and image.contrast_limits == [-150.0, 250.0]
    np.testing.assert_allclose(image.scale, (3.0, 3.0, 3.0))
    # a labels layer made with napari's "new labels" button has no metadata: the image's grid is used
    drawn = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="organ")
    drawn.paint((15, 50, 60), 5)
    out = tmp_path / "organ"  # no suffix: .nii.gz is added
    (written,) = write_labels(str(out), drawn.data, {"metadata": dict(drawn.metadata)})
    assert written.endswith("organ.nii.gz")
    _assert_same_world_voxels(Path(written), np.asarray(drawn.data), layer_geometry(image), CT)
    (tmp_path / "scan.nii.gz").write_bytes(b"not a NIfTI file" * 64)
    with pytest.raises(VolumeError, match="cannot be read as NIfTI"):
        viewer.open(str(tmp_path / "scan.nii.gz"), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["ct", "organ"]


def test_writer_errors(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 5, 6)), name="plain")
    with pytest.raises(VolumeError, match=r"No image layer of shape \(4, 5, 6\)"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((4, 5, 6), np.uint8), {"metadata": {}})
    geometry = Geometry.from_display_grid((4, 5, 6))
    meta = labels_layer_kwargs(geometry)["metadata"]
    with pytest.raises(VolumeError, match=r"\(3, 5, 6\).*\(4, 5, 6\)"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((3, 5, 6), np.uint8), {"metadata": meta})
    assert list(tmp_path.iterdir()) == []
    other = Geometry.from_display_grid((4, 5, 6), spacing=(2.0, 1.0, 1.0))
    for name, grid in (("a", geometry), ("b", other)):
        viewer.add_image(np.zeros((4, 5, 6)), name=name, metadata={"medadapt": {"geometry": grid}})
    assert viewer.layers.selection == {viewer.layers["b"]}  # a selected image decides
    write_labels(str(tmp_path / "x.nii.gz"), np.zeros((4, 5, 6), np.uint8), {"metadata": {}})
    np.testing.assert_allclose(nib.load(str(tmp_path / "x.nii.gz")).affine, other.source_affine)
    viewer.layers.selection.clear()
    with pytest.raises(VolumeError, match="different voxel grids"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((4, 5, 6), np.uint8), {"metadata": {}})
    viewer.layers["b"].visible = False  # otherwise the one visible image decides
    write_labels(str(tmp_path / "y.nii.gz"), np.zeros((4, 5, 6), np.uint8), {"metadata": {}})
    np.testing.assert_allclose(nib.load(str(tmp_path / "y.nii.gz")).affine, geometry.source_affine)


def test_set_labels_undoable(make_napari_viewer):
    viewer = make_napari_viewer()
    old = np.zeros((3, 8, 8), np.uint8)
    old[1, 2:4, 2:4] = 1
    layer = viewer.add_labels(old.copy())
    new = np.zeros_like(old)
    new[0, 5:8, 5:8] = 2
    assert set_labels_undoable(layer, new) == 4 + 9
    np.testing.assert_array_equal(layer.data, new)
    layer.undo()
    np.testing.assert_array_equal(layer.data, old)
    layer.redo()
    np.testing.assert_array_equal(layer.data, new)
    assert set_labels_undoable(layer, new) == 0
    with pytest.raises(VolumeError, match="shape"):
        set_labels_undoable(layer, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(VolumeError, match="do not fit"):
        set_labels_undoable(layer, np.full(old.shape, 300))


def test_layers_to_volume(make_napari_viewer, glioma_crop):
    viewer = make_napari_viewer()
    viewer.open(str(glioma_crop), plugin=PLUGIN)
    viewer.layers["t1c"].name = "T1ce"  # a renamed layer still maps through its metadata
    by_modality = image_layers_by_modality(viewer)
    assert sorted(by_modality) == ["flair", "t1", "t1c", "t2"]
    volume = volume_from_layers(by_modality, ["flair", "t1"])
    assert volume.channels == ("flair", "t1") and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.channel("t1"), viewer.layers["t1"].data)
    assert volume.geometry.matches(read_geometry(glioma_crop / "t1.nii.gz"))
    assert volume.source_paths[1].endswith("t1.nii.gz")
    with pytest.raises(VolumeError, match="pd"):
        volume_from_layers(by_modality, ["t1", "pd"])
    small = viewer.add_image(np.zeros((3, 4, 5)), name="t2")
    with pytest.raises(VolumeError, match="not on the grid"):
        volume_from_layers({"t1": by_modality["t1"], "t2": small})
    flat = viewer.add_image(np.zeros((4, 5)), name="pd")
    with pytest.raises(VolumeError, match="2D data"):
        volume_from_layers({"pd": flat})
    rgb = viewer.add_image(np.zeros((4, 5, 6, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(VolumeError, match="RGB"):
        volume_from_layers({"t1": rgb})
    plain = volume_from_layers({"t2": small})  # no metadata: grid from the layer's scale
    assert plain.geometry.display_shape == (3, 4, 5)


def test_open_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE_CASE)
    assert [layer.name for layer in viewer.layers] == ["t1", "t1c", "t2", "flair", "seg_fusion"]
    assert viewer.layers["flair"].data.shape == (155, 240, 240)
    assert int((viewer.layers["seg_fusion"].data == 4).sum()) == 6840
