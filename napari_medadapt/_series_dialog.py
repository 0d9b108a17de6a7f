"""The dialog that asks which DICOM series of a folder to open (several may be chosen); the largest CT/MR series
is selected at first. The patient's name and ID are shown, as a clinician expects to check them."""

from __future__ import annotations

from typing import Any


def _dialog_class() -> type:
    from qtpy.QtWidgets import QAbstractItemView, QDialog, QDialogButtonBox, QLabel, QListWidget, QVBoxLayout

    class SeriesDialog(QDialog):
        """A list of series (multi-selection) with Open / Cancel."""

        def __init__(self, series: list[Any], default: list[Any], parent: Any = None) -> None:
            super().__init__(parent)
            self.setWindowTitle("Open DICOM series")
            self.series = series
            layout = QVBoxLayout(self)
            patient = series[0].patient if series else {}
            who = " ".join(v for v in (patient.get("name", "").replace("^", " "), patient.get("id", "")) if v)
            layout.addWidget(QLabel(f"Patient: {who or '(not given)'}\nThis folder holds {len(series)} image series; "
                                    "choose the ones to open (Ctrl+click for several)."))  # fmt: skip
            self.list = QListWidget()
            self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
            for index, info in enumerate(series):
                self.list.addItem(info.summary())
                self.list.item(index).setSelected(info in default)
            layout.addWidget(self.list)
            buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
            buttons.accepted.connect(self.accept)
            buttons.rejected.connect(self.reject)
            layout.addWidget(buttons)

        def chosen(self) -> list[Any]:
            """The selected series, in list order."""
            return [self.series[i] for i in range(self.list.count()) if self.list.item(i).isSelected()]

    return SeriesDialog


def ask_series(series: list[Any], default: list[Any]) -> list[Any] | None:
    """The series the user picks; ``None`` without a Qt application or when cancelled (the caller then opens the
    default with a note)."""
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # no Qt binding: headless
        return None
    app = QApplication.instance()
    if app is None:
        return None
    dialog = _dialog_class()(series, default, app.activeWindow())
    if not dialog.exec():
        return None
    return dialog.chosen() or None
