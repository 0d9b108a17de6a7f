"""Neighbour prefetch of the Segment Anything dock: once the user pauses on a slice, its neighbours are embedded in
the background (the scroll direction first), so moving on and prompting there costs only the decoder.

On a CPU an embedding is not interruptible: a prompt given while a neighbour is being embedded waits for that one
slice (the rest of the prefetch is cancelled), which is why the dock waits for a pause instead of prefetching at
once.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, QTimer

from napari_medadapt.core.sam.prompts import Plane

#: The pause (ms) after a slice change or a finished mask before the neighbours are embedded.
PREFETCH_IDLE_MS = 800
#: Slices embedded ahead in the scroll direction (plus one behind).
PREFETCH_SLICES = 2


class NeighbourPrefetch(QObject):
    """Tracks the displayed slice and the scroll direction; after a pause, asks the dock to embed the neighbours.

    Parameters
    ----------
    start
        ``start(plane, direction)`` submits the embedding job and returns its handle (or ``None``).
    """

    def __init__(self, start: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._start = start
        self._plane: Plane | None = None
        self.direction = 0
        self.handle: Any = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(PREFETCH_IDLE_MS)
        self.timer.timeout.connect(self._run)

    def moved(self, plane: Plane) -> None:
        """The displayed slice is now ``plane``: note the direction, prefetch after the next pause."""
        previous = self._plane
        if previous is None or previous.axis != plane.axis:
            self.direction = 0
        elif plane.index != previous.index:
            self.direction = 1 if plane.index > previous.index else -1
        self._plane = plane
        self.timer.start()

    def pause(self) -> None:
        """A prompt or a long job goes first: stop the prefetch quietly (a running embedding ends after its
        current slice)."""
        self.timer.stop()
        if self.handle is not None and not self.handle.done:
            self.handle.drop()

    def _run(self) -> None:
        if self._plane is not None:
            self.handle = self._start(self._plane, self.direction)
