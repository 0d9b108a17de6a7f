"""Take the user guide's screenshots of the real viewer, each dock after its main workflow (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Opens the demo (sample glioma case, every dock) and, as a user would: segments the volume with the bundled
model; draws a box around the tumour for Segment Anything (LiteMedSAM), then a 3D box and a corrective click in the
3D objects dock; adapts the model at test time; places a positive and
a negative keypoint for TTS; adapts a few-shot adapter to three painted slices; explains the predicted tumour by its prototypes and
opens the top prototype's training slice; then shows the coronal view; finally opens the same patient's raw export and
prepares it in the Prepare scans dock (needs ../shared or MEDADAPT_DATA_DIR). One PNG per step goes to
docs/images/. Takes a few minutes on a CPU (the adaptation is the longest step).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> int:
    from qtpy.QtWidgets import QApplication

    from napari_medadapt.cli.demo import open_demo_viewer

    viewer, docks = open_demo_viewer()
    viewer.window.resize(1600, 1000)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    def settle(rounds: int = 40) -> None:
        for _ in range(rounds):
            QApplication.processEvents()

    def wait(handle) -> None:
        if handle is not None:
            handle.wait(timeout=1800)
        settle()

    def shot(index: int, name: str) -> None:
        path = OUT_DIR / f"dock_{index}_{name}.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"saved {path}")

    settle()
    reference = np.asarray(viewer.layers["seg_fusion"].data)
    z = int(np.argmax((reference > 0).sum(axis=(1, 2))))
    tumour = np.argwhere(reference[z] == 2)
    centre = tumour[len(tumour) // 2]
    viewer.dims.set_point(0, z * viewer.layers["flair"].scale[0])
    viewer.layers["seg_fusion"].visible = False

    segment_dock, segment = docks["Segment volume"]
    segment_dock.raise_()
    segment.run()
    wait(segment.handle)
    shot(1, "segment_volume")

    sam_dock, sam = docks["Segment Anything"]
    sam_dock.raise_()
    sam_points, boxes = sam.ensure_prompt_layers()  # LiteMedSAM: the box tool is selected
    rows, cols = np.nonzero(reference[z] > 0)  # a box around the tumour, a few voxels loose
    r0, r1, c0, c1 = rows.min() - 3, rows.max() + 3, cols.min() - 3, cols.max() + 3
    boxes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float))
    settle()
    wait(sam.update_preview() or sam._predict_handle)
    # then one corrective click where the box's mask is most wrong (the click decoder answers it)
    from napari_medadapt.core.sam import next_click

    correction = next_click(np.asarray(viewer.layers["SAM preview"].data[z]) > 0, reference[z] > 0)
    if correction is not None:
        r, c, positive = correction
        if not positive:
            sam.polarity.toggle()
        sam_points.add([z, r, c])
        settle()
        wait(sam.update_preview() or sam._predict_handle)
    shot(2, "segment_anything")

    # the 3D objects dock: a 3D box around the tumour (its first and last slice), then one corrective click
    objects_dock, objects = docks["Segment Anything 3D objects"]
    objects_dock.raise_()
    ours = ("3D objects", "object clicks", "object boxes and lassos", "object scribbles")
    sam_layers = [layer for layer in viewer.layers if layer.visible and (layer.name.startswith("SAM ")
                  or (layer.__class__.__name__ == "Labels" and layer.name not in ours))]
    for layer in sam_layers:  # the other docks' results hidden: the object alone over the FLAIR
        layer.visible = False
    shapes = objects.ensure_prompt_layers()
    shapes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float))
    settle()
    extent = np.flatnonzero((reference > 0).any(axis=(1, 2)))
    objects.box_panel.first_spin.setValue(int(extent.min()))
    objects.box_panel.last_spin.setValue(int(extent.max()))
    wait(objects.segment_box())
    correction = next_click(np.asarray(viewer.layers["3D objects"].data[z]) == 1, reference[z] > 0)
    if correction is not None:
        r, c, positive = correction
        if not positive:
            objects.polarity.toggle()
        viewer.layers["object clicks"].add([z, r, c])
        settle()
        wait(objects.handle)
    shot(8, "segment_anything_3d_objects")
    for layer in viewer.layers:
        if layer.name in ours:
            layer.visible = False
    for layer in sam_layers:
        layer.visible = True

    tta_dock, tta = docks["Test-time adaptation"]
    tta_dock.raise_()
    tta.adapt()
    wait(tta.handle)
    shot(3, "test-time_adaptation")

    tts_dock, tts = docks["TTS keypoint muting"]
    tts_dock.raise_()
    tts.live_check.setChecked(False)
    points = tts.ensure_keypoint_layer()
    brain = np.argwhere((np.asarray(viewer.layers["flair"].data[z]) > 0) & (reference[z] == 0))
    points.add([z, *centre])
    tts.polarity.toggle()
    points.add([z, *brain[len(brain) // 3]])
    settle()
    wait(tts.apply_to_volume())
    shot(4, "tts_keypoint_muting")

    fewshot_dock, fewshot = docks["Few-shot adapter"]
    fewshot_dock.raise_()
    extent = np.flatnonzero((reference > 0).any(axis=(1, 2)))
    painted = np.zeros_like(reference)
    slices = [int(extent[int(round(q * (len(extent) - 1)))]) for q in (0.25, 0.5, 0.75)]
    painted[slices] = reference[slices]  # as if the user had painted three slices through the tumour
    viewer.add_labels(painted, name="painted slices", scale=viewer.layers["flair"].scale)
    fewshot.labels_combo.setCurrentText("painted slices")
    fewshot.model_combo.setCurrentIndex(fewshot.model_combo.findText("glioma2d"))
    fewshot.adapt()
    wait(fewshot.handle)
    wait(fewshot.handle)  # then the leave-one-slice-out check
    viewer.layers["painted slices"].visible = False
    viewer.dims.set_point(0, (slices[0] + slices[1]) // 2 * viewer.layers["flair"].scale[0])
    settle()
    shot(6, "few-shot_adapter")

    explain_dock, explain = docks["Prototype explanations"]
    explain_dock.raise_()
    explain.model_combo.setCurrentIndex(explain.model_combo.findText("glioma2d"))
    wait(explain.handle)  # finding the model's prototype bank
    explain.place_point()
    viewer.layers["explain point"].add([z, *centre])
    explain.target_combo.setCurrentText("predicted region")
    explain.explain()
    wait(explain.handle)
    viewer.dims.set_point(0, z * viewer.layers["flair"].scale[0])
    explain.table.selectRow(0)
    explain.open_source()
    wait(explain.handle)
    shown = {"flair", "explain point"} | {name for name in (layer.name for layer in viewer.layers) if name.startswith("prototype #")}
    for layer in viewer.layers:  # the explanation alone over the FLAIR: the other docks' results (and evidence) hidden
        layer.visible = layer.name in shown
    viewer.reset_view()
    settle()
    shot(7, "prototype_explanations")

    viewer.dims.order = (1, 0, 2)  # coronal
    viewer.dims.set_point(1, centre[0] * viewer.layers["flair"].scale[1])
    settle()
    shot(5, "coronal_view")
    viewer.close()
    prepare_raw_case(settle, wait)
    return 0


def prepare_raw_case(settle, wait) -> None:
    """The raw export of the same patient (each sequence on its own grid, skull present) in the Prepare scans
    dock, prepared, FLAIR slice through the tumour with the brain mask (``dock_0_prepare_scans.png``)."""
    import napari

    from napari_medadapt.core.paths import data_dir

    viewer = napari.Viewer()
    viewer.window.resize(1600, 1000)
    viewer.open(str(data_dir() / "glioma_tcga_fg6692_raw"), plugin="napari-medadapt")
    _widget, dock = viewer.window.add_plugin_dock_widget("napari-medadapt", "Prepare scans")
    settle()
    wait(dock.run())
    viewer.dims.set_point(0, 14 * viewer.layers["flair"].scale[0])
    settle()
    path = OUT_DIR / "dock_0_prepare_scans.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"saved {path}")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
