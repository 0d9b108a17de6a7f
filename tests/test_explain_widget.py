"""Prototype explanations dock, opened from the Plugins menu: explain a clicked voxel and the predicted region,
whole-volume heatmaps, the source slice, forget / restore, the report, and a model without a bank."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_explain import case  # noqa: F401 (fixture)
from test_explain import labelled_cases, tiny_card  # noqa: F401 (fixture)

from napari_medadapt.core.explain.bank import source_text
from napari_medadapt.core.volume import canonical_modality
from napari_medadapt.widgets._layers import image_layers_by_modality, is_result_layer
from napari_medadapt.widgets.explain import EVIDENCE_LAYER, POINT_LAYER, UNRESTRICTED, heatmap_layer_name
from napari_medadapt.widgets.explain_table import SOURCE_COLUMN, SOURCE_MIN_WIDTH

DOCK = "Prototype explanations"


def _wait(widget, qtbot, timeout=120000) -> None:
    if widget.handle is not None:
        with qtbot.waitSignal(widget.handle.finished, timeout=timeout):
            pass


@pytest.fixture
def dock(case, plugin_viewer, open_plugin_dock, qtbot):  # noqa: F811
    folder, labels = case
    viewer = plugin_viewer(folder)
    widget = open_plugin_dock(viewer, DOCK)
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("glioma2d"))
    qtbot.waitUntil(lambda: widget.explain_button.isEnabled(), timeout=30000)
    return viewer, widget, labels


def test_explain_voxel_region_forget_source_and_report(dock, qtbot, tmp_path, notifications):
    viewer, widget, labels = dock
    assert "40 prototypes, projected prototypes" in widget.bank_label.text()
    widget.place_point()
    zyx = np.argwhere(labels == 2)[len(np.argwhere(labels == 2)) // 2]
    points = viewer.layers[POINT_LAYER]
    assert points.mode == "add"
    points.add(points.world_to_data(viewer.layers["flair"].data_to_world(zyx)))
    widget.explain()
    _wait(widget, qtbot)
    assert widget.table.rowCount() == 5 and "Predicted" in widget.status.text()
    first = widget.result.explanation.matches[0]
    assert widget.table.item(0, 1).text() == f"#{first.id}" and widget.table.item(0, 2).text() == first.class_name
    assert widget.similar_label.text().startswith("Similar training slices: ") and " plane " in widget.similar_label.text()
    heat = viewer.layers[heatmap_layer_name(first.id, f"plane {zyx[0]}")]  # the selected row's heatmap, this plane first
    assert heat.data[zyx[0]].max() > 0.5 and not heat.data[(zyx[0] + 1) % 8].any()

    widget.volume_heatmaps()
    _wait(widget, qtbot)
    focus, view = widget.result.focus, "inside the predicted region at the point + 5 mm"
    heat = viewer.layers[heatmap_layer_name(first.id, view)]  # the honest view, and its name says what it shows
    assert focus[tuple(zyx)] and focus.sum() < focus.size / 2 and heat.data[(zyx[0] + 1) % 8].any()
    assert not np.asarray(heat.data)[~focus].any() and view in widget.status.text()
    widget.focus_check.setChecked(False)  # the unrestricted heatmap, one click away
    heat = viewer.layers[heatmap_layer_name(first.id, UNRESTRICTED)]
    assert np.asarray(heat.data)[~focus].any() and "unrestricted" in widget.status.text()
    widget.focus_check.setChecked(True)
    assert heatmap_layer_name(first.id, view) in viewer.layers

    widget.target_combo.setCurrentText("predicted region")
    widget.explain()
    _wait(widget, qtbot)
    (evidence,) = [np.asarray(layer.data, np.float32) for layer in viewer.layers if layer.name.startswith(EVIDENCE_LAYER)]
    assert evidence[labels > 0].mean() > evidence[labels == 0].mean()
    assert widget.result.explanation.target["description"] == "predicted region at the point"

    widget.table.selectRow(1)
    widget.open_source()
    _wait(widget, qtbot)
    pid = widget.selected_ids()[0]
    assert f"prototype #{pid} source" in viewer.layers and f"prototype #{pid} patch" in viewer.layers

    edema = [p["id"] for p in widget.bank.card["prototypes"] if p["label"] == 2]
    widget.forget(edema)
    _wait(widget, qtbot)
    changed = viewer.layers["prediction without forgotten prototypes"]
    assert "voxels changed" in widget.status.text() and notifications.take("Prototypes forgotten", "info")
    assert viewer.layers["changed by forgetting"].data.sum() > 0
    assert any("(forgotten)" in widget.table.item(r, 1).text() for r in range(widget.table.rowCount()))
    assert (np.asarray(changed.data) == 2).sum() < (widget.result.prediction == 2).sum()
    assert any("without prototypes" in widget.model_combo.itemText(i) for i in range(widget.model_combo.count()))
    widget.forget([])
    _wait(widget, qtbot)
    assert "Every prototype restored" in widget.status.text() and notifications.take("restored", "info")
    assert "changed by forgetting" not in viewer.layers

    widget.export_report(tmp_path / "report")
    _wait(widget, qtbot)
    (report,) = (tmp_path / "report").iterdir()  # a new sub-folder, never among the case's files
    assert report.name.startswith("explanation_") and (report / "report.html").is_file() and (report / "explanation.json").is_file()
    assert "Report written" in widget.status.text()
    _check_result_layers(viewer)


def test_model_without_bank_offers_to_build_one(case, plugin_viewer, open_plugin_dock, register_tiny_model, labelled_cases, qtbot, notifications):  # noqa: F811
    folder, _labels = case
    register_tiny_model(tiny_card())
    viewer = plugin_viewer(folder)
    widget = open_plugin_dock(viewer, DOCK)
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("tinyglioma"))
    qtbot.waitUntil(lambda: "has no prototypes" in widget.bank_label.text(), timeout=30000)
    assert "medadapt prototype-bank" in widget.bank_label.text() and not widget.explain_button.isEnabled()
    widget.build_bank(labelled_cases, folder / "tiny.prototypes.json")
    _wait(widget, qtbot)  # the build, then loading the bank
    _wait(widget, qtbot)
    qtbot.waitUntil(lambda: widget.explain_button.isEnabled(), timeout=30000)
    assert "post-hoc" in widget.bank_label.text()
    from napari_medadapt.core.explain import find_bank
    from napari_medadapt.core.models import load_model

    widget.load_bank(find_bank(load_model("glioma2d")).path)  # another model's bank: refused, the current one stays
    assert "built for the model 'glioma2d'" in widget.bank_label.text()
    assert widget.explain_button.isEnabled() and widget.bank.space == "decoder" and widget.bank_path.name == "tiny.prototypes.json"


def test_table_shows_the_whole_source_and_heatmaps_show_on_the_image(dock, qtbot, tmp_path):
    """The source column is readable (elided in the middle, whole in the tooltip, a minimum width, in view) and a
    heatmap is transparent where the prototype does not fire, coloured over the gray image where it does."""
    from qtpy.QtCore import Qt

    viewer, widget, labels = dock
    widget.target_combo.setCurrentText("label region")
    widget.labels_combo.setCurrentText("seg")
    widget.explain()
    _wait(widget, qtbot)
    table = widget.table
    viewer.window.show()
    qtbot.waitUntil(lambda: table.isVisible(), timeout=10000)
    qtbot.wait(300)  # the dock's layout follows the table's width
    assert widget.viewport().width() >= table.width()  # the table, its source column included, fits in the dock
    assert table.textElideMode() == Qt.TextElideMode.ElideMiddle and table.columnWidth(SOURCE_COLUMN) >= SOURCE_MIN_WIDTH
    for row, match in enumerate(widget.result.explanation.matches):
        assert source_text(match.source) in table.item(row, SOURCE_COLUMN).toolTip()
        assert f"plane {match.source['plane']}" in table.item(row, SOURCE_COLUMN).text()
    start = table.columnViewportPosition(SOURCE_COLUMN)  # the source column starts inside the visible table
    assert 0 <= start and start + SOURCE_MIN_WIDTH <= table.viewport().width() + 1
    first = widget.result.explanation.matches[0].id
    plane = widget.result.plane
    heat = viewer.layers[heatmap_layer_name(first, f"plane {plane}")]
    colors = heat.colormap.map(np.array([0.0, 1.0]))
    assert colors[0, 3] == 0 and colors[1, 3] == 1 and heat.blending == "translucent" and heat.opacity >= 0.8
    viewer.dims.set_point(0, float(viewer.layers["flair"].data_to_world([plane, 0, 0])[0]))
    for layer in viewer.layers:  # the gray image and the heatmap only
        layer.visible = layer.name in ("flair", heat.name)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    heat.visible = False
    plain = viewer.screenshot(canvas_only=True, flash=False)
    coloured = (shot[..., 0].astype(int) - shot[..., 2]) > 60
    assert coloured.sum() > 20 and not ((plain[..., 0].astype(int) - plain[..., 2]) > 60).any()
    _check_result_layers(viewer)


def _check_result_layers(viewer) -> None:
    """Every layer the dock added is marked as a result (never a model input) and has no modality in its name."""
    ours = [layer for layer in viewer.layers if layer.name.startswith(("prototype #", EVIDENCE_LAYER, "prediction without", "changed by"))]
    assert ours and all(is_result_layer(layer) and canonical_modality(layer.name) is None for layer in ours)
    assert {layer.name for layer in image_layers_by_modality(viewer).values()} <= {"t1", "t1c", "t2", "flair"}


def test_dock_layers_tell_prototype_ids_apart():
    from types import SimpleNamespace

    from napari_medadapt.widgets.explain_table import DOCK, dock_layers

    def layer(part: str, dock: str = DOCK) -> SimpleNamespace:
        return SimpleNamespace(name=part, metadata={"medadapt": {"role": "result", "dock": dock, "part": part}})

    viewer = SimpleNamespace(layers=[layer("heatmap #1"), layer("heatmap #12"), layer("evidence"), layer("heatmap #1", "other")])
    assert [x.name for x in dock_layers(viewer, "heatmap #1")] == ["heatmap #1"]
    assert [x.name for x in dock_layers(viewer, "heatmap #")] == ["heatmap #1", "heatmap #12"]
