"""A live loss curve for docks that train something in the compute worker (test-time adaptation, few-shot)."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossRelay(QObject):
    """Carries ``(iteration, loss, job generation)`` from the compute thread to the Qt main thread."""

    loss = Signal(int, float, int)


class LossPlot(QWidget):
    """A small matplotlib plot of the loss per iteration, updated live."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # constrained layout adapts to the dock's size; the minimum size keeps the axes from collapsing to
        # zero (matplotlib then warns, and napari shows that warning as a notification)
        self.figure = Figure(figsize=(3.2, 2.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumSize(200, 140)
        self.axes = self.figure.add_subplot(111)
        self.iterations: list[int] = []
        self.losses: list[float] = []
        (self.line,) = self.axes.plot([], [], marker="o", markersize=3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.clear()

    def clear(self, ylabel: str = "loss") -> None:
        """Empty the plot."""
        self.iterations, self.losses = [], []
        self.line.set_data([], [])
        self.axes.set_xlabel("iteration")
        self.axes.set_ylabel(ylabel)
        self.canvas.draw_idle()

    def add_point(self, iteration: int, loss: float) -> None:
        """Append one point and redraw."""
        self.iterations.append(iteration)
        self.losses.append(loss)
        self.line.set_data(self.iterations, self.losses)
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()
