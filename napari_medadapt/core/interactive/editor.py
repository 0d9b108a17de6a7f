"""The 3D objects of the images a viewer segments, edited only by jobs in the compute thread (Qt-free).

A dock never holds an :class:`~.objects.ObjectSet`: it submits :meth:`ObjectEditor.interact`, ``undo``, ``remove``,
``rename`` or ``listing`` as jobs, and each returns an :class:`ObjectsSnapshot` (the label map of every object and a summary
of each, volume in mL included) that the dock shows. While a job runs, a :class:`LiveMask` the dock created
receives every slice of the changing object as soon as it is decided, so the dock can show the object growing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MedAdaptError
from .engine import SliceEngine
from .interactions import Interaction
from .objects import ObjectSet

if TYPE_CHECKING:
    from ..jobs import JobContext
    from ..sam.workspace import ModelChoice, SamWorkspace


@dataclass(frozen=True)
class ObjectSummary:
    """One object as the dock lists it."""

    id: int
    name: str
    voxels: int
    millilitres: float
    undo_steps: int


@dataclass
class ObjectsSnapshot:
    """Every object of one image after a job: ``labels`` holds each object's id; ``changed`` is the object the job
    worked on (``None``: none); ``message`` says what happened."""

    labels: np.ndarray
    objects: list[ObjectSummary]
    changed: int | None = None
    message: str = ""
    notes: list[str] = field(default_factory=list)
    model: str | None = None  # the model that computed the interaction (``None``: no model ran), its weights' hash
    weights_hash: str | None = None
    device: str | None = None

    def summary(self, obj_id: int | None) -> ObjectSummary | None:
        """The summary of object ``obj_id`` (``None`` if it is not there)."""
        return next((o for o in self.objects if o.id == obj_id), None)


def _kind(interaction: Interaction) -> str:
    """What the user gave, in words ("click", "3D box", ...)."""
    return {"Box3D": "3D box", "MaskPrompt": "mask"}.get(type(interaction).__name__, type(interaction).__name__.lower())


class LiveMask:
    """The slices of the object a job is changing, handed from the job to the dock as soon as each is decided (safe
    across the two threads): :meth:`take_changes` gives those decided since the last look, which a viewer redraws in
    place without copying the volume."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._object: int | None = None
        self._changes: dict[tuple[int, int], np.ndarray] = {}

    def start(self, obj_id: int) -> None:
        """Begin showing object ``obj_id`` (compute thread)."""
        with self._lock:
            self._object, self._changes = obj_id, {}

    def put(self, axis: int, index: int, plane: np.ndarray) -> None:
        """Slice ``index`` along volume axis ``axis`` is now ``plane`` (compute thread)."""
        with self._lock:
            if self._object is not None:
                self._changes[(axis, index)] = np.array(plane, bool)

    def take_changes(self) -> tuple[int, dict[tuple[int, int], np.ndarray]] | None:
        """``(object id, {(axis, index): slice})``: the slices decided since the last call, or ``None`` (UI
        thread)."""
        with self._lock:
            if not self._changes:
                return None
            changes, self._changes = self._changes, {}
            return int(self._object or 0), changes


@dataclass
class _Board:
    """The objects of one image with the engine that edits them."""

    volume: np.ndarray
    voxel_ml: float
    objects: ObjectSet
    engine_key: tuple
    aliases: dict[int, int] = field(default_factory=dict)  # a dock's provisional id (< 0) -> the object's id


