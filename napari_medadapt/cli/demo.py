"""``medadapt demo``: open napari with the sample glioma MRI and every dock of the plugin."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PLUGIN_NAME = "napari-medadapt"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="open napari with the sample glioma MRI and every dock",
        description="Open napari with the sample glioma MRI (4 modalities + reference labels) and every "
        "dock of the plugin.",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the whole window to this PNG, then quit (for headless machines)",
    )
    parser.add_argument(
        "--case",
        type=Path,
        default=None,
        help="open this case folder (modality files t1/t1c/t2/flair and label maps) instead of the sample",
    )
    parser.set_defaults(func=run)


def plugin_widget_names() -> list[str]:
    """Names of the dock widgets the plugin's manifest contributes, in manifest order."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest(PLUGIN_NAME)
    return [widget.display_name for widget in (manifest.contributions.widgets or [])]


def open_demo_viewer(case: Path | None = None) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """Create a napari viewer with the case (default: the bundled sample) and every plugin dock.

    Returns
    -------
    viewer, docks
        The viewer, and for each dock's display name its ``(dock widget, dock contents)`` pair.
    """
    import napari
    from qtpy.QtCore import QTimer

    from napari_medadapt._sample_data import sample_case_dir

    viewer = napari.Viewer(title="napari-medadapt demo")
    case_dir = case if case is not None else sample_case_dir()
    viewer.open(str(case_dir), plugin=PLUGIN_NAME)
    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name) for name in plugin_widget_names()}
    if docks:
        # the docks join one group of tabs once shown; then put Segment volume in front (the sample is prepared
        # already: the Prepare scans dock is for raw exports)
        front = docks.get("Segment volume") or next(iter(docks.values()))
        QTimer.singleShot(800, front[0].raise_)
    viewer.dims.set_point(0, viewer.dims.range[0].stop / 2 if viewer.dims.ndim else 0)
    return viewer, docks


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError

    try:
        import napari
        from qtpy.QtCore import QTimer
    except ImportError as err:
        raise CLIError(
            f"medadapt demo needs napari and a Qt binding ({err}): pip install 'napari-medadapt[pyqt6]'"
        ) from err

    viewer, _ = open_demo_viewer(args.case)
    if args.screenshot is not None:
        screenshot_path = args.screenshot

        def save_and_quit() -> None:
            screenshot_path.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(screenshot_path), canvas_only=False)
            print(f"saved a screenshot of the demo to {screenshot_path}")
            viewer.close()

        viewer.window.resize(1600, 1000)
        QTimer.singleShot(1500, save_and_quit)
    napari.run()
    return 0
