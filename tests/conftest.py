"""Helpers shared by the test modules: real-data crops, tiny saved models and docks on a viewer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest
from _data import MISSING_REASON, REAL_DATA, SAMPLE_CASE

SAMPLE_CASE_NAME = "glioma_tcga_fg6692"  # packaged as sample data: tests using it run without ../shared
#: Fixtures that put a napari viewer or Qt widgets in a test: such tests are marked ``gui``.
GUI_FIXTURES = {"make_napari_viewer", "plugin_viewer", "open_dock", "qtbot"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a viewer or Qt as ``gui`` (``-m "not gui"`` runs the rest headless)."""
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data folder (``../shared/data/real`` beside the repository); skips the test when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(MISSING_REASON)
    return REAL_DATA


@pytest.fixture(scope="session")
def write_crops() -> Callable[..., Path]:
    """``write(folder, names, crop, case=the sample case)``: save ``crop`` of each ``NAME.nii.gz`` of a real case
    (skips the test when the case is another one and ``../shared`` is absent)."""

    def write(folder: Path, names: Sequence[str], crop: tuple[slice, ...], case: str = SAMPLE_CASE_NAME) -> Path:
        source = SAMPLE_CASE if case == SAMPLE_CASE_NAME else REAL_DATA / case
        if not source.is_dir():
            pytest.skip(MISSING_REASON)
        for name in names:
            nib.save(nib.load(str(source / f"{name}.nii.gz")).slicer[crop], str(folder / f"{name}.nii.gz"))
        return folder

    return write


@pytest.fixture(scope="session")
def save_tiny_model() -> Callable[..., Path]:
    """``save(folder, card, seed=0)``: build ``card``'s untrained network (seeded), save it; the card's path."""
    import torch

    from napari_medadapt.core.models import build_model, save_model

    def save(folder: Path, card: Any, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        return save_model(build_model(card).eval(), folder / f"{card.name}.safetensors")

    return save


@pytest.fixture
def register_tiny_model(tmp_path, monkeypatch, save_tiny_model) -> Callable[[Any], Path]:
    """``register(card)``: save a tiny model in a temporary folder on ``MEDADAPT_MODEL_PATH``; the folder."""

    def register(card: Any) -> Path:
        save_tiny_model(tmp_path, card)
        monkeypatch.setenv("MEDADAPT_MODEL_PATH", str(tmp_path))
        return tmp_path

    return register


PLUGIN = "napari-medadapt"


class Notifications:
    """Every napari notification of a test, with napari's hooks installed as ``napari.run`` installs them
    (Python warnings and uncaught exceptions, in any thread, become notifications too).

    A test claims the warnings and errors it provokes with :meth:`take`; any other warning or error fails the
    test at teardown, as a warning toast would fail a user.
    """

    def __init__(self) -> None:
        self.records: list[Any] = []

    def receive(self, notification: Any) -> None:
        self.records.append(notification)

    def problems(self) -> list[Any]:
        """Warnings and errors not claimed yet."""
        from napari.utils.notifications import NotificationSeverity

        return [n for n in self.records if n.severity >= NotificationSeverity.WARNING]

    def messages(self, severity: str | None = None) -> list[str]:
        """Texts of the notifications so far (of one severity, e.g. ``"info"``)."""
        return [str(n.message) for n in self.records if severity is None or str(n.severity) == severity]

    def take(self, words: str, severity: str = "error") -> str:
        """Remove and return the first ``severity`` notification containing ``words`` (fails when absent)."""
        for n in self.records:
            if str(n.severity) == severity and words in str(n.message):
                self.records.remove(n)
                return str(n.message)
        raise AssertionError(f"no {severity} notification containing {words!r}; got {self.messages()}")


@pytest.fixture
def notifications(monkeypatch) -> Any:
    """:class:`Notifications` of this test (napari's hooks installed; unclaimed warnings/errors fail it)."""
    from napari.utils.notifications import notification_manager

    monkeypatch.setattr(notification_manager, "_seen_warnings", set())  # every test sees its own warnings
    monkeypatch.setenv("NAPARI_CATCH_ERRORS", "1")
    monkeypatch.setattr(notification_manager, "catch_error", True)
    recorder = Notifications()
    notification_manager.notification_ready.connect(recorder.receive)
    notification_manager.install_hooks()
    try:
        yield recorder
    finally:
        notification_manager.restore_hooks()
        notification_manager.notification_ready.disconnect(recorder.receive)
    problems = recorder.problems()
    assert not problems, "unexpected notifications: " + "; ".join(f"{n.severity}: {n.message}" for n in problems)


@pytest.fixture
def plugin_viewer(make_napari_viewer, notifications, monkeypatch) -> Callable[..., Any]:
    """``make(folder=None)``: a viewer (with ``folder``'s case opened by the plugin's reader) whose docks
    are opened as a user opens them: ``open_plugin_dock(viewer, "Segment volume")``."""
    # docks get napari's PublicOnlyProxy of the viewer; setting attributes off the main thread must fail
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")

    def make(folder: Path | None = None) -> Any:
        viewer = make_napari_viewer()
        if folder is not None:
            viewer.open(str(folder), plugin=PLUGIN)
        return viewer

    return make


def _open_plugin_dock(viewer: Any, name: str) -> Any:
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


@pytest.fixture
def open_plugin_dock() -> Callable[[Any, str], Any]:
    """``open(viewer, name)``: open the plugin dock ``name`` as the Plugins menu does; the dock's widget."""
    return _open_plugin_dock


@pytest.fixture
def open_dock(plugin_viewer, open_plugin_dock) -> Callable[..., tuple[Any, Any]]:
    """``open(folder, dock_name, model_name)``: a viewer with ``folder``'s case and the dock on that model."""

    def open_(folder: Path, dock_name: str, model_name: str) -> tuple[Any, Any]:
        viewer = plugin_viewer(folder)
        widget = open_plugin_dock(viewer, dock_name)
        index = widget.model_combo.findText(model_name)
        assert index >= 0
        widget.model_combo.setCurrentIndex(index)
        return viewer, widget

    return open_
