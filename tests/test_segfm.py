"""The challenge's case files (restricted unpickler, bad input), its click simulator and metrics, `medadapt segfm`."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_medadapt.core.segfm import (
    SegFMInputError,
    UnsafePickleError,
    auc,
    boxes_from_labels,
    load_case,
    multiclass_scores,
    next_click_3d,
    read_npz,
    surface_dice,
)

MARKER = "medadapt-segfm-pwned"


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _npz_with_pickled(path: Path, key: str, payload: object, **arrays: np.ndarray) -> Path:
    """An .npz whose ``key`` member is an object array header followed by ``payload``'s pickle."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    pickle.dump(payload, buf, protocol=3)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{key}.npy", buf.getvalue())
        for name, value in arrays.items():
            member = io.BytesIO()
            np.save(member, value)
            archive.writestr(f"{name}.npy", member.getvalue())
    return path


def test_restricted_unpickler_refuses_a_payload(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    path = _npz_with_pickled(tmp_path / "evil.npz", "boxes", _Evil(str(marker)), imgs=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UnsafePickleError, match=r"evil\.npz.*'boxes'.*(posix|os)\.system"):
        read_npz(path)
    assert not marker.exists()


def test_restricted_unpickler_reads_the_challenges_structures(tmp_path: Path) -> None:
    center = tuple(np.argwhere(np.ones((3, 3, 3)))[5])  # numpy ints, as the evaluation script stores them
    boxes = [{"z_min": np.int64(0), "z_max": np.int64(2), "z_mid": np.int64(1), "z_mid_x_min": np.int64(0),
              "z_mid_y_min": np.int64(1), "z_mid_x_max": np.int64(3), "z_mid_y_max": np.int64(2)}] * 2
    clicks = [{"fg": [list(center)], "bg": []}, {"fg": [], "bg": []}]
    np.savez_compressed(tmp_path / "c.npz", imgs=np.zeros((3, 4, 4), np.uint8), spacing=np.ones(3), boxes=boxes,
                        clicks=clicks, clicks_order=[["fg"], [None]], prev_pred=np.zeros((3, 4, 4), np.uint8))
    case = load_case(tmp_path / "c.npz")
    assert case.boxes[0].rect == (1, 0, 2, 3) and case.boxes[0].z_mid == 1
    assert case.clicks[0].newest == ((0, 1, 2), True) and case.clicks[1].newest is None
    assert case.n_classes == 2


def _write(path: Path, **arrays) -> None:
    np.savez_compressed(path, **arrays)


BOX = {"z_min": 2, "z_max": 5, "z_mid": 4, "z_mid_x_min": 8, "z_mid_y_min": 8, "z_mid_x_max": 22, "z_mid_y_max": 20}


def _image() -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.ogrid[:8, :32, :32]
    blob = ((zz - 4) / 3.0) ** 2 + ((yy - 14) / 7.0) ** 2 + ((xx - 15) / 8.0) ** 2 <= 1
    return (blob * 200 + 20).astype(np.uint8), blob


def _bad_corpus(folder: Path) -> dict[str, str]:
    """Bad case files and the text their message must contain."""
    img, _ = _image()
    _write(folder / "no_imgs.npz", spacing=np.ones(3), boxes=[BOX])
    _write(folder / "flat.npz", imgs=img[0], boxes=[BOX])
    _write(folder / "four_d.npz", imgs=img[None], boxes=[BOX])
    _write(folder / "click_outside.npz", imgs=img, boxes=[BOX], clicks=[{"fg": [[9, 3, 3]], "bg": []}],
           clicks_order=[["fg"]], prev_pred=np.zeros_like(img))
    _write(folder / "inverted.npz", imgs=img, boxes=[{**BOX, "z_min": 6, "z_max": 3}])
    _write(folder / "box_outside.npz", imgs=img, boxes=[{**BOX, "z_mid_x_max": 40}])
    _write(folder / "no_box.npz", imgs=img, boxes=[BOX],
           clicks=[{"fg": [[4, 14, 15]], "bg": []}, {"fg": [[4, 10, 10]], "bg": []}], clicks_order=[["fg"], ["fg"]])
    _npz_with_pickled(folder / "evil.npz", "boxes", _Evil(str(folder / MARKER)), imgs=img)
    return {
        "no_imgs.npz": "'imgs'", "flat.npz": "'imgs'", "four_d.npz": "'imgs'", "click_outside.npz": "'clicks'",
        "inverted.npz": "'boxes'", "box_outside.npz": "'boxes'", "no_box.npz": "'boxes'", "evil.npz": "refused",
    }


def test_bad_inputs_each_refused_with_one_message(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = _bad_corpus(inputs)
    for name, text in expected.items():
        with pytest.raises(SegFMInputError) as info:
            load_case(inputs / name)
        assert name in str(info.value) and text in str(info.value)
    assert not (inputs / MARKER).exists()


def test_cli_end_to_end_with_bad_files_beside_good_ones(tmp_path: Path, capsys) -> None:
    from napari_medadapt.cli import main

    inputs, outputs, cache = tmp_path / "in", tmp_path / "out", tmp_path / "cache"
    inputs.mkdir()
    outputs.mkdir()
    expected = _bad_corpus(inputs)
    img, blob = _image()
    _write(inputs / "good.npz", imgs=img, spacing=np.array([2.0, 1.0, 1.0]), boxes=[BOX])
    argv = ["segfm", "--inputs", str(inputs), "--outputs", str(outputs), "--model", "sam-small", "--cache-dir", str(cache)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    for name in expected:
        assert err.count(name) == 1, name
    assert sorted(p.name for p in outputs.iterdir()) == ["good.npz"]
    with np.load(outputs / "good.npz") as out:  # our own numeric output: no pickle involved
        segs = out["segs"]
    assert segs.dtype == np.uint8 and segs.shape == img.shape and set(np.unique(segs)) <= {0, 1}
    assert not segs[:2].any() and not segs[6:].any()  # within the box's slab
    # the next step: a click, the previous prediction passed back; the cache holds the embeddings already
    _write(inputs / "good.npz", imgs=img, spacing=np.array([2.0, 1.0, 1.0]), boxes=[BOX], prev_pred=segs,
           clicks=[{"fg": [[4, 14, 15]], "bg": []}], clicks_order=[["fg"]])
    for name in expected:
        (inputs / name).unlink()
    assert main(argv) == 0
    assert any(cache.rglob("*.npy"))


def _cube(shape, lo, size) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def test_click_simulator_largest_error_component_edt_maximum() -> None:
    shape = (20, 20, 20)
    target = _cube(shape, (2, 2, 2), 9)
    pred = target & ~_cube(shape, (4, 4, 4), 5)  # a missed 5^3 hole: under-segmentation
    pred |= _cube(shape, (15, 15, 15), 2)  # a smaller false positive elsewhere
    click = next_click_3d(pred, target)
    assert click.foreground and click.zyx == (6, 6, 6)
    over = target | _cube(shape, (12, 3, 3), 7)  # over-segmentation is now the largest error
    click = next_click_3d(over, target)
    assert not click.foreground and click.zyx == (15, 6, 6)
    assert next_click_3d(target, target) is None


def test_click_simulator_ties_are_drawn_with_seed_42() -> None:
    shape = (12, 12, 12)
    target = _cube(shape, (2, 2, 2), 4)  # 8 voxels share the EDT maximum
    click = next_click_3d(np.zeros(shape, bool), target)
    state = np.random.get_state()  # noqa: NPY002 - the evaluation script's own calls, for comparison
    np.random.seed(42)  # noqa: NPY002
    index = np.random.choice(8)  # noqa: NPY002
    np.random.set_state(state)  # noqa: NPY002
    from napari_medadapt.core.segfm import component_edt

    edt = component_edt(target)
    maxima = np.argwhere(edt == edt.max())
    assert len(maxima) == 8 and click.zyx == tuple(maxima[index]) and click.foreground


def test_boxes_metrics_and_auc() -> None:
    labels = np.zeros((10, 30, 30), np.uint8)
    labels[2:7, 5:15, 6:20] = 1
    labels[4, 20:25, 20:25] = 2
    boxes = boxes_from_labels(labels)
    assert boxes[0]["z_min"] == 2 and boxes[0]["z_max"] == 6 and boxes[0]["z_mid"] == 4
    assert boxes[0]["z_mid_y_min"] <= 5 and boxes[0]["z_mid_x_max"] >= 19
    assert boxes[1]["z_min"] == boxes[1]["z_max"] == 4
    a = labels == 1
    assert surface_dice(a, a, (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    assert surface_dice(a, np.roll(a, 1, axis=2), (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    assert surface_dice(a, np.roll(a, 4, axis=2), (1.0, 1.0, 1.0), 2.0) < 0.9
    dsc, nsd = multiclass_scores(labels, labels, (1.0, 1.0, 1.0))
    assert dsc == 1.0 and nsd == pytest.approx(1.0)
    assert multiclass_scores(labels, np.zeros_like(labels), (1.0, 1.0, 1.0)) == (0.0, 0.0)
    assert auc([0.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)


def test_a_case_without_boxes_starts_from_clicks_and_classes_never_overlap(tmp_path: Path) -> None:
    from test_objects3d import BrightPredictor

    from napari_medadapt.core.segfm import predict_case

    img, blob = _image()
    img[:, :, 27:31] = 220  # a second bright object, to the right
    clicks = [{"fg": [[4, 14, 15]], "bg": []}, {"fg": [[4, 14, 28]], "bg": []}]
    _write(tmp_path / "c.npz", imgs=img, spacing=np.ones(3), clicks=clicks, clicks_order=[["fg"], ["fg"]],
           prev_pred=np.zeros_like(img))
    segs = predict_case(load_case(tmp_path / "c.npz"), BrightPredictor())
    assert segs[4, 14, 15] == 1 and segs[4, 14, 28] == 2
    assert segs[2, 14, 15] == 1 and segs[7, 14, 28] == 2  # both travelled to the neighbouring slices