class ObjectEditor:
    """The objects of every image being segmented, each image under a key its dock chooses.

    Parameters
    ----------
    sam
        The session's promptable model workspace (model loading, embedding cache, windows).
    """

    def __init__(self, sam: SamWorkspace) -> None:
        self.sam = sam
        self._boards: dict[str, _Board] = {}

    def _board(self, key: str, volume: np.ndarray, spacing: tuple[float, float, float], choice: ModelChoice,
               window_spec: Any, ctx: JobContext, notes: list[str]) -> _Board:
        """The objects of image ``key``, their engine on the chosen model and window (objects of a volume of
        another shape are dropped)."""
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise MedAdaptError(f"3D objects need a 3D image; this one has shape {volume.shape}.")
        predictor = self.sam.predictor(choice, ctx, notes)
        window = self.sam.window(volume, window_spec)
        engine_key = (id(predictor), id(volume), window)
        board = self._boards.get(key)
        if board is None or board.volume.shape != volume.shape:
            board = _Board(volume, 0.0, ObjectSet(SliceEngine(predictor, volume, window)), engine_key)
            self._boards[key] = board
        elif board.engine_key != engine_key:
            board.objects.engine = SliceEngine(predictor, volume, window)
            board.volume, board.engine_key = volume, engine_key
        board.voxel_ml = float(np.prod(spacing)) / 1000.0
        return board

    def snapshot(self, key: str, changed: int | None = None, message: str = "", notes: list[str] | None = None,
                 ) -> ObjectsSnapshot:
        """The objects of image ``key`` now (an empty snapshot for an image without objects)."""
        board = self._boards.get(key)
        if board is None:
            return ObjectsSnapshot(np.zeros((0, 0, 0), np.uint8), [], changed, message, list(notes or []))
        objects = board.objects
        summaries = [
            ObjectSummary(i, objects.names[i], int(s.mask.sum()), float(s.mask.sum()) * board.voxel_ml,
                          objects.undo_steps(i))
            for i, s in sorted(objects.objects.items())
        ]
        return ObjectsSnapshot(objects.labels(), summaries, changed, message, list(notes or []))

    # ------------------------------------------------------------------------------------------ jobs
    def interact(
        self,
        choice: ModelChoice,
        key: str,
        volume: np.ndarray,
        spacing: tuple[float, float, float],
        window_spec: str | tuple[float, float],
        obj_id: int | None,
        interaction: Interaction,
        *,
        name: str | None = None,
        live: LiveMask | None = None,
        ctx: JobContext,
    ) -> ObjectsSnapshot:
        """Apply ``interaction`` to object ``obj_id`` of image ``key``, loading the model when needed.

        ``obj_id`` ``None``, or a negative id the dock handed out before the object existed: a new object named
        ``name`` (later interactions with the same negative id go to it, so a dock can queue several before the
        first result). An object that comes out empty from its first interaction is not kept; a cancelled job
        leaves the objects as they were.
        """
        notes: list[str] = []
        board = self._board(key, volume, spacing, choice, window_spec, ctx, notes)
        objects = board.objects
        asked = obj_id
        if obj_id is not None and obj_id < 0:
            obj_id = board.aliases.get(obj_id)
        created = obj_id is None
        if created:
            obj_id = objects.add(name)
            if asked is not None:
                board.aliases[asked] = obj_id
        if obj_id not in objects.objects:
            raise MedAdaptError(f"Object {obj_id} is gone (removed or undone); select another in the list.")
        state = objects.objects[obj_id]
        state_before, steps_before = state.mask, objects.undo_steps(obj_id)
        if live is not None:
            live.start(obj_id)
        objects.engine.watch(ctx, None if live is None else live.put)
        try:
            mask = objects.interact(obj_id, interaction)
            ctx.check()  # a Cancel that came while the interaction finished still wins
        except BaseException:
            if objects.undo_steps(obj_id) > steps_before:
                objects.undo(obj_id)
            if created:
                objects.remove(obj_id)
            raise
        finally:
            objects.engine.watch(None)
        ran = self.sam.output(None, None, notes)
        label, voxels = objects.names[obj_id], int(mask.sum())
        if np.array_equal(mask, state_before):
            why = objects.engine.note or f"it already agrees with this {_kind(interaction)}"
            message = f"{label} did not change: {why}."
        elif voxels:
            message = f"{label}: {voxels * board.voxel_ml:.2f} mL ({voxels} voxels)."
        else:
            message = f"{label}: the model found nothing there."
        if created and not voxels:
            objects.remove(obj_id)
            obj_id, message = None, f"The model found nothing at this {_kind(interaction)}: no object was made."
        snapshot = self.snapshot(key, obj_id, message, notes)
        snapshot.model = None if ran.model is None else ran.model.name
        snapshot.weights_hash, snapshot.device = ran.weights_hash, ran.device
        return snapshot

    def listing(self, key: str, *, ctx: JobContext) -> ObjectsSnapshot:
        """The objects of image ``key`` (a dock choosing that image again shows them)."""
        return self.snapshot(key)

    def undo(self, key: str, obj_id: int, *, ctx: JobContext) -> ObjectsSnapshot:
        """Undo object ``obj_id``'s last interaction."""
        objects = self._objects(key)
        mask = objects.undo(obj_id)
        name = objects.names[obj_id]
        if not mask.any() and not objects.can_undo(obj_id):  # back to before its first interaction: gone
            objects.remove(obj_id)
            return self.snapshot(key, None, f"Undid the first interaction of {name}: it is gone.")
        return self.snapshot(key, obj_id, f"Undid the last interaction of {name}.")

    def remove(self, key: str, obj_id: int, *, ctx: JobContext) -> ObjectsSnapshot:
        """Remove object ``obj_id``."""
        objects = self._objects(key)
        name = objects.names.get(obj_id, f"object {obj_id}")
        objects.remove(obj_id)
        return self.snapshot(key, None, f"Removed {name}.")

    def rename(self, key: str, obj_id: int, name: str, *, ctx: JobContext) -> ObjectsSnapshot:
        """Give object ``obj_id`` a new name."""
        objects = self._objects(key)
        objects.rename(obj_id, name)
        return self.snapshot(key, obj_id, f"Renamed to {name}.")

    def forget(self, key: str, *, ctx: JobContext) -> None:
        """Drop the objects of image ``key`` (its layer was closed: its volume and masks are freed)."""
        self._boards.pop(key, None)

    def _objects(self, key: str) -> ObjectSet:
        board = self._boards.get(key)
        if board is None:
            raise MedAdaptError("There are no objects on this image yet: draw a box or click on one first.")
        return board.objects
