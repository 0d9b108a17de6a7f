"""Prototype explanations dock, opened from the Plugins menu: explain a clicked voxel and the predicted region,
whole-volume heatmaps, the source slice, forget / restore, the report, and a model without a bank."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_explain import case  # noqa: F401 (fixture)
from test_explain import labelled_cases, tiny_card  # noqa: F401 (fixture)

from napari_medadapt.widgets.explain import EVIDENCE_LAYER, POINT_LAYER, heatmap_layer_name

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
    heat = viewer.layers[heatmap_layer_name(first.id)]  # the selected row's heatmap, current plane first
    assert heat.data[zyx[0]].max() > 0.5 and not heat.data[(zyx[0] + 1) % 8].any()

    widget.volume_heatmaps()
    _wait(widget, qtbot)
    assert viewer.layers[heatmap_layer_name(first.id)].data[(zyx[0] + 1) % 8].any()

    widget.target_combo.setCurrentText("predicted region")
    widget.explain()
    _wait(widget, qtbot)
    evidence = np.asarray(viewer.layers[EVIDENCE_LAYER].data, np.float32)
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
