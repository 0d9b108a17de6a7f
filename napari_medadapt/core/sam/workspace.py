"""The promptable model of a session: the loaded model with its embedding cache, resolved windows, and the
slice, precompute and propagation jobs of the Segment Anything dock (Qt-free).

A :class:`~napari_medadapt.core.session.ModelSession` holds one (``session.sam``); the dock's jobs run in
the viewer's compute worker and call it there. Scripts can use it directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .prompts import Plane, Prompts

if TYPE_CHECKING:
    from ..jobs import JobContext
    from .model import MaskPrediction
    from .predictor import PrecomputeStats, SamPredictor
    from .propagation import PropagationResult


@dataclass(frozen=True)
class ModelChoice:
    """A registry name (``"sam-small"``, ``"sam-vit-b"``, ...) or a local checkpoint path (+ encoder size)."""

    name: str
    architecture: str | None = None


@dataclass(frozen=True)
class SliceRequest:
    """One slice to segment: its index, 2D image, prompts and the previous low-res logits to refine."""

    index: int
    image: np.ndarray
    prompts: Prompts
    mask_input: np.ndarray | None = None


@dataclass
class SliceOutcome:
    """The prediction for a requested slice (``None``: no positive prompt there, the slice is emptied)."""

    index: int
    signature: tuple
    prediction: MaskPrediction | None


@dataclass
class JobOutput:
    """A job's result plus notes for the user (fallback to CPU, unverified checkpoint, ...) and the model that
    computed it (its choice, weights' sha256 and device: what a dock records, without reading the workspace)."""

    value: Any
    window: tuple[float, float] | None
    notes: list[str] = field(default_factory=list)
    model: ModelChoice | None = None
    weights_hash: str | None = None
    device: str | None = None


def neighbour_slices(index: int, size: int, direction: int, count: int = 2) -> list[int]:
    """The slices to embed next around ``index`` (of ``size``): ``count`` ahead in the scroll ``direction``
    (+1 / -1) then one behind, or alternating both sides when the direction is unknown (0)."""
    if direction:
        order = [index + direction * k for k in range(1, count + 1)] + [index - direction]
    else:
        order = [index + sign * k for k in range(1, count + 1) for sign in (1, -1)]
    return [i for i in order if 0 <= i < size]


class SamWorkspace:
    """The model (one at a time) with its embedding cache, and resolved intensity windows.

    The cache keeps embeddings in memory and reads those stored on disk (``embedding_cache_dir()``) by
    ``medadapt batch embed``; with ``write_disk`` it stores new ones there too. Used only from the compute thread
    (the session's thread).
    """

    def __init__(self, write_disk: bool = False) -> None:
        self.write_disk = write_disk  # store embeddings in the disk cache too (batch runs), not only read it
        self._predictor: SamPredictor | None = None
        self._choice: ModelChoice | None = None
        self._cache: Any = None  # one embedding cache for every model loaded (keys name the model's weights)
        self._windows: dict[tuple, tuple[float, float]] = {}
        self._reported_fallback: str | None = None

    @property
    def loaded(self) -> ModelChoice | None:
        """The model currently loaded."""
        return self._choice

    @property
    def loaded_weights_hash(self) -> str | None:
        """The sha256 of the loaded model's weights (``None`` before a model is loaded)."""
        return None if self._predictor is None else self._predictor.model.weights_hash

    def use(self, choice: ModelChoice, predictor: SamPredictor) -> None:
        """Use an already built predictor (e.g. one shared with a script) whenever ``choice`` is asked for."""
        self._predictor, self._choice = predictor, choice

    def predictor(self, choice: ModelChoice, ctx: JobContext, notes: list[str]) -> SamPredictor:
        """The predictor for ``choice``, loading (and for registry models downloading) it when needed."""
        from .predictor import EmbeddingCache, SamPredictor
        from .registry import REGISTRY, checkpoint_path, fetch_checkpoint, load_sam

        if self._predictor is not None and self._choice == choice:
            return self._predictor
        entry = REGISTRY.get(choice.name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if entry is not None and entry.url and not checkpoint_path(choice.name).is_file():
                ctx.progress(0, 0, f"downloading {entry.title} ({entry.size_mb:.0f} MB)")
                fetch_checkpoint(choice.name, ctx=ctx)
            ctx.progress(0, 0, f"loading {entry.title if entry else choice.name}")
            model = load_sam(choice.name, architecture=choice.architecture)
        notes.extend(str(w.message) for w in caught if issubclass(w.category, UserWarning))
        # embeddings stored on disk by ``medadapt batch embed`` are read; the dock's own stay in memory, kept
        # across model changes (LiteMedSAM and LiteMedSAM + click decoder share their encoder's embeddings)
        if self._cache is None:
            self._cache = EmbeddingCache(disk_dir=True, write_disk=self.write_disk)
        self._predictor, self._choice = SamPredictor(model, cache=self._cache), choice
        return self._predictor

    def prepare(
        self, choice: ModelChoice, volume: np.ndarray, window_spec: str | tuple[float, float], plane: Plane | None,
        *, neighbours: Sequence[int] = (), ctx: JobContext,
    ) -> JobOutput:
        """Load (or download) the model and embed the displayed slice ahead of the first click, then the slices
        ``neighbours`` of its plane in that order (each a cancellation point: a click waits for one slice at
        most)."""
        notes: list[str] = []
        predictor = self.predictor(choice, ctx, notes)
        window = None
        if plane is not None:
            window = self.window(volume, window_spec)
            indices = [plane.index, *neighbours]
            for done, index in enumerate(indices):
                ctx.progress(done, len(indices), f"embedding slice {index}")
                predictor.embedding(Plane(plane.axis, index).take(volume), window)
        return self.output(None, window, notes)

    def window(self, volume: np.ndarray, spec: str | tuple[float, float]) -> tuple[float, float]:
        """``(low, high)`` for a window spec: contrast limits as given, presets resolved once per volume."""
        from .prompts import resolve_window

        if not isinstance(spec, str):
            return resolve_window(volume, tuple(spec))
        key = (id(volume), volume.shape, spec)
        if key not in self._windows:
            self._windows = {k: v for k, v in self._windows.items() if k[0] == id(volume)}
            self._windows[key] = resolve_window(volume, spec)
        return self._windows[key]

    def output(self, value: Any, window: tuple[float, float] | None, notes: list[str]) -> JobOutput:
        """A job's :class:`JobOutput` naming the loaded model (after adding its fallback note, if new)."""
        self._fallback_notes(notes)
        model = None if self._predictor is None else self._predictor.model
        return JobOutput(value, window, notes, self._choice, self.loaded_weights_hash,
                         None if model is None else str(getattr(model, "device", "cpu")))

    def _fallback_notes(self, notes: list[str]) -> None:
        """Add the model's fallback reason (e.g. no GPU) to ``notes`` the first time it is seen."""
        reason = None if self._predictor is None else self._predictor.model.fallback_reason
        if reason and reason != self._reported_fallback:
            self._reported_fallback = reason
            notes.append(reason)

    # ------------------------------------------------------------------------------------------ jobs
    def predict_slices(
        self,
        choice: ModelChoice,
        volume: np.ndarray,
        window_spec: str | tuple[float, float],
        requests: list[SliceRequest],
        multimask: bool | None = None,
        *,
        ctx: JobContext,
    ) -> JobOutput:
        """Segment the requested slices from their prompts (slices without a positive prompt: ``None``)."""
        notes: list[str] = []
        predictor = self.predictor(choice, ctx, notes)
        window = self.window(volume, window_spec)
        outcomes = []
        for step, request in enumerate(requests):
            ctx.progress(step, len(requests), f"segmenting slice {request.index}")
            prompts = request.prompts
            if prompts.is_empty or prompts.negative_only:
                outcomes.append(SliceOutcome(request.index, prompts.signature, None))
                continue
            prediction = predictor.predict(
                request.image,
                window,
                points=prompts.points,
                labels=prompts.labels,
                box=prompts.box,
                mask_input=request.mask_input,
                multimask=multimask,
            )
            outcomes.append(SliceOutcome(request.index, prompts.signature, prediction))
        ctx.progress(len(requests), len(requests), "done")
        return self.output(outcomes, window, notes)

    def precompute(
        self, choice: ModelChoice, volume: np.ndarray, window_spec: str | tuple[float, float], axis: int, *,
        ctx: JobContext,
    ) -> JobOutput:
        """Embed every slice along ``axis`` into the cache (cached slices are skipped: resumes)."""
        notes: list[str] = []
        predictor = self.predictor(choice, ctx, notes)
        window = self.window(volume, window_spec)
        stats: PrecomputeStats = predictor.precompute(np.moveaxis(volume, axis, 0), window, ctx=ctx)
        return self.output(stats, window, notes)

    def propagate(
        self,
        choice: ModelChoice,
        volume: np.ndarray,
        window_spec: str | tuple[float, float],
        axis: int,
        seeds: dict[int, np.ndarray],
        *,
        mode: str,
        iou_threshold: float,
        index_range: tuple[int, int],
        stop_slices: list[int],
        ctx: JobContext,
    ) -> JobOutput:
        """3D propagation of the seed masks along ``axis`` (engine's ``propagate``)."""
        from .propagation import propagate

        notes: list[str] = []
        predictor = self.predictor(choice, ctx, notes)
        window = self.window(volume, window_spec)
        result: PropagationResult = propagate(
            predictor,
            volume,
            seeds,
            window,
            axis=axis,
            mode=mode,
            iou_threshold=iou_threshold,
            index_range=index_range,
            stop_slices=stop_slices,
            ctx=ctx,
        )
        return self.output(result, window, notes)


def slice_requests(
    volume: np.ndarray, axis: int, prompts: dict[int, Prompts], feedback: dict[int, np.ndarray]
) -> list[SliceRequest]:
    """Requests for the given slices' prompts, with each slice's previous logits where given."""
    return [
        SliceRequest(index, Plane(axis, index).take(volume), p, feedback.get(index))
        for index, p in sorted(prompts.items())
    ]
