"""Several 3D objects on one volume, never overlapping, each with its own undo history.

The object an interaction is for takes the voxels its new mask claims where the interaction was given (the user's
latest word wins: a 3D box or mask everywhere, a lasso or scribble on the slices it lies on, a click on its slice
or, with :class:`~.engine.SliceEngine`'s default, only near it: :meth:`ObjectEngine.given_on`); elsewhere the other
objects keep their voxels. The objects that lose voxels get them back when that interaction is undone, if no object
holds them by then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MedAdaptError
from .engine import ObjectEngine
from .interactions import Interaction, ObjectState


@dataclass
class _Step:
    interaction: Interaction
    previous: np.ndarray
    taken: dict[int, np.ndarray] = field(default_factory=dict)


class ObjectSet:
    """Objects on one volume, updated through an :class:`ObjectEngine`.

    Parameters
    ----------
    engine
        The engine (it holds the volume).
    """

    def __init__(self, engine: ObjectEngine) -> None:
        self.engine = engine
        self.shape = tuple(engine.volume.shape)
        self.objects: dict[int, ObjectState] = {}
        self.names: dict[int, str] = {}
        self._history: dict[int, list[_Step]] = {}
        self._next_id = 1

    def add(self, name: str | None = None, mask: np.ndarray | None = None, interactions: list | None = None,
            obj_id: int | None = None) -> int:
        """A new object (empty, or with a known ``mask`` and the ``interactions`` that made it); returns its id
        (``obj_id`` when given and never used, else the next one: ids are never reused).

        A given mask loses the voxels that other objects hold.
        """
        if obj_id is None or obj_id in self.objects or obj_id < self._next_id:
            obj_id = self._next_id  # ids are never reused (an undo must not reach a later object)
        self._next_id = obj_id + 1
        m = np.zeros(self.shape, bool) if mask is None else np.asarray(mask, bool).copy()
        if m.shape != self.shape:
            raise MedAdaptError(f"The mask of object {name or obj_id} has shape {m.shape}; the volume has {self.shape}.")
        for other in self.objects.values():
            m &= ~other.mask
        self.objects[obj_id] = ObjectState(m, list(interactions or []))
        self.names[obj_id] = name or f"object {obj_id}"
        self._history[obj_id] = []
        return obj_id

    def _get(self, obj_id: int) -> ObjectState:
        if obj_id not in self.objects:
            raise MedAdaptError(f"There is no object {obj_id}; objects: {sorted(self.objects)}.")
        return self.objects[obj_id]

    def interact(self, obj_id: int, interaction: Interaction) -> np.ndarray:
        """Apply one interaction to object ``obj_id``; returns its new mask."""
        state = self._get(obj_id)
        state.interactions.append(interaction)
        try:
            new = np.asarray(self.engine.update(state, interaction), bool)
        except BaseException:
            state.interactions.pop()
            raise
        step = _Step(interaction, state.mask)
        given = self.engine.given_on(state, interaction)
        elsewhere = None if given is None else ~given  # where other objects keep their voxels
        for other_id, other in self.objects.items():
            if other_id != obj_id:
                if elsewhere is not None:
                    new = new & ~(other.mask & elsewhere)
                lost = other.mask & new
                if lost.any():
                    step.taken[other_id] = lost
                    other.mask = other.mask & ~lost
        state.mask = new
        self._history[obj_id].append(step)
        return new

    def can_undo(self, obj_id: int) -> bool:
        """Whether object ``obj_id`` has an interaction to undo."""
        return bool(self._history.get(obj_id))

    def undo_steps(self, obj_id: int) -> int:
        """How many interactions of object ``obj_id`` can be undone."""
        return len(self._history.get(obj_id, ()))

    def rename(self, obj_id: int, name: str) -> None:
        """Give object ``obj_id`` a new name."""
        self._get(obj_id)
        name = name.strip()
        if not name:
            raise MedAdaptError("An object needs a name: type one.")
        self.names[obj_id] = name

    def undo(self, obj_id: int) -> np.ndarray:
        """Undo object ``obj_id``'s last interaction: its previous mask comes back (and the voxels it had taken
        from other objects go back to them where free); returns the restored mask."""
        state = self._get(obj_id)
        if not self._history[obj_id]:
            raise MedAdaptError(f"{self.names[obj_id]} has nothing to undo.")
        step = self._history[obj_id].pop()
        state.interactions.pop()
        held = np.zeros(self.shape, bool)
        for other_id, other in self.objects.items():
            if other_id != obj_id:
                held |= other.mask
        state.mask = step.previous & ~held
        for other_id, lost in step.taken.items():
            if other_id in self.objects:
                back = lost & ~state.mask
                for third_id, third in self.objects.items():
                    if third_id not in (other_id,):
                        back &= ~third.mask
                self.objects[other_id].mask = self.objects[other_id].mask | back
        return state.mask

    def remove(self, obj_id: int) -> None:
        """Forget object ``obj_id``."""
        self._get(obj_id)
        del self.objects[obj_id], self.names[obj_id], self._history[obj_id]
        for steps in self._history.values():  # voxels it had lost are nobody's to give back now
            for step in steps:
                step.taken.pop(obj_id, None)

    def labels(self, dtype: type = np.uint8) -> np.ndarray:
        """Label map of all objects (each object's id as its value)."""
        if self.objects and max(self.objects) > np.iinfo(dtype).max:
            dtype = np.uint16
        out = np.zeros(self.shape, dtype)
        for obj_id, state in self.objects.items():
            out[state.mask] = obj_id
        return out
