"""Engines that turn an interaction on a 3D object into the object's new 3D mask.

:class:`ObjectEngine` is the interface (a native 3D promptable model would implement it by feeding the
interactions as prompts); :class:`SliceEngine` implements it with a 2D promptable model (``SamPredictor``:
embed each slice once, decode per prompt), so that every interaction updates the whole object:

- a 3D box: the box on its middle slice, then box-margin propagation (LiteMedSAM's 3D recipe) confined to the
  box's slab ``z_min..z_max``;
- a click where the object already agrees with it (a positive click inside, a negative one outside) changes
  nothing (it stays a prompt of its slice for later interactions);
- a click: its slice is predicted again (box from the object's mask on that slice widened to the positive clicks,
  every click of the object on that slice, the slice's mask as a mask prompt) and changes only where the click is
  (the added or removed regions of the answer that reach the click). When that answer leaves a positive click out,
  the slice is asked again without the mask prompt, in a square around the click as far out as the click is from
  the object, and the region at the click is taken. When it keeps a negative click (the click decoder often does),
  the slice is asked again with a box alone, the part of the object's box beside the click's row or column that
  holds most of the object, and the removed region at the click is taken on that slice only. A click that would add
  more than ``max_area_ratio`` times the object's box rectangle (without a box: its largest slice; no limit for an
  empty object) to its slice changes nothing (the model answered with another structure; :attr:`ObjectEngine.note`
  says so). The change then travels to the neighbours in both directions, each slice prompted from its corrected
  neighbour's box (+ margin) and its own clicks, until a new slice agrees with the previous object (IoU >=
  ``agree_iou``), the model finds no object or jumps (IoU with the neighbour < ``stop_iou``), or the slab ends. A
  positive click beyond the object's end extends it (the slab grows to the click); a click whose slice comes out
  empty removes that slice and everything beyond it on the side away from the object (the smaller side). Other
  objects lose voxels to a click only within ``LOCAL_REACH`` voxels of it (:meth:`SliceEngine.given_on`);
- scribbles and a lasso: their slices are predicted from sampled points, the box and a mask prompt, and the
  change travels from each of them the same way;
- a mask: replaces the object.

The slices are taken along the axis of the object's 3D box (the plane the box was drawn in): a click, scribble or
lasso given in another plane is a 3D prompt like any other, applied on the box's slices through it (faster and no
worse than re-predicting the other plane's slices: docs/benchmarks/segfm.md). An object without a box is sliced
along the plane of the interaction (a click on a coronal slice travels to the coronal neighbours).
``watch`` hands the engine a job context (progress per decoded slice, cancellation) and a callback that sees each
slice of the new mask as soon as it is decided (a dock shows the object while it grows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..errors import MedAdaptError
from ..sam.clicks import iou
from ..sam.prompts import box_from_mask
from .interactions import (
    Box3D,
    Click,
    Interaction,
    Lasso,
    MaskPrompt,
    ObjectState,
    Scribble,
    given_on,
    in_frame,
    polygon_mask,
    sample_points,
)
from .slice_rules import box_cut_at, near_click, size_near, slice_size

if TYPE_CHECKING:
    from ..jobs import JobContext

#: ``on_slice(axis, index, mask2d)``: slice ``index`` along volume axis ``axis`` of the new mask is decided
SliceCallback = Callable[[int, int, np.ndarray], None]


class ObjectEngine(ABC):
    """Computes an object's new 3D mask from its state and one new interaction.

    ``state.interactions`` already ends with ``interaction``; ``state.mask`` is the mask before it.
    """

    volume: np.ndarray
    ctx: JobContext | None = None
    on_slice: SliceCallback | None = None

    def watch(self, ctx: JobContext | None, on_slice: SliceCallback | None = None) -> None:
        """Report progress to / honour cancellation of ``ctx`` and show slices through ``on_slice`` during the
        next updates (``None``: stop)."""
        self.ctx, self.on_slice = ctx, on_slice

    @abstractmethod
    def update(self, state: ObjectState, interaction: Interaction) -> np.ndarray:
        """The object's new boolean 3D mask (the volume's shape); :attr:`note` says why it did not change, when
        the engine knows."""

    note: str | None = None

    def given_on(self, state: ObjectState, interaction: Interaction) -> np.ndarray | None:
        """The voxels ``interaction`` speaks for, where its object may take other objects' voxels (``None``: all):
        by default the slices of its own plane it lies on (:func:`~.interactions.given_on`)."""
        return given_on(interaction, tuple(self.volume.shape))


class SliceEngine(ObjectEngine):
    """The slice-wise implementation of :class:`ObjectEngine` on a ``SamPredictor``.

    ``travel="local"`` (default) carries only the continuation of a correction to the next slice: the voxels the
    neighbour's re-prediction adds (removes) within ``LOCAL_REACH`` voxels of what the previous slice added
    (removed); it stops where nothing continues. ``travel="replace"`` replaces each next slice by its
    re-prediction until one agrees with the previous object (IoU >= ``agree_iou``).

    Parameters
    ----------
    predictor
        ``core.sam.SamPredictor`` (its embedding cache is used and filled).
    volume
        ``(Z, Y, X)`` volume; slices are taken along the first axis.
    window
        Intensity window ``(low, high)`` for the whole volume (``None``: the predictor's ``mri-auto``).
    spread
        Let a correction travel to the neighbouring slices (``False``: the clicked slice only, the old way).
    agree_iou
        A travelling correction stops at the first slice whose new mask agrees this well with the previous object.
    stop_iou, max_area_ratio, min_area
        The travelling correction also stops where the new mask overlaps its neighbour less than ``stop_iou``,
        changes area by more than ``max_area_ratio`` or has fewer than ``min_area`` voxels.
    box_stops
        Stop box propagation inside the slab on IoU / area jumps (``False``: trust the slab, stop only on an
        empty slice).
    travel
        ``"local"`` or ``"replace"`` (above).
    click_scope
        ``"slice"``: the clicked slice takes the model's whole new answer; ``"local"``: only the part of the change
        at the click (the added or removed regions within 2 voxels of it; the whole answer when none is there);
        ``"sign"``: the part of the answer that agrees with the click's sign (a positive click only adds voxels to its
        slice, a negative one only removes); ``"connected"`` (default): the added (positive) or removed (negative)
        regions that come within ``LOCAL_REACH`` voxels of the click, nothing else.
    ignored_click
        When the answer leaves a positive click out: ``"keep"``: not asked again (the click scope applies to the
        first answer); else asked again without the mask prompt, the answer's region at the click taken, in the
        object's box on the slice widened to the click (``"region"``) or in a square around the click whose half
        side is the click's distance to the object on that slice (``"click-box"``, default; see
        :meth:`_region_at_click`).
    ignored_negative
        When the answer keeps a negative click: ``"keep"``: not asked again; ``"cut-box"`` (default): asked again
        with the part of the object's box beside the click that holds most of the object
        (:func:`~.slice_rules.box_cut_at`), the removed region at the click taken on that slice only (it does not
        travel).
    click_claims
        Where a click's object may take other objects' voxels (:meth:`given_on`): ``"near"`` (default): within
        ``LOCAL_REACH`` voxels of the click on its slice; ``"slice"``: anywhere on the clicked slice.

    The defaults were chosen on the settings cases (``medadapt bench segfm --dev``), never on the scored ones:
    docs/benchmarks/segfm.md.
    """

    LOCAL_REACH = 3
    TRIM_SHARE = 0.25

    def __init__(
        self,
        predictor: Any,
        volume: np.ndarray,
        window: tuple[float, float] | str | None = None,
        *,
        spread: bool = True,
        agree_iou: float = 0.9,
        stop_iou: float = 0.4,
        max_area_ratio: float = 2.5,
        min_area: int = 4,
        box_stops: bool = False,
        travel: str = "local",
        click_scope: str = "connected",
        ignored_click: str = "click-box",
        ignored_negative: str = "cut-box",
        click_claims: str = "near",
        frame_axis: int = 0,
    ) -> None:
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise MedAdaptError(f"The object engine needs a 3D volume (Z, Y, X); got shape {volume.shape}.")
        self.predictor = predictor
        self.volume = volume
        self.window = predictor.window_for(volume, window)
        self.spread = spread
        self.agree_iou = agree_iou
        self.stop_iou = stop_iou
        self.max_area_ratio = max_area_ratio
        self.min_area = min_area
        self.box_stops = box_stops
        choices = {"travel": (travel, ("local", "replace")),
                   "click_scope": (click_scope, ("local", "slice", "sign", "connected")),
                   "ignored_click": (ignored_click, ("keep", "region", "click-box")),
                   "ignored_negative": (ignored_negative, ("keep", "cut-box")),
                   "click_claims": (click_claims, ("near", "slice"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise MedAdaptError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
        self.travel, self.click_scope, self.click_claims = travel, click_scope, click_claims
        self.ignored_click, self.ignored_negative = ignored_click, ignored_negative
        self.frame_axis = frame_axis  # the volume axis this engine's first axis is (engines of other planes)
        self._settings = {"spread": spread, "agree_iou": agree_iou, "stop_iou": stop_iou,
                          "max_area_ratio": max_area_ratio, "min_area": min_area, "box_stops": box_stops,
                          "travel": travel, "click_scope": click_scope, "ignored_click": ignored_click,
                          "ignored_negative": ignored_negative, "click_claims": click_claims}
        self._frames: dict[int, SliceEngine] = {}
        from ..sam.propagation import BOX_MARGIN_PX

        h, w = predictor.model.input_size(volume.shape[1:])
        self.margin = (BOX_MARGIN_PX * volume.shape[1] / h, BOX_MARGIN_PX * volume.shape[2] / w)
        self.decodes = 0

    # ------------------------------------------------------------------ 2D
    def _predict(self, z: int, points: np.ndarray, labels: np.ndarray, box: Any, mask: np.ndarray | None) -> np.ndarray:
        from ..sam.prompts import make_prompts
        from ..sam.propagation import mask_to_logits

        logits = mask_to_logits(self.predictor, mask) if mask is not None and mask.any() else None
        if box is None and len(points) == 0:
            return np.zeros(self.volume.shape[1:], bool)
        prompts = make_prompts(points if len(points) else None, labels if len(points) else None, box, logits)
        self.decodes += 1
        if self.ctx is not None:
            self.ctx.progress(self.decodes, 0, f"slice {z}")
        return self.predictor.predict(self.volume[z], self.window, prompts).mask

    def _embed_slab(self, lo: int, hi: int) -> None:
        """On a GPU, embed slices ``lo..hi`` first in the model's batches (8 slices per fp16 encoder call; cached
        ones are skipped); on a CPU, where batches do not pay off, slices are embedded as they are reached."""
        device = getattr(getattr(self.predictor, "model", None), "device", None)
        if getattr(device, "type", "cpu") == "cuda":
            self.predictor.precompute(self.volume[max(0, lo): hi + 1], self.window, ctx=self.ctx)

    def _show(self, z: int, mask: np.ndarray) -> None:
        if self.on_slice is not None:
            self.on_slice(self.frame_axis, z, mask)

    def _in_plane(self, axis: int) -> SliceEngine:
        """The engine of the frame whose first axis is volume axis ``axis`` (same predictor, window, settings)."""
        if axis not in self._frames:
            self._frames[axis] = SliceEngine(self.predictor, np.moveaxis(self.volume, axis, 0), self.window,
                                             frame_axis=axis, **self._settings)
        engine = self._frames[axis]
        engine.watch(self.ctx, self.on_slice)
        return engine

    def _box_with(self, box: tuple | None, points: np.ndarray, labels: np.ndarray, margin: bool) -> tuple | None:
        """``box`` (optionally widened by the margin) grown to hold the positive points; ``None`` without a box."""
        if box is None:  # clicks alone (the click decoder answers them)
            return None
        pos = points[labels == 1] if len(points) else np.zeros((0, 2))
        rows, cols = self.volume.shape[1:]
        r0, c0, r1, c1 = box
        if margin:
            r0, c0, r1, c1 = r0 - self.margin[0], c0 - self.margin[1], r1 + self.margin[0], c1 + self.margin[1]
        for r, c in pos:
            r0, c0, r1, c1 = min(r0, r - self.margin[0]), min(c0, c - self.margin[1]), max(r1, r + self.margin[0]), max(c1, c + self.margin[1])
        return max(0.0, r0), max(0.0, c0), min(rows - 1.0, r1), min(cols - 1.0, c1)

    def _correct_slice(self, state: ObjectState, z: int, extra_points: np.ndarray | None = None,
                       extra_labels: np.ndarray | None = None, hint: np.ndarray | None = None) -> np.ndarray:
        """Predict slice ``z`` again from the object's mask there, its clicks and any extra prompts."""
        cur = state.mask[z] if hint is None else hint
        points, labels = state.clicks_on(z)
        if extra_points is not None and len(extra_points):
            points = np.vstack([points, extra_points])
            labels = np.concatenate([labels, extra_labels])
        if len(points) and not np.any(labels == 1) and not cur.any():
            return np.zeros_like(cur)  # a negative prompt on a slice without the object: nothing to remove
        box = self._box_with(box_from_mask(cur), points, labels, margin=False)
        return self._predict(z, points, labels, box, cur)

    # ------------------------------------------------------------------ 3D
    @staticmethod
    def _axis_for(state: ObjectState, interaction: Interaction) -> int:
        """The volume axis the object's slices are taken along for ``interaction``: its box's (the interaction's
        own plane for a box, a mask, or an object without a box)."""
        box = state.box
        if isinstance(interaction, Box3D | MaskPrompt) or box is None:
            return getattr(interaction, "axis", 0)
        return box.axis

    def update(self, state: ObjectState, interaction: Interaction) -> np.ndarray:
        """The object's new 3D mask after ``interaction`` (see the module docstring)."""
        axis = self._axis_for(state, interaction)
        # every interaction in the frame of the chosen axis (a lasso of another plane becomes a scribble, ...)
        state, interaction = state.in_frame(axis), in_frame(interaction, axis, self.volume.shape)
        engine = self._in_plane(axis) if axis else self
        engine.note = None
        new = np.moveaxis(engine._update_in_frame(state, interaction), 0, axis)
        self.note = engine.note
        return new

    def given_on(self, state: ObjectState, interaction: Interaction) -> np.ndarray | None:
        """Where the object may take other objects' voxels: the slices its correction starts from (those of the box's
        axis the interaction lies on, where the engine re-predicts); for a click (``click_claims="near"``) only the
        voxels within ``LOCAL_REACH`` of it on its slice; ``None`` for a box or a mask."""
        axis = self._axis_for(state, interaction)
        shape = self.volume.shape
        framed = (shape[axis], *[shape[i] for i in range(3) if i != axis])
        framed_interaction = in_frame(interaction, axis, shape)
        given = given_on(framed_interaction, framed)
        if given is not None and isinstance(framed_interaction, Click) and self.click_claims == "near":
            z, r, c = framed_interaction.zyx
            rows, cols = np.ogrid[: framed[1], : framed[2]]
            given[z] = (rows - r) ** 2 + (cols - c) ** 2 <= self.LOCAL_REACH**2  # a disc around the click
        return None if given is None else np.moveaxis(given, 0, axis)

    def _update_in_frame(self, state: ObjectState, interaction: Interaction) -> np.ndarray:
        """:meth:`update` for a state and interaction already in this engine's frame."""
        if isinstance(interaction, MaskPrompt):
            mask = np.asarray(interaction.mask, bool)
            if mask.shape != self.volume.shape:
                raise MedAdaptError(f"The mask has shape {mask.shape}; the volume has {self.volume.shape}.")
            return mask.copy()
        if isinstance(interaction, Box3D):
            self._embed_slab(interaction.z_min, interaction.z_max)
            return self._box(interaction)
        if state.box is not None:  # without a box the slab is the whole axis: slices are embedded as reached
            self._embed_slab(*state.slab(self.volume.shape[0]))
        new = state.mask.copy()
        travels = True
        if isinstance(interaction, Click):
            z = interaction.zyx[0]
            if state.mask[interaction.zyx] == interaction.positive:
                self.note = "it already agrees with this click"
                return state.mask.copy()  # nothing to correct
            pred = self._correct_slice(state, z)
            if interaction.positive and not pred[interaction.zyx[1:]] and self.ignored_click != "keep":
                pred = pred | self._region_at_click(state, interaction)
            if not interaction.positive and pred[interaction.zyx[1:]] and self.ignored_negative == "cut-box":
                pred, travels = self._cut_at_click(state, interaction), False
            if self.click_scope == "local" and self.spread:
                pred = near_click(state.mask[z], pred, interaction, 2, whole_when_none=True)
            elif self.click_scope == "connected":
                pred = near_click(state.mask[z], pred, interaction, self.LOCAL_REACH, whole_when_none=False)
            elif self.click_scope == "sign":
                pred = (state.mask[z] | pred) if interaction.positive else (state.mask[z] & pred)
            if interaction.positive and (pred & ~state.mask[z]).sum() > self._area_limit(state):
                pred = state.mask[z]  # the answer is another structure, far larger than the object
                self.note = ("the model's answer to this click was far larger than the object (a neighbouring "
                             "structure), so it was not taken; outline the part with a lasso or a scribble")
            elif np.array_equal(pred, state.mask[z]):
                self.note = "the model's answer does not follow this click; outline the part with a lasso or a scribble"
            corrected = {z: pred}
        elif isinstance(interaction, Scribble):
            corrected = self._scribble(state, interaction)
        elif isinstance(interaction, Lasso):
            corrected = self._lasso(state, interaction)
        else:
            raise MedAdaptError(f"Unknown interaction {type(interaction).__name__}.")
        self._apply(state, new, corrected, positive=getattr(interaction, "positive", True), travels=travels)
        return new

    def _area_limit(self, state: ObjectState) -> float:
        """The most voxels one click may add to its slice: ``max_area_ratio`` times the object's size on a slice
        (its box's rectangle; without a box its largest slice; no limit for a first click, which has nothing to
        compare with)."""
        size = slice_size(state.mask, None if state.box is None else state.box.rect)
        return float("inf") if size is None else self.max_area_ratio * max(size, self.min_area)

    def _region_at_click(self, state: ObjectState, click: Click) -> np.ndarray:
        """The region a positive click names when the answer with the object's mask prompt left it out: the slice
        asked again from its clicks without the mask prompt, and only the connected region of that answer holding
        the click (nothing when the click is outside it). The box of that question is a square around the click
        (``"click-box"``: its half side the click's distance to the object on that slice, at least 2 voxels; on a
        slice without the object, the square root of the object's area on the nearest slice holding it) or the
        object's box on the slice widened to the click (``"region"``).
        Not asked for an empty object, or (``"region"``) on a slice without the object: there is no box to ask with."""
        z, r, c = click.zyx
        points, labels = state.clicks_on(z)
        if self.ignored_click == "click-box":
            if state.mask[z].any():  # the part the click names reaches at least as far as the click is from the object
                half = max(2.0, float(ndimage.distance_transform_edt(~state.mask[z])[r, c]))
            else:
                half = float(np.sqrt(size_near(state.mask, z)))
            rows, cols = self.volume.shape[1:]
            box = (max(0.0, r - half), max(0.0, c - half), min(rows - 1.0, r + half), min(cols - 1.0, c + half))
        else:
            box = self._box_with(box_from_mask(state.mask[z]), points, labels, margin=False)
        if box is None or not state.mask.any():  # nothing to size a box by: the question would be the first one
            return np.zeros(self.volume.shape[1:], bool)
        regions, _ = ndimage.label(self._predict(z, points, labels, box, None))
        return regions == regions[r, c] if regions[r, c] else np.zeros(regions.shape, bool)

    def _cut_at_click(self, state: ObjectState, click: Click) -> np.ndarray:
        """The answer to a negative click that the answer with the object's mask prompt kept: the object's box on the
        slice cut at the click (of the four parts of the box beside the click's row or column, the one holding most
        of the object), asked with that box alone; the object's mask on the slice when no part is left."""
        z = click.zyx[0]
        part = box_cut_at(state.mask[z], click.zyx[1:])
        if part is None:
            return state.mask[z]
        return self._predict(z, np.zeros((0, 2)), np.zeros(0, np.int64), part, None)

    def _box(self, box: Box3D) -> np.ndarray:
        from ..sam.propagation import propagate

        out = np.zeros(self.volume.shape, bool)
        seed = self._predict(box.z_mid, np.zeros((0, 2)), np.zeros(0, np.int64), box.rect, None)
        if seed.sum() < self.min_area:
            return out
        loose = {} if self.box_stops else {"iou_threshold": 0.0, "max_area_ratio": 1e9, "intensity_tolerance": None}
        result = propagate(
            self.predictor, self.volume, {box.z_mid: seed}, self.window, mode="box-margin",
            index_range=(box.z_min, box.z_max), min_area=self.min_area, ctx=self.ctx,
            on_slice=None if self.on_slice is None else self._show, **loose,
        )
        self.decodes += len(result.stats)
        return result.mask

    def _scribble(self, state: ObjectState, s: Scribble) -> dict[int, np.ndarray]:
        smask = np.asarray(s.mask, bool)
        if smask.shape != self.volume.shape:
            raise MedAdaptError(f"The scribble has shape {smask.shape}; the volume has {self.volume.shape}.")
        out = {}
        for z in np.flatnonzero(smask.any(axis=(1, 2))):
            z = int(z)
            pts = sample_points(smask[z])
            labels = np.full(len(pts), 1 if s.positive else 0, np.int64)
            cur = state.mask[z]
            hint = (cur | smask[z]) if s.positive else (cur & ~smask[z])
            if not s.positive and not cur.any():
                continue
            pred = self._correct_slice(state, z, pts, labels, hint=hint)
            out[z] = (pred | smask[z]) if s.positive else (pred & ~smask[z])
        return out

    def _lasso(self, state: ObjectState, lasso: Lasso) -> dict[int, np.ndarray]:
        z = int(lasso.z)
        if not 0 <= z < self.volume.shape[0]:
            raise MedAdaptError(f"The lasso's slice {z} is outside the volume's {self.volume.shape[0]} slices.")
        poly = polygon_mask(lasso.polygon, self.volume.shape[1:])
        if not poly.any():
            return {}
        if not lasso.positive:
            return {z: state.mask[z] & ~poly}
        pts = sample_points(poly, 1)
        pred = self._correct_slice(state, z, pts, np.ones(len(pts), np.int64), hint=poly)
        return {z: pred & ndimage.binary_dilation(poly, iterations=2)}

    def _apply(self, state: ObjectState, new: np.ndarray, corrected: dict[int, np.ndarray], positive: bool,
               travels: bool = True) -> None:
        """Write the corrected slices into ``new`` and let each change travel outwards (up to the next corrected
        slice, the slab's end, or agreement with the previous object; not when ``travels`` is false); a negative
        prompt that empties a slice trims the object there."""
        depth = self.volume.shape[0]
        lo, hi = state.slab(depth)
        old = state.mask
        order = sorted(corrected)
        for z in order:
            new[z] = corrected[z]
            self._show(z, new[z])
        if not self.spread or not travels:
            return
        for k, z in enumerate(order):
            if corrected[z].sum() < self.min_area:
                if not positive:
                    self._trim(new, old, z)
                continue
            down_end = order[k - 1] if k > 0 else lo - 1
            up_end = order[k + 1] if k + 1 < len(order) else hi + 1
            for step, end in ((-1, down_end), (1, up_end)):
                self._travel(state, new, old, z, step, end)

    def _trim(self, new: np.ndarray, old: np.ndarray, z: int) -> None:
        """Slice ``z`` came out empty: remove it, and everything beyond it on the side away from the object when
        that side is the object's end (at most ``TRIM_SHARE`` of its voxels); the slices that go are shown."""
        held = new.any(axis=(1, 2))
        new[z] = False
        below, above = int(old[:z].sum()), int(old[z + 1:].sum())
        if min(below, above) <= self.TRIM_SHARE * max(1, below + above):  # past the object's end, not inside it
            new[slice(None, z) if below <= above else slice(z + 1, None)] = False
        for gone in np.flatnonzero(held & ~new.any(axis=(1, 2))):
            self._show(int(gone), new[gone])

    def _travel(self, state: ObjectState, new: np.ndarray, old: np.ndarray, start: int, step: int, end: int) -> None:
        """Carry the change of slice ``start`` to the next slices in direction ``step`` (see :attr:`travel`)."""
        prev = new[start]
        added, removed = new[start] & ~old[start], old[start] & ~new[start]
        i = start + step
        while i != end and 0 <= i < self.volume.shape[0] and prev.any():
            points, labels = state.clicks_on(i)
            box = self._box_with(box_from_mask(prev), points, labels, margin=True)
            pred = self._predict(i, points, labels, box, None)
            area, prev_area = int(pred.sum()), max(1, int(prev.sum()))
            if area < self.min_area:
                break
            if iou(pred, prev) < self.stop_iou or area > prev_area * self.max_area_ratio or area * self.max_area_ratio < prev_area:
                break
            if self.travel == "replace":
                if old[i].any() and iou(pred, old[i]) >= self.agree_iou:
                    break
                new[i] = pred
            else:  # "local": only the part of the change that continues the neighbour's change
                reach = self.LOCAL_REACH
                grow = pred & ~old[i] & ndimage.binary_dilation(added, iterations=reach)
                shrink = old[i] & ~pred & ndimage.binary_dilation(removed, iterations=reach)
                if not grow.any() and not shrink.any():
                    break
                new[i] = (old[i] | grow) & ~shrink
                added, removed = grow, shrink
            self._show(i, new[i])
            prev = new[i]
            i += step
