"""3D propagation stops where the object ends, honours stop slices, ranges and cancellation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadapt.core.jobs import JobCancelled, JobContext
from napari_medadapt.core.sam.model import MaskPrediction
from napari_medadapt.core.sam.prompts import Prompts
from napari_medadapt.core.sam.propagation import interpolate_masks, propagate


class ThresholdPredictor:
    """Stand-in for SamPredictor: the bright voxels inside the prompt box (grown by 3 px), or those
    connected to the prompt points. Lets the propagation logic be tested without a trained model.
    Records the embedding batches propagation asks for (slices are keyed by their bytes)."""

    def __init__(self) -> None:
        self.embedded: set[bytes] = set()
        self.batches: list[int] = []

    def is_cached(self, image: np.ndarray, window) -> bool:
        return image.tobytes() in self.embedded

    def precompute(self, slices, window, batch_size: int = 8) -> None:
        self.batches.append(len(slices))
        self.embedded.update(s.tobytes() for s in slices)

    def predict(self, image: np.ndarray, window, prompts: Prompts) -> MaskPrediction:
        from scipy import ndimage

        bright = image > 0.5
        if prompts.box is not None:
            r0, c0, r1, c1 = (int(v) for v in prompts.box)
            region = np.zeros_like(bright)
            region[max(0, r0 - 3) : r1 + 4, max(0, c0 - 3) : c1 + 4] = True
            mask = bright & region
        else:
            labels, _ = ndimage.label(bright)
            ids = {labels[int(r), int(c)] for r, c in prompts.points} - {0}
            mask = np.isin(labels, list(ids))
        return MaskPrediction(mask, mask[None], np.array([0.9]), 0, np.zeros((1, 8, 8), np.float32))


def _sphere(shape=(40, 48, 48), center=(20, 24, 24), radius=9.0) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2) <= radius**2


@pytest.mark.parametrize("mode", ["box", "points"])
def test_propagation_stops_where_the_sphere_ends(mode: str) -> None:
    sphere = _sphere()
    volume = sphere.astype(np.float32)
    volume[2:6, 20:28, 20:28] = 1.0  # a separate bright object further down must not be reached
    result = propagate(ThresholdPredictor(), volume, {20: sphere[20]}, (0.0, 1.0), mode=mode)
    filled = result.slices
    z_sphere = np.flatnonzero(sphere.any(axis=(1, 2)))
    assert filled[0] >= z_sphere[0] and filled[-1] <= z_sphere[-1]
    assert len(filled) >= len(z_sphere) - 4
    assert not result.mask[2:6].any()
    assert result.stopped["down"] in ("empty", "iou", "area") and result.stopped["up"] in ("empty", "iou", "area")
    dice = 2 * (result.mask & sphere).sum() / (result.mask.sum() + sphere.sum())
    assert dice > 0.95


def test_stop_slices_range_axis_and_cancel() -> None:
    sphere = _sphere()
    volume = sphere.astype(np.float32)
    result = propagate(ThresholdPredictor(), volume, {20: sphere[20]}, (0.0, 1.0), mode="box",
                       stop_slices={24}, index_range=(17, 40))
    assert result.slices == list(range(17, 24))
    assert result.stopped == {"down": "range", "up": "stop-slice"}
    sideways = propagate(ThresholdPredictor(), np.moveaxis(volume, 0, 2), {24: sphere[:, :, 24].T},
                         (0.0, 1.0), axis=0, mode="box")
    assert sideways.mask.shape == (48, 48, 40)
    column = np.zeros((12, 30, 30), np.float32)
    column[:, 10:20, 10:20] = 1.0  # an object that runs through the whole volume
    through = propagate(ThresholdPredictor(), column, {6: column[6] > 0}, (0.0, 1.0), mode="box")
    assert through.stopped == {"down": "edge", "up": "edge"} and through.mask[:, 10:20, 10:20].all()
    assert len(through.slices) == 12
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(JobCancelled):
        propagate(ThresholdPredictor(), volume, {20: sphere[20]}, (0.0, 1.0), mode="box", ctx=ctx)


def test_interpolation_between_two_annotated_slices() -> None:
    sphere = _sphere()
    volume = sphere.astype(np.float32)
    result = propagate(ThresholdPredictor(), volume, {15: sphere[15], 25: sphere[25]}, (0.0, 1.0), mode="box")
    sources = {s.index: s.source for s in result.stats}
    assert all(sources[i] == "interpolated" for i in range(16, 25))
    assert sources[15] == sources[25] == "seed"
    mid = interpolate_masks(sphere[15], sphere[25], 0.5)
    assert abs(int(mid.sum()) - int(sphere[15].sum())) < 0.2 * sphere[15].sum()


def test_propagation_stops_where_the_tissue_changes() -> None:
    volume = np.zeros((30, 32, 32), np.float32)
    volume[5:20, 10:22, 10:22] = 1.0  # the object
    volume[20:28, 10:22, 10:22] = 0.7  # different tissue the box prompt would happily follow
    result = propagate(ThresholdPredictor(), volume, {12: volume[12] > 0.5}, (0.0, 1.0), mode="box")
    assert result.stopped["up"] == "intensity" and result.slices[-1] == 19
    assert result.stopped["down"] in ("empty", "iou")
    unchecked = propagate(ThresholdPredictor(), volume, {12: volume[12] > 0.5}, (0.0, 1.0), mode="box",
                          intensity_tolerance=None)
    assert unchecked.slices[-1] == 27


def test_slices_ahead_are_embedded_in_batches_once() -> None:
    sphere = _sphere()
    volume = sphere.astype(np.float32) + np.random.default_rng(0).uniform(0, 0.1, sphere.shape).astype(np.float32)
    predictor = ThresholdPredictor()
    result = propagate(predictor, volume, {20: sphere[20]}, (0.0, 1.0), mode="box", prefetch=4)
    propagated = len(result.slices) - 1
    assert all(1 <= size <= 4 for size in predictor.batches)
    assert len(predictor.batches) <= propagated // 4 + 4  # a few short batches near the ends
    assert len(predictor.embedded) == sum(predictor.batches)  # no slice embedded twice
    single = ThresholdPredictor()
    propagate(single, volume, {20: sphere[20]}, (0.0, 1.0), mode="box", prefetch=1)
    assert single.batches == []  # prefetch 1: the predictor embeds each slice itself


def test_bench_report_says_which_propagation_run_the_timing_comes_from(tmp_path) -> None:
    from napari_medadapt.bench._sam_report import write_markdown

    timing = {"propagation_timed_mode": "box", "propagation_timed_slices": 30, "propagation_100_slices_s_cached": 3.7}
    case = {"image": "ct.nii.gz", "label_values": [5], "model": "sam-small", "model_sha256": "0" * 64, "axis": 0,
            "window": (-100.0, 200.0), "slices_with_target": 30, "baseline_slices": 15, "methods": {},
            "box_iou_mean": 0.4, "box_iou_median": 0.4, "timing": timing,
            "propagation": {"target_slices": 30, "mask": {"dice_3d": 0.3, "slices_filled": 5, "stopped": {}}}}  # fmt: skip
    write_markdown({"cases": [case]}, tmp_path / "sam.md")
    text = (tmp_path / "sam.md").read_text()
    assert "scaled to 100 slices from the box-mode run (30 slices" in text
    assert "| propagation through 100 slices (embeddings cached, wall) | 3.700 | <= 5 | yes |" in text


def test_box_margin_mode_widens_the_box_and_retries_the_annotated_box() -> None:
    """LiteMedSAM's recipe: the neighbour's box + 3 input pixels (scaled to the slice), and where the neighbour's
    box finds nothing, the annotated slice's box once more before the direction stops."""
    from types import SimpleNamespace

    from napari_medadapt.core.sam.propagation import _neighbour_prompts

    mask = np.zeros((64, 128), bool)
    mask[10:20, 30:40] = True
    assert _neighbour_prompts(mask, "box-margin", None, margin=(1.5, 1.5)).box == (8.5, 28.5, 20.5, 40.5)
    assert _neighbour_prompts(mask, "box", None).box == (10, 30, 19, 39)
    edge = np.zeros((64, 128), bool)
    edge[0:5, 120:128] = True
    assert _neighbour_prompts(edge, "box-margin", None, margin=(3.0, 3.0)).box == (0.0, 117.0, 7.0, 127.0)

    class Shifting(ThresholdPredictor):
        """The object moves sideways out of the neighbour's box at slice 13: only the seed box finds it."""

        model = SimpleNamespace(input_size=lambda shape: (256, 256))  # a 48 x 48 slice scaled to 256

        def __init__(self) -> None:
            super().__init__()
            self.boxes: list[tuple] = []

        def predict(self, image, window, prompts):
            self.boxes.append(prompts.box)
            return super().predict(image, window, prompts)

    volume = np.zeros((20, 48, 48), np.float32)
    volume[6:13, 10:20, 10:20] = 1.0
    volume[13:16, 10:20, 30:40] = 1.0  # jumps out of the previous slice's box, stays inside the annotated box
    seed_with_far_part = volume[10] > 0.5
    seed_with_far_part[10:20, 30:40] = True  # the annotation spans both places
    predictor = Shifting()
    result = propagate(predictor, volume, {10: seed_with_far_part}, (0.0, 1.0), mode="box-margin",
                       iou_threshold=0.0, max_area_ratio=100.0, intensity_tolerance=None)
    assert 13 in result.slices and 15 in result.slices  # found again with the annotated box
    seed_box = _neighbour_prompts(seed_with_far_part, "box-margin", None, (3 * 48 / 256, 3 * 48 / 256)).box
    assert seed_box in predictor.boxes
