"""Take the user guide's screenshots of the real viewer (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Opens the demo (sample glioma case, every dock), segments the volume with the bundled model through the
Segment dock and saves one PNG per dock into docs/images/.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> int:
    from qtpy.QtWidgets import QApplication

    from napari_medadapt.cli.demo import open_demo_viewer

    viewer, docks = open_demo_viewer()
    viewer.window._qt_window.resize(1600, 1000)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    def settle() -> None:
        for _ in range(20):
            QApplication.processEvents()

    settle()
    segment_dock, segment_widget = docks["Segment volume"]
    segment_widget.run()
    if segment_widget._handle is not None:
        segment_widget._handle.wait(timeout=900)
    settle()
    for index, (name, (dock, _widget)) in enumerate(docks.items()):
        dock.raise_()
        settle()
        path = OUT_DIR / f"dock_{index + 1}_{name.lower().replace(' ', '_')}.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"saved {path}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
