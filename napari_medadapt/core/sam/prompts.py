"""Prompts in slice voxel coordinates and the intensity window that turns a slice into an image.

All coordinates are ``(row, col)`` voxel indices of the 2D slice the dock passes (any plane);
boxes are ``(r0, c0, r1, c1)`` with inclusive corners. The model code converts them to SAM's
``(x, y)`` pixel convention internally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PromptError
from ..intensity import CT_WINDOWS, MRI_PERCENTILES, percentile_range

#: Named windows (low, high): the CT windows of the one table in :mod:`..intensity`, as ``ct-NAME``;
#: ``"mri-auto"`` is resolved from the data (its :data:`~..intensity.MRI_PERCENTILES`).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {f"ct-{name}": window for name, window in CT_WINDOWS.items()}
AUTO_WINDOW = "mri-auto"


@dataclass(frozen=True)
class Plane:
    """The displayed slice: ``axis`` of the image across the slices, and the slice ``index`` along it."""

    axis: int
    index: int

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The image axes of the slice's rows and columns (ascending)."""
        rows, cols = (a for a in range(3) if a != self.axis)
        return rows, cols

    def slicer(self) -> tuple[Any, ...]:
        """Index expression selecting this slice in a 3D array."""
        key: list[Any] = [slice(None)] * 3
        key[self.axis] = self.index
        return tuple(key)

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The 2D slice of ``volume`` (a copy)."""
        return np.array(volume[self.slicer()])


@dataclass(frozen=True)
class Prompts:
    """Prompts for one slice.

    Attributes
    ----------
    points
        ``(N, 2)`` float ``(row, col)`` click positions.
    labels
        ``(N,)`` int: 1 positive (object), 0 negative (background).
    box
        ``(r0, c0, r1, c1)`` or ``None``.
    mask_input
        Low-resolution mask logits of a previous prediction (``MaskPrediction.feedback``), or ``None``.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: tuple[float, float, float, float] | None = None
    mask_input: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        """True when there is neither a point nor a box."""
        return len(self.points) == 0 and self.box is None

    @property
    def negative_only(self) -> bool:
        """True when there are clicks, all negative, and no box (a user 'stop here' prompt)."""
        return len(self.labels) > 0 and not np.any(self.labels == 1) and self.box is None

    @property
    def signature(self) -> tuple:
        """Hashable summary of the clicks and box (not the mask input): equal signatures, same prompts."""
        pts = tuple(
            (round(float(r), 2), round(float(c), 2), int(lab)) for (r, c), lab in zip(self.points, self.labels, strict=True)
        )
        box = None if self.box is None else tuple(round(float(v), 2) for v in self.box)
        return pts, box

    def extends(self, previous: tuple | None) -> bool:
        """Whether these prompts are ``previous`` (a :attr:`signature`) plus more clicks, same box."""
        if previous is None:
            return False
        pts, box = self.signature
        return box == previous[1] and len(pts) > len(previous[0]) and pts[: len(previous[0])] == previous[0]

    def with_click(self, row: float, col: float, positive: bool) -> Prompts:
        """Return a copy with one more click."""
        return Prompts(
            np.vstack([self.points, [[row, col]]]),
            np.append(self.labels, 1 if positive else 0),
            self.box,
            self.mask_input,
        )

    def with_mask_input(self, mask_input: np.ndarray | None) -> Prompts:
        """Return a copy with a different previous-mask prompt."""
        return Prompts(self.points, self.labels, self.box, mask_input)


