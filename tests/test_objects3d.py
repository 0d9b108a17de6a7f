"""The 3D object model: a box stays in its slab, a click extends or trims the object, undo, no overlap."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadapt.core.interactive import Box3D, Click, Lasso, MaskPrompt, ObjectSet, Scribble, SliceEngine
from napari_medadapt.core.interactive.slice_rules import box_cut_at
from napari_medadapt.core.sam.model import MaskPrediction


class _Model:
    image_size, grid = 64, 16
    fallback_reason = None
    weights_hash = "stand-in"

    def input_size(self, shape):
        scale = 64 / max(shape)
        return int(round(shape[0] * scale)), int(round(shape[1] * scale))


class BrightPredictor:
    """Stand-in for SamPredictor: the bright voxels inside the box (or, without one, connected to a positive
    click), minus the bright component under a negative click. Makes the object logic testable exactly."""

    model = _Model()

    def window_for(self, data, window):
        return (0.0, 255.0)

    def is_cached(self, image, window):
        return True

    def precompute(self, slices, window, batch_size=None):
        return None

    def predict(self, image, window, prompts):
        from scipy import ndimage

        bright = image > 127
        labels, _ = ndimage.label(bright)
        if prompts.box is not None:
            r0, c0, r1, c1 = (int(round(v)) for v in prompts.box)
            region = np.zeros_like(bright)
            region[r0 : r1 + 1, c0 : c1 + 1] = True
            mask = bright & region
        else:
            ids = {labels[int(r), int(c)] for (r, c), lab in zip(prompts.points, prompts.labels, strict=True) if lab == 1} - {0}
            mask = np.isin(labels, list(ids))
        for (r, c), lab in zip(prompts.points, prompts.labels, strict=True):
            if lab == 0 and labels[int(r), int(c)]:
                mask &= labels != labels[int(r), int(c)]
        return MaskPrediction(mask, mask[None], np.array([0.9]), 0, np.zeros((1, 64, 64), np.float32))


def _blob(shape=(24, 40, 40), center=(12, 20, 14), radii=(8, 9, 7)) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2 <= 1


def _box(mask: np.ndarray, z_min: int, z_max: int) -> Box3D:
    z_mid = (z_min + z_max) // 2
    ys, xs = np.nonzero(mask[z_mid])
    return Box3D(z_min, z_max, z_mid, (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())))


@pytest.fixture()
def scene():
    blob = _blob()
    volume = (blob * 200 + 20).astype(np.uint8)
    objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255)))
    return blob, volume, objects


def test_box_with_the_small_model_stays_in_its_slab() -> None:
    from napari_medadapt.core.sam import SamPredictor

    blob = _blob()
    volume = (blob * 180 + 30).astype(np.uint8)
    objects = ObjectSet(SliceEngine(SamPredictor("sam-small"), volume, (0, 255)))
    obj = objects.add("blob")
    mask = objects.interact(obj, _box(blob, 9, 15))
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    assert zs.size and zs.min() >= 9 and zs.max() <= 15
    assert (mask & blob).sum() > 0.5 * mask.sum()


def test_box_fills_the_slab(scene) -> None:
    blob, _, objects = scene
    obj = objects.add()
    mask = objects.interact(obj, _box(blob, 6, 18))
    assert np.array_equal(np.flatnonzero(mask.any(axis=(1, 2))), np.arange(6, 19))
    assert not (mask & ~blob).any()


@pytest.mark.parametrize("travel", ["local", "replace"])
def test_foreground_click_beyond_the_end_extends_the_object(scene, travel: str) -> None:
    blob, volume, _ = scene
    objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255), travel=travel))
    start = blob.copy()
    start[16:] = False  # the object stops short of the blob's end (slice 19)
    obj = objects.add(mask=start, interactions=[_box(blob, 8, 15)])
    mask = objects.interact(obj, Click((17, 20, 14), True))
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    assert zs.max() >= 19 and zs.max() <= 20
    assert all(mask[z].any() for z in range(16, 20)) and not (mask & ~blob).any()


def test_background_click_past_the_end_trims(scene) -> None:
    blob, volume, objects = scene
    leaking = blob.copy()
    leaking[19:23] = blob[18]  # the object leaks 4 slices past the blob's end
    volume[19:23] = 20
    obj = objects.add(mask=leaking)
    shown = {}
    objects.engine.watch(None, lambda axis, z, mask2d: shown.__setitem__(z, mask2d.copy()))
    mask = objects.interact(obj, Click((20, 20, 14), False))
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    assert zs.max() == 19 - 1 or zs.max() == 19  # slice 20 and beyond removed
    assert not mask[20:].any() and mask[5:19].sum() == blob[5:19].sum()
    # a dock's live view is told about every slice that went, not only the clicked one
    assert {20, 21, 22} <= set(shown) and not any(shown[z].any() for z in (20, 21, 22))


def test_clicks_on_one_slice_only_leave_the_neighbours(scene) -> None:
    blob, volume, _ = scene
    objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255), spread=False))
    start = blob.copy()
    start[16:] = False
    obj = objects.add(mask=start)
    mask = objects.interact(obj, Click((17, 20, 14), True))
    assert mask[17].any() and not mask[18].any()


def test_undo_restores_the_previous_mask(scene) -> None:
    blob, _, objects = scene
    obj = objects.add()
    first = objects.interact(obj, _box(blob, 8, 15)).copy()
    objects.interact(obj, Click((18, 20, 14), True))
    assert objects.can_undo(obj)
    assert np.array_equal(objects.undo(obj), first)
    assert np.array_equal(objects.undo(obj), np.zeros_like(first))
    assert not objects.can_undo(obj)


def test_two_objects_never_overlap_and_undo_gives_voxels_back(scene) -> None:
    blob, _, objects = scene
    a = objects.add("a", mask=blob)
    b = objects.add("b")
    objects.interact(b, MaskPrompt(blob[:, :, :] & (np.arange(40)[None, None, :] < 14)))
    assert not (objects.objects[a].mask & objects.objects[b].mask).any()
    assert objects.objects[b].mask.any()
    objects.undo(b)
    assert np.array_equal(objects.objects[a].mask, blob)
    labels = objects.labels()
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_scribble_and_lasso_update_the_object(scene) -> None:
    blob, _, objects = scene
    obj = objects.add()
    scribble = np.zeros_like(blob)
    scribble[12, 18:23, 12:16] = True
    mask = objects.interact(obj, Scribble(scribble, True))
    assert mask[12].any() and mask[10].any() and mask[14].any()
    ys, xs = np.nonzero(blob[12])
    poly = ((ys.min() - 1, xs.min() - 1), (ys.min() - 1, xs.max() + 1), (ys.max() + 1, xs.max() + 1), (ys.max() + 1, xs.min() - 1))
    obj2 = objects.add("lasso")
    objects.undo(obj)
    mask2 = objects.interact(obj2, Lasso(12, poly, True))
    assert (mask2 & blob).sum() > 0.8 * blob.sum()


@pytest.mark.parametrize("scope", ["slice", "local", "connected"])
def test_click_scope_local_keeps_only_the_change_at_the_click(scope: str) -> None:
    volume = np.full((10, 40, 40), 20, np.uint8)
    volume[:, 5:13, 5:13] = 220  # A: the object
    volume[:, 5:13, 25:33] = 220  # B: where the user clicks
    volume[:, 6:11, 17:21] = 220  # C: bright too, inside the grown box, away from the click
    start = np.zeros(volume.shape, bool)
    start[:, 5:13, 5:13] = True
    objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255), click_scope=scope))
    obj = objects.add(mask=start)
    mask = objects.interact(obj, Click((5, 8, 28), True))
    assert mask[5, 8, 28] and mask[5, 8, 8]
    assert mask[5, 8, 18] == (scope == "slice")


def test_box_round_trips_through_its_cuboid_and_other_planes() -> None:
    from napari_medadapt.core.interactive import in_frame

    box = Box3D(4, 9, 6, (10, 12, 20, 30), axis=1)
    assert box.ranges() == [(10, 20), (4, 9), (12, 30)]
    on_axial = in_frame(box, 0, (24, 40, 40))
    assert (on_axial.z_min, on_axial.z_max, on_axial.rect) == (10, 20, (4, 12, 9, 30))
    assert Box3D.from_ranges(box.ranges(), 1) == box
    lasso = Lasso(7, ((2, 2), (2, 8), (8, 8), (8, 2)), True, axis=2)
    moved = in_frame(lasso, 0, (24, 40, 40))
    assert isinstance(moved, Scribble)
    assert moved.mask[2:9, 2:9, 7].all() and moved.mask.sum() == 49  # the filled polygon on sagittal slice 7
    on_coronal = in_frame(lasso, 1, (24, 40, 40))  # frame of axis 1: (y, z, x)
    assert on_coronal.mask[2:9, 2:9, 7].all() and on_coronal.mask.sum() == 49


def test_a_click_on_a_coronal_slice_updates_the_object_along_the_coronal_axis(scene) -> None:
    blob, volume, objects = scene
    start = blob.copy()
    start[:, 24:, :] = False  # rows (axis 1) past 23 missing: the object stops short along y
    obj = objects.add(mask=start)
    mask = objects.interact(obj, Click((12, 25, 14), True, axis=1))
    ys = np.flatnonzero(mask.any(axis=(0, 2)))
    end = np.flatnonzero(blob.any(axis=(0, 2))).max()
    assert end - 1 <= ys.max() <= end  # extended to the blob's end along y (its last row has under min_area voxels)
    assert not (mask & ~blob).any()
    # the same click given on an axial slice changes slice 12 and its axial neighbours instead
    axial = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255)))
    other = axial.add(mask=start)
    got = axial.interact(other, Click((12, 25, 14), True, axis=0))
    assert got[12, 25:].any() and not np.array_equal(got, mask)


def test_a_click_in_another_plane_works_on_the_slices_of_the_objects_box(scene) -> None:
    blob, volume, _ = scene
    start = blob.copy()
    start[16:] = False
    results = []
    for axis in (0, 1):
        objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255)))
        obj = objects.add(mask=start, interactions=[_box(blob, 8, 15)])
        results.append(objects.interact(obj, Click((17, 20, 14), True, axis=axis)))
    np.testing.assert_array_equal(results[0], results[1])  # the coronal click acts on the box's axial slices
    assert results[0][17:20].any()


def test_a_box_on_a_sagittal_slice_stays_in_its_cuboid(scene) -> None:
    blob, _, objects = scene
    obj = objects.add()
    xs = np.flatnonzero(blob.any(axis=(0, 1)))
    x_mid = int(xs.mean())
    zs, ys = np.nonzero(blob[:, :, x_mid])
    rect = (int(zs.min()), int(ys.min()), int(zs.max()), int(ys.max()))
    mask = objects.interact(obj, Box3D(int(xs.min()) + 2, int(xs.max()) - 2, x_mid, rect, axis=2))
    got_x = np.flatnonzero(mask.any(axis=(0, 1)))
    assert got_x.min() == xs.min() + 2 and got_x.max() == xs.max() - 2
    assert not (mask & ~blob).any() and mask.sum() > 0.6 * blob.sum()


def test_editor_jobs_show_the_growing_object_and_a_cancel_changes_nothing(scene) -> None:
    from napari_medadapt.core.interactive import LiveMask, ObjectEditor
    from napari_medadapt.core.jobs import JobCancelled, JobContext
    from napari_medadapt.core.sam.workspace import ModelChoice, SamWorkspace

    blob, volume, _ = scene
    sam = SamWorkspace()
    choice = ModelChoice("bright")
    sam.use(choice, BrightPredictor())
    editor = ObjectEditor(sam)
    live, seen, shown = LiveMask(), [], np.zeros(volume.shape, bool)

    def look(done: int, total: int, message: str) -> None:  # what a dock draws: the slices decided since its last look
        taken = live.take_changes()
        if taken is not None:
            for (axis, index), plane in taken[1].items():
                np.moveaxis(shown, axis, 0)[index] = plane
        seen.append((message, None if taken is None else (taken[0], shown.copy())))

    ctx = JobContext(look)
    snap = editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), None, _box(blob, 6, 18),
                           name="tumour", live=live, ctx=ctx)
    (summary,) = snap.objects
    assert summary.name == "tumour" and summary.voxels == int((snap.labels == summary.id).sum())
    assert summary.millilitres == pytest.approx(summary.voxels * 2.0 / 1000.0) and summary.undo_steps == 1
    grown = [int(m[1].sum()) for _, m in seen if m is not None]
    assert len(grown) > 5 and grown == sorted(grown) and grown[1] < summary.voxels  # shown while it grew

    cancelled = JobContext()
    cancelled.cancel()
    with pytest.raises(JobCancelled):
        editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), summary.id, Click((19, 20, 14), True),
                        ctx=cancelled)
    with pytest.raises(JobCancelled):
        editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), None, Click((12, 20, 14), True),
                        name="second", ctx=cancelled)
    after = editor.snapshot("flair")
    assert np.array_equal(after.labels, snap.labels) and [o.name for o in after.objects] == ["tumour"]
    assert after.objects[0].undo_steps == 1
    assert editor.rename("flair", summary.id, "liver", ctx=JobContext()).objects[0].name == "liver"
    nothing = editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), -5, Click((12, 20, 30), True),
                              name="second", ctx=JobContext())  # on the dark background: the model finds nothing
    assert "no object was made" in nothing.message and [o.name for o in nothing.objects] == ["liver"]
    apart = blob.copy()
    apart[:19] = False  # the blob's end, outside the tumour's slab
    second = editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), -6, MaskPrompt(apart),
                             name="second", ctx=JobContext())
    again = editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), -6, Click((12, 2, 2), False),
                            ctx=JobContext())  # the dock's provisional id reaches the same object
    assert again.changed == second.changed and len(again.objects) == 2
    assert "did not change" in editor.interact(choice, "flair", volume, (1.0, 1.0, 2.0), (0, 255), summary.id,
                                               Click((12, 20, 14), True), ctx=JobContext()).message
    assert editor.undo("flair", summary.id, ctx=JobContext()).summary(summary.id).undo_steps == 1
    gone = editor.undo("flair", summary.id, ctx=JobContext())  # undoing its first interaction: the object goes
    assert gone.summary(summary.id) is None and "gone" in gone.message
    assert editor.remove("flair", second.changed, ctx=JobContext()).objects == []


def test_on_a_gpu_the_slab_is_embedded_in_batches_first(scene) -> None:
    from types import SimpleNamespace

    blob, volume, _ = scene
    calls = []

    class GpuPredictor(BrightPredictor):
        model = SimpleNamespace(**{k: getattr(_Model, k) for k in ("image_size", "grid", "fallback_reason",
                                                                    "weights_hash")},
                                input_size=_Model().input_size, device=SimpleNamespace(type="cuda"))

        def precompute(self, slices, window, ctx=None, batch_size=None):
            calls.append(len(slices))

    objects = ObjectSet(SliceEngine(GpuPredictor(), volume, (0, 255)))
    obj = objects.add()
    objects.interact(obj, _box(blob, 6, 18))
    objects.interact(obj, Click((12, 20, 14), False))
    assert calls == [13, 13]  # the box's slab before propagating, and before the click's update
    cpu = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255)))
    calls.clear()
    cpu.interact(cpu.add(), _box(blob, 6, 18))
    assert calls == []  # on a CPU slices are embedded as they are reached


def test_a_click_where_the_object_already_agrees_changes_nothing(scene) -> None:
    blob, volume, objects = scene
    obj = objects.add(mask=blob, interactions=[_box(blob, 5, 19)])
    assert np.array_equal(objects.interact(obj, Click((12, 20, 14), True)), blob)  # inside, positive
    assert np.array_equal(objects.interact(obj, Click((12, 2, 2), False)), blob)  # outside, negative
    assert objects.undo_steps(obj) == 2


def test_a_lasso_in_another_plane_than_the_box_lands_where_it_was_drawn(scene) -> None:
    blob, _, objects = scene
    start = blob.copy()
    start[10:14, 12:17, :] = False  # a hole the user outlines on coronal slice y = 14
    obj = objects.add(mask=start, interactions=[_box(blob, 5, 19)])
    lasso = Lasso(14, ((10, 10), (10, 18), (13, 18), (13, 10)), True, axis=1)  # rows = z, cols = x
    mask = objects.interact(obj, lasso)
    assert mask[10:14, 14, 10:19].all()  # filled where drawn (z 10-13 on y = 14), not on axial slice 14
    assert not (mask & ~blob).any()


def test_ids_are_never_reused_and_undo_reaches_no_later_object(scene) -> None:
    blob, _, objects = scene
    a = objects.add("a")
    b = objects.add("b", mask=blob)
    objects.interact(a, MaskPrompt(blob))  # a takes b's voxels
    objects.remove(b)
    c = objects.add("c")
    assert c not in (a, b)
    objects.undo(a)
    assert not objects.objects[c].mask.any()  # b's voxels went nowhere: b is gone


def test_every_interaction_converts_between_all_planes() -> None:
    from napari_medadapt.core.interactive import in_frame

    box = Box3D(3, 9, 6, (10, 12, 20, 30), axis=0)
    for a in range(3):
        for b in range(3):
            there = in_frame(Box3D.from_ranges(box.ranges(), a), b, (24, 40, 40))
            assert there.axis == 0
            back = Box3D.from_ranges([there.ranges()[i] for i in np.argsort([b, *[i for i in range(3) if i != b]])], 0)
            assert back.ranges() == box.ranges()


class StubbornPredictor(BrightPredictor):
    """A model that answers a mask prompt with the mask itself, whatever the clicks say (as LiteMedSAM's click
    decoder does with some small organs); without a mask prompt it is :class:`BrightPredictor`."""

    def predict(self, image, window, prompts):
        if prompts.mask_input is not None:
            mask = prompts.mask_input[0] > 0
            mask = np.kron(mask, np.ones((image.shape[0] // mask.shape[0], image.shape[1] // mask.shape[1]), bool))
            return MaskPrediction(mask, mask[None], np.array([0.9]), 0, prompts.mask_input)
        return super().predict(image, window, prompts)


def _two_parts() -> tuple[np.ndarray, np.ndarray]:
    volume = np.full((10, 64, 64), 20, np.uint8)
    volume[:, 5:13, 5:13] = 220  # found by the box
    volume[:, 20:26, 20:26] = 220  # the part the object still lacks
    start = np.zeros(volume.shape, bool)
    start[:, 5:13, 5:13] = True
    return volume, start


@pytest.mark.parametrize("ignored_click", ["click-box", "keep"])
def test_a_positive_click_the_answer_leaves_out_is_asked_again_around_the_click(ignored_click: str) -> None:
    volume, start = _two_parts()
    engine = SliceEngine(StubbornPredictor(), volume, (0, 255), ignored_click=ignored_click)
    assert engine._predict(5, np.array([[23.0, 23.0]]), np.array([1]), None, start[5]).sum() == 64  # it does ignore it
    objects = ObjectSet(engine)
    obj = objects.add(mask=start)
    mask = objects.interact(obj, Click((5, 23, 23), True))
    if ignored_click == "keep":
        assert np.array_equal(mask, start)
    else:  # the part at the click joins the object on its slice, and the change travels to the neighbours
        assert mask[5, 20:26, 20:26].all() and mask[4, 20:26, 20:26].all() and mask[6, 20:26, 20:26].all()
        assert not (mask & (volume < 127)).any()


@pytest.mark.parametrize("ignored_negative", ["cut-box", "keep"])
def test_a_negative_click_the_answer_keeps_is_asked_again_with_the_box_cut_at_the_click(ignored_negative: str) -> None:
    volume = np.full((10, 64, 64), 20, np.uint8)
    volume[:, 5:13, 5:13] = 220  # the object
    start = np.zeros(volume.shape, bool)
    start[3:8, 5:13, 5:20] = True  # it leaks into the dark voxels right of it
    engine = SliceEngine(StubbornPredictor(), volume, (0, 255), ignored_negative=ignored_negative)
    objects = ObjectSet(engine)
    obj = objects.add(mask=start)
    mask = objects.interact(obj, Click((5, 9, 17), False))  # the model keeps it with the mask prompt
    expected = start.copy()
    if ignored_negative == "cut-box":  # the box left of the click's column holds most: asked alone, the leak goes
        expected[5, 5:13, 13:20] = False
    assert np.array_equal(mask, expected)  # on the clicked slice only: the removal does not travel


def test_the_box_cut_at_a_click_keeps_the_part_holding_most_of_the_object() -> None:
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:16] = True
    assert box_cut_at(mask, (5, 13)) == (2.0, 2.0, 9.0, 12.0)  # left of column 13
    assert box_cut_at(mask, (8, 4)) == (2.0, 5.0, 9.0, 15.0)  # right of column 4 (88 voxels; above row 8: 84)
    assert box_cut_at(np.eye(2, dtype=bool), (0, 0)) is None  # nothing 2 x 2 is left
    assert box_cut_at(np.zeros((4, 4), bool), (1, 1)) is None


def test_a_click_whose_answer_is_far_larger_than_the_object_changes_nothing() -> None:
    volume = np.full((10, 64, 64), 20, np.uint8)
    volume[:, 5:9, 5:9] = 220  # a small object (its box: 4 x 4 voxels)
    volume[:, 10:60, 10:60] = 220  # a large bright structure beside it
    start = np.zeros(volume.shape, bool)
    start[3:8, 5:9, 5:9] = True
    objects = ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255)))
    obj = objects.add(mask=start, interactions=[Box3D(3, 7, 5, (5, 5, 8, 8))])
    assert np.array_equal(objects.interact(obj, Click((5, 14, 14), True)), start)
    assert "far larger than the object" in objects.engine.note


def test_a_first_click_alone_makes_the_whole_object(scene) -> None:
    blob, _, objects = scene
    mask = objects.interact(objects.add(), Click((12, 20, 14), True))  # no box, nothing yet: no size to limit it
    assert mask[12].sum() == blob[12].sum() and len(np.flatnonzero(mask.any(axis=(1, 2)))) > 3


def _two_halves(click_claims: str = "near") -> tuple[ObjectSet, np.ndarray, np.ndarray]:
    """One bright block, its upper half held by one object and its lower half by another."""
    volume = np.full((10, 40, 40), 20, np.uint8)
    volume[2:8, 10:20, 10:20] = 220
    upper, lower = np.zeros(volume.shape, bool), np.zeros(volume.shape, bool)
    upper[2:8, 10:15, 10:20] = True
    lower[2:8, 15:20, 10:20] = True
    return ObjectSet(SliceEngine(BrightPredictor(), volume, (0, 255), click_claims=click_claims)), upper, lower


@pytest.mark.parametrize("click_claims", ["near", "slice"])
def test_a_click_takes_other_objects_voxels_only_on_its_own_slice(click_claims: str) -> None:
    objects, upper, lower = _two_halves(click_claims)
    a, b = objects.add("a", mask=upper), objects.add("b", mask=lower)
    mask = objects.interact(a, Click((5, 17, 15), True))  # "this is a too", given on slice 5
    assert mask[5, 17, 15] and not objects.objects[b].mask[5, 17, 15]
    assert objects.objects[b].mask[4, 17, 15] and not mask[4, 17, 15]  # where the change only travelled, b keeps it
    # the model's answer on slice 5 is the whole block: "near" takes b's voxels only within 3 voxels of the click
    assert objects.objects[b].mask[5, 19, 19] == (click_claims == "near")
    assert objects.objects[b].mask[5, 19, 18] == (click_claims == "near")  # 3.6 voxels from the click
    assert not objects.objects[b].mask[5, 18, 17] and not objects.objects[b].mask[5, 15, 15]  # 2.2, 2 voxels: taken
    objects.undo(a)
    assert np.array_equal(objects.objects[b].mask, lower)


@pytest.mark.parametrize("axis", [1, 2])
def test_a_click_in_another_plane_takes_voxels_only_on_the_box_slice_it_corrects(axis: int) -> None:
    objects, upper, lower = _two_halves()
    a = objects.add("a", mask=upper, interactions=[Box3D(2, 7, 5, (10, 10, 14, 19))])  # an axial box
    b = objects.add("b", mask=lower)
    mask = objects.interact(a, Click((5, 17, 15), True, axis=axis))  # given on a coronal / sagittal slice
    taken = lower & ~objects.objects[b].mask
    assert mask[5, 17, 15] and taken.any() and not taken[np.arange(10) != 5].any()  # only on axial slice 5
    rows, cols = np.nonzero(taken[5])
    assert ((rows - 17) ** 2 + (cols - 15) ** 2 <= SliceEngine.LOCAL_REACH**2).all()  # and only near the click
    assert objects.objects[b].mask[5, 19, 19]  # the rest of b's half of slice 5 stays b's


def test_given_on_for_a_lasso_in_another_plane_is_the_box_slices_it_crosses(scene) -> None:
    blob, _, objects = scene
    state = objects.objects[objects.add(mask=blob, interactions=[_box(blob, 5, 19)])]
    lasso = Lasso(14, ((10, 10), (10, 18), (13, 18), (13, 10)), True, axis=1)  # rows = z 10-13 on coronal y = 14
    given = objects.engine.given_on(state, lasso)
    assert np.array_equal(np.flatnonzero(given.any(axis=(1, 2))), [10, 11, 12, 13]) and given[10:14].all()


def test_given_on_names_the_slices_of_the_interactions_plane() -> None:
    from napari_medadapt.core.interactive import given_on

    shape = (6, 8, 10)
    assert given_on(Box3D(1, 4, 2, (0, 0, 3, 3)), shape) is None
    assert np.array_equal(np.flatnonzero(given_on(Click((3, 5, 7), True, axis=1), shape).all(axis=(0, 2))), [5])
    scribble = np.zeros(shape, bool)
    scribble[2, 1, 4] = scribble[3, 1, 6] = True
    assert np.array_equal(np.flatnonzero(given_on(Scribble(scribble, True, axis=2), shape).all(axis=(0, 1))), [4, 6])
    lasso = given_on(Lasso(2, ((0, 0), (1, 1), (0, 1)), True), shape)
    assert lasso[2].all() and lasso.sum() == lasso[2].size
    sagittal = given_on(Lasso(3, ((0, 0), (1, 1), (0, 1)), True, axis=2), shape)
    assert sagittal[:, :, 3].all() and sagittal.sum() == sagittal[:, :, 3].size


def test_an_unknown_engine_setting_is_refused_with_its_name_and_choices() -> None:
    from napari_medadapt.core.errors import MedAdaptError

    with pytest.raises(MedAdaptError, match="click_claims must be one of 'near', 'slice'; got 'everywhere'"):
        SliceEngine(BrightPredictor(), np.zeros((4, 8, 8), np.uint8), (0, 255), click_claims="everywhere")