def make_prompts(
    points: Sequence[Sequence[float]] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    box: Sequence[float] | None = None,
    mask_input: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
) -> Prompts:
    """Build and validate :class:`Prompts`.

    Parameters
    ----------
    points
        ``(N, 2)`` ``(row, col)`` clicks.
    labels
        ``(N,)`` 1/0 labels; all positive when omitted.
    box
        ``(r0, c0, r1, c1)``; corners may be given in any order.
    mask_input
        Previous low-resolution logits to refine.
    shape
        The slice's ``(rows, cols)``; when given, prompts outside the slice raise :class:`PromptError`.
    """
    pts = np.zeros((0, 2), np.float64) if points is None else np.asarray(points, np.float64)
    if pts.ndim == 1 and pts.size == 2:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"Points must be (row, col) pairs, got an array of shape {pts.shape}.")
    if labels is None:
        lab = np.ones(len(pts), np.int64)
    else:
        lab = np.asarray(labels, np.int64).reshape(-1)
    if len(lab) != len(pts):
        raise PromptError(f"Got {len(pts)} points but {len(lab)} labels; give one label (1 or 0) per point.")
    if np.any((lab != 0) & (lab != 1)):
        raise PromptError("Point labels must be 1 (object) or 0 (background).")
    box_t = None
    if box is not None:
        b = np.asarray(box, np.float64).reshape(-1)
        if b.size != 4 or not np.all(np.isfinite(b)):
            raise PromptError(f"A box is (r0, c0, r1, c1); got {box!r}.")
        box_t = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    if not np.all(np.isfinite(pts)):
        raise PromptError("Point coordinates must be finite numbers.")
    prompts = Prompts(pts, lab, box_t, mask_input)
    if shape is not None:
        check_inside(prompts, shape)
    return prompts


def check_inside(prompts: Prompts, shape: tuple[int, int]) -> None:
    """Raise :class:`PromptError` when a point or box lies outside a slice of ``shape`` (rows, cols)."""
    rows, cols = int(shape[0]), int(shape[1])
    for (r, c), lab in zip(prompts.points, prompts.labels, strict=True):
        if not (-0.5 <= r <= rows - 0.5 and -0.5 <= c <= cols - 0.5):
            kind = "positive" if lab == 1 else "negative"
            raise PromptError(
                f"The {kind} click at (row {r:.1f}, col {c:.1f}) lies outside the slice "
                f"({rows} x {cols}). Click inside the image, or remove that point."
            )
    if prompts.box is not None:
        r0, c0, r1, c1 = prompts.box
        if r1 < -0.5 or c1 < -0.5 or r0 > rows - 0.5 or c0 > cols - 0.5:
            raise PromptError(
                f"The box (rows {r0:.0f}-{r1:.0f}, cols {c0:.0f}-{c1:.0f}) lies entirely outside the "
                f"slice ({rows} x {cols}). Draw the box on the image."
            )


def clip_box(box: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[float, ...]:
    """Clip a ``(r0, c0, r1, c1)`` box to a slice of ``shape``."""
    r0, c0, r1, c1 = box
    return (
        float(np.clip(r0, 0, shape[0] - 1)),
        float(np.clip(c0, 0, shape[1] - 1)),
        float(np.clip(r1, 0, shape[0] - 1)),
        float(np.clip(c1, 0, shape[1] - 1)),
    )


def box_from_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``(r0, c0, r1, c1)`` box of a 2D mask, or ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def resolve_window(data: np.ndarray, window: str | Sequence[float] | None = AUTO_WINDOW) -> tuple[float, float]:
    """Turn a window spec into ``(low, high)``.

    Parameters
    ----------
    data
        The slice or volume the window is for (used by ``"mri-auto"`` and ``None``).
    window
        ``(low, high)`` contrast limits, a name in :data:`WINDOW_PRESETS`, or ``"mri-auto"`` /
        ``None`` for the MRI percentiles (0.5-99.5) of the non-zero voxels (whole array when all zero).
        Use the same window for all slices of a volume so cached embeddings stay valid.
    """
    if window is None or (isinstance(window, str) and window == AUTO_WINDOW):
        return percentile_range(np.asarray(data), *MRI_PERCENTILES)
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise PromptError(
                f"Unknown intensity window {window!r}; use (low, high) or one of "
                f"{[AUTO_WINDOW, *WINDOW_PRESETS]}."
            )
        return WINDOW_PRESETS[window]
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise PromptError(f"An intensity window needs low < high; got ({lo}, {hi}).")
    return lo, hi


def slice_to_rgb(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map a 2D slice through ``window`` (low, high) to an ``(H, W, 3)`` uint8 grey RGB image."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise PromptError(f"Segment Anything needs a 2D slice; got an array of shape {image.shape}.")
    lo, hi = window
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
