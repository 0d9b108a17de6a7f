"""3D objects dock: every box, click, scribble or lasso, in any of the three planes, updates the whole 3D object.

A box is drawn on the object's middle slice, then given its first and last slice (a 3D box); its slab is embedded
in the background as soon as the rectangle exists. Clicks ("object clicks": positive green, negative magenta; 'T'
or the radio buttons switch), scribbles ("object scribbles": label 1 = object, 2 = not the object) and lassos
(polygons on "object boxes and lassos") correct the selected object: its slice is predicted again and the change
travels to the neighbouring slices (along the axis of the object's box, whatever plane the prompt was given in;
``core.interactive``). The objects show in "3D objects" while they
grow (progress and Cancel; a cancelled interaction changes nothing); the list gives each one's name and volume in
mL, and Undo takes back the selected object's last interaction. All computing runs as jobs in the viewer's compute
worker (``core.interactive.editor.ObjectEditor``); this dock never reads the session's state itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QPushButton

from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.core.interactive import (
    Box3D,
    Interaction,
    LiveMask,
    ObjectsSnapshot,
)
from napari_medadapt.widgets import sam_prompts as sp
from napari_medadapt.widgets._dock import JobDock
from napari_medadapt.widgets._keypoints import PolarityPanel, current_plane
from napari_medadapt.widgets._layers import (
    class_features,
    layer_geometry,
    target_choices,
)
from napari_medadapt.widgets.objects3d_panels import BoxSlabPanel, ObjectTable, objects_layer
from napari_medadapt.widgets.objects3d_prompts import (
    SCRIBBLES_LAYER,
    SHAPES_LAYER,
    ObjectPromptLayers,
)
from napari_medadapt.widgets.sam_panels import NEW_LABELS, CommitPanel, ModelChoicePanel, WindowChoice
from napari_medadapt.widgets.sam_results import record_commit

if TYPE_CHECKING:
    import napari

OBJECTS_LAYER = "3D objects"
#: how often the growing object is redrawn while a job runs
LIVE_MS = 200


def confirm_remove(parent: Any, name: str) -> bool:
    """Ask before removing object ``name`` (it cannot be undone); the default answer is No."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        parent, "Remove object", f"Remove {name}? This cannot be undone (copy it into a Labels layer first to keep it).",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class ObjectsWidget(JobDock):
    """Dock for 3D objects segmented with a promptable model, one interaction at a time.

    Parameters
    ----------
    napari_viewer
        The viewer this dock works on.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        session = self.worker.session
        self.editor = session.objects  # its methods run only as jobs in the compute worker
        self.sam = session.sam
        self._snapshot: ObjectsSnapshot | None = None
        self._image_key: str | None = None
        self._active: int | None = None  # the object the next click, scribble or lasso changes
        self._provisional = 0  # ids for objects not made yet are handed out downwards from -1 (the editor maps them)
        self._live = LiveMask()  # the dock's jobs run one after another: each fills it while it runs
        self._resync = False  # after a Cancel, show the objects as the editor holds them
        self._embed_handle: Any = None
        self._model_run: ObjectsSnapshot | None = None  # the last interaction's result: its model, hash and device
        self._keys: set[str] = set()  # the images this dock made objects on (forgotten when their layer closes)

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The 3D grayscale image to segment (one channel)")
        self.model_panel = ModelChoicePanel()
        self.window_combo = WindowChoice()
        self.polarity = PolarityPanel("the next click or lasso marks the object",
                                      "the next click or lasso marks what is not the object")
        self.prompts = ObjectPromptLayers(self.viewer, self.polarity, self._clicks_changed, self._shapes_changed,
                                          self._scribbles_painted)
        self.points = self.prompts.points
        self.layers_button = QPushButton("Add prompt layers")
        self.layers_button.setToolTip("Create the click, box/lasso and scribble layers on the image's grid")
        self.box_panel = BoxSlabPanel()
        self.objects_table = ObjectTable()
        self.commit_panel = CommitPanel()
        self.commit_panel.setTitle("Copy the selected object into a Labels layer")
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_panel)
        form.addRow("window", self.window_combo)
        form.addRow("next click", self.polarity)
        layout = self.layout_
        layout.addLayout(form)
        layout.addWidget(self.layers_button)
        layout.addWidget(self.box_panel)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.objects_table)
        layout.addWidget(self.status)
        layout.addWidget(self.commit_panel)
        layout.addStretch(1)
        self.status.setText("Choose an image, add prompt layers, draw a box around an object or click on it.")

        self._live_timer = QTimer(self)
        self._live_timer.setInterval(LIVE_MS)
        self._live_timer.timeout.connect(self._show_live)
        self.layers_button.clicked.connect(self.ensure_prompt_layers)
        self.box_panel.first_here.clicked.connect(lambda: self._slice_here(self.box_panel.first_spin))
        self.box_panel.last_here.clicked.connect(lambda: self._slice_here(self.box_panel.last_spin))
        self.box_panel.segment_button.clicked.connect(self.segment_box)
        self.objects_table.new_button.clicked.connect(self.new_object)
        self.objects_table.undo_button.clicked.connect(self.undo)
        self.objects_table.remove_button.clicked.connect(self.remove)
        self.cancel_button.clicked.connect(self.cancel)  # every job of the dock, not only the newest
        self.objects_table.renamed.connect(self._rename)
        self.objects_table.table.itemSelectionChanged.connect(self._selection_changed)
        self.commit_panel.commit_button.clicked.connect(self.commit)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._dims_changed)
        self._refresh_layers()

    # ---------------------------------------------------------------------------------------- layers
    def _refresh_layers(self, *_: Any) -> None:
        sp.fill_image_combo(self.image_combo, self.viewer)
        self.commit_panel.set_targets(
            [name for name in target_choices(self.viewer, NEW_LABELS)[1:] if name != OBJECTS_LAYER]
        )
        self._image_changed()
        self.prompts.connect()
        open_keys = {str(layer.unique_id) for layer in self.viewer.layers}
        for key in self._keys - open_keys:  # an image with objects was closed: its objects go (memory)
            self._keys.discard(key)
            self.run_job(self.editor.forget, key, description="3D objects: forget a closed image",
                         on_result=lambda _: None)

    @property
    def image_layer(self) -> Any:
        """The chosen image layer, or ``None``."""
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _layer(self, name: str) -> Any:
        return self.prompts.layer(name)

    def _image_changed(self, *_: Any) -> None:
        image = self.image_layer
        key = None if image is None else str(image.unique_id)
        if key == self._image_key:
            return
        self._image_key = key
        self.forget_jobs(quietly=True)  # results of the other image's jobs are dropped, the jobs quietly stopped
        self._snapshot, self._active = None, None
        self._live = LiveMask()  # a job still running for the other image fills the old one, never shown
        self.objects_table.show_snapshot(ObjectsSnapshot(np.zeros((0, 0, 0), np.uint8), []), None)
        self.box_panel.used()  # a box drawn on the other image is not this one's
        self.prompts.empty(OBJECTS_LAYER)
        if image is not None:
            self.prompts.regrid(image)  # emptied, on this image's grid
        if image is not None and self._layer(SHAPES_LAYER) is not None:
            image.visible = True  # prompting has started: show the image the objects are of
        if key is not None:  # objects of an image chosen again come back (the editor keeps them per image)
            self.run_job(self.editor.listing, key, description="3D objects: list", on_result=self._show)

    def _checked_image(self) -> tuple[Any, np.ndarray]:
        image = self.image_layer
        return image, sp.check_image_layer(image)

    def _dims_changed(self, *_: Any) -> None:
        image = self.image_layer
        if image is not None:
            self.points.follow_plane(image)

    def _slice_here(self, spin: Any) -> None:
        image = self.image_layer
        if image is None:
            return
        try:
            spin.setValue(current_plane(self.viewer, image).index)
        except MedAdaptError as err:  # the 3D view shows no slice
            self.report(err)

    # ---------------------------------------------------------------------------------- interactions
    def ensure_prompt_layers(self, *_: Any) -> Any:
        """The click, box/lasso and scribble layers on the image's grid (created when absent); selects the box
        layer in rectangle mode."""
        try:
            image, _ = self._checked_image()
        except MedAdaptError as err:
            self.report(err)
            return None
        image.visible = True
        return self.prompts.ensure(image)

    def _clicks_changed(self) -> None:
        image = self.image_layer
        if image is None:
            return
        try:
            clicks = self.prompts.new_clicks(image)
        except MedAdaptError as err:
            self.report(err)
            return
        for click in clicks:
            self.interact(click, what="click")

    def _shapes_changed(self) -> None:
        """A rectangle starts a 3D box (its slab is embedded in the background); a polygon is a lasso."""
        image = self.image_layer
        if image is None:
            return
        try:
            shapes = self.prompts.new_shapes(image)
        except MedAdaptError as err:
            self.report(err)
            return
        for kind, plane, rc in shapes:
            if kind == "rectangle":
                self._box_drawn(image, plane, rc)
            else:
                self.interact(self.prompts.lasso(plane, rc, self.polarity.positive), what="lasso")
                QTimer.singleShot(0, self.prompts.drop_lassos)  # applied: the object shows it (not inside the event)

    def _box_drawn(self, image: Any, plane: Any, rc: np.ndarray) -> None:
        rect = (rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max())
        rows, cols = plane.in_plane_axes
        spacing = np.asarray(image.scale[-3:], float)
        half_mm = max((rect[2] - rect[0]) * spacing[rows], (rect[3] - rect[1]) * spacing[cols]) / 2
        depth = max(1, int(round(half_mm / spacing[plane.axis])))
        size = image.data.shape[plane.axis]
        self.box_panel.drawn(plane.axis, plane.index, rect, size, depth)
        self.clear_report()
        self.status.setText(self.box_panel.rect_label.text())
        self._embed_slab(plane, *self.box_panel.slab())

    def _embed_slab(self, plane: Any, first: int, last: int) -> None:
        """Embed the slab's slices in the background, from the box's slice outwards (a box or click job first
        cancels it; the embedded slices stay cached)."""
        from napari_medadapt.core.sam.prompts import Plane

        image, choice = self.image_layer, self.model_panel.choice
        if image is None or choice is None:
            return
        try:
            data = sp.check_image_layer(image)
        except MedAdaptError as err:
            self.report(err)
            return
        order = sorted(range(first, last + 1), key=lambda i: abs(i - plane.index))
        neighbours = [i for i in order if i != plane.index]
        self._embed_handle = self.run_job(
            self.sam.prepare, choice, data, self.window_combo.spec(image),
            Plane(plane.axis, plane.index), neighbours=neighbours, interactive_key="objects3d-embed",
            description="3D objects: embedding the box's slices", on_result=lambda output: self._notes(output.notes),
            input_layers=(image,),
        )

    def segment_box(self, *_: Any) -> Any:
        """Segment the 3D box: into the selected object when it is still empty, else into a new object."""
        box = self.box_panel.box()
        if box is None:
            self.report(MedAdaptError("Draw a rectangle around the object first (on the box layer)."))
            return None
        current = self._snapshot.summary(self._active) if self._snapshot is not None else None
        if current is not None and current.voxels:
            self._active = None
        handle = self.interact(box, what="3D box")
        if handle is not None:
            self.box_panel.used()
            self.prompts.empty(SHAPES_LAYER)
        return handle

    def _scribbles_painted(self) -> None:
        """A finished brush stroke: label 1 adds to the selected object, label 2 removes from it."""
        image = self.image_layer
        if image is None:
            return
        try:
            axis = current_plane(self.viewer, image).axis
        except MedAdaptError as err:  # painted in the 3D view
            self.prompts.empty(SCRIBBLES_LAYER)
            self.report(MedAdaptError(f"The scribble was not used: {err}"))
            return
        for scribble in self.prompts.take_scribbles(axis):
            self.interact(scribble, what="scribble")

    def interact(self, interaction: Interaction, what: str) -> Any:
        """Send one interaction to the selected object (a new object when none is selected) as a job."""
        try:
            image, data = self._checked_image()
        except MedAdaptError as err:
            self.report(err)
            return None
        choice = self.model_panel.choice
        if choice is None:
            self.report(MedAdaptError("Choose a model (or a local checkpoint file) first."))
            return None
        if self.viewer.dims.ndisplay != 2:
            self.report(MedAdaptError(f"The {what} was not used: prompts need the 2D view. Switch the viewer to 2D "
                                      "(the 2D/3D button) and give it on a slice."))
            return None
        if self._active is None and not isinstance(interaction, Box3D) and self.model_panel.needs_box:
            title = self.model_panel.entry.title if self.model_panel.entry else choice.name
            self.report(MedAdaptError(f"{title} starts from a box: draw a 3D box around the object first."))
            return None
        obj_id = self._active
        if obj_id is None:  # a new object: later interactions queued before it exists go to it too
            self._provisional -= 1
            obj_id = self._active = self._provisional
        if self._embed_handle is not None and not self._embed_handle.done:
            self._embed_handle.drop()  # quietly: the slices embedded so far stay cached
        self.clear_report()
        geometry = layer_geometry(image)
        spacing = tuple(float(s) for s in (geometry.spacing if geometry is not None else image.scale[-3:]))
        self._keys.add(self._image_key)
        handle = self.run_job(
            self.editor.interact, choice, self._image_key, data, spacing, self.window_combo.spec(image), obj_id,
            interaction, live=self._live, description=f"3D objects: {what}",
            on_result=lambda snapshot: self._show(snapshot, obj_id), input_layers=(image,),
        )
        self.status.setText(f"Updating {'a new object' if obj_id < 0 else self._name_of(obj_id)} from the {what}...")
        self._live_timer.start()
        return handle

    # ---------------------------------------------------------------------------------- object list
    def _name_of(self, obj_id: int | None) -> str:
        summary = self._snapshot.summary(obj_id) if self._snapshot is not None else None
        return summary.name if summary is not None else f"object {obj_id}"

    def new_object(self, *_: Any) -> None:
        """The next click, scribble, lasso or box starts a new object."""
        self._active = None
        self.objects_table.table.clearSelection()
        self.status.setText("The next box, click, scribble or lasso starts a new object.")

    def _selection_changed(self) -> None:
        selected = self.objects_table.selected
        if selected is not None:
            self._active = selected

    def undo(self, *_: Any) -> Any:
        """Undo the selected object's last interaction."""
        obj_id = self.objects_table.selected
        if obj_id is None or self._image_key is None:
            self.report(MedAdaptError("Select the object to undo in the list."))
            return None
        return self.run_job(self.editor.undo, self._image_key, obj_id, description="3D objects: undo",
                            on_result=lambda snapshot: self._show(snapshot, obj_id))

    def remove(self, *_: Any) -> Any:
        """Remove the selected object."""
        obj_id = self.objects_table.selected
        if obj_id is None or self._image_key is None:
            self.report(MedAdaptError("Select the object to remove in the list."))
            return None
        if not confirm_remove(self, self._name_of(obj_id)):
            self.status.setText(f"{self._name_of(obj_id)} was kept.")
            return None
        if obj_id == self._active:
            self._active = None
        return self.run_job(self.editor.remove, self._image_key, obj_id, description="3D objects: remove",
                            on_result=self._show)

    def _rename(self, obj_id: int, name: str) -> None:
        if not name.strip():
            self.report(MedAdaptError("An object needs a name: type one (the old name is kept)."))
            if self._snapshot is not None:
                self.objects_table.show_snapshot(self._snapshot, self._active)
            return
        if self._image_key is not None:
            self.run_job(self.editor.rename, self._image_key, obj_id, name, description="3D objects: rename",
                         on_result=self._show)

    # --------------------------------------------------------------------------------------- display
    def objects_layer(self, image: Any) -> Any:
        """The "3D objects" Labels layer on ``image``'s grid (created or re-gridded when needed)."""
        return objects_layer(self.viewer, image, OBJECTS_LAYER)

    def _show_live(self) -> None:
        """Redraw the slices of the object a job decided since the last look (only those: no volume copy on the
        UI thread)."""
        taken, image = self._live.take_changes(), self.image_layer
        if taken is None or image is None or not self.busy:
            return
        obj_id, changes = taken
        layer = self.objects_layer(image)  # its data is the dock's own copy of the last snapshot
        for (axis, index), plane in changes.items():
            view = np.moveaxis(layer.data, axis, 0)[index]
            view[view == obj_id] = 0
            view[plane] = obj_id
        layer.refresh()

    def _labels(self, shape: tuple[int, ...]) -> np.ndarray:
        """The label map of the last finished job (zeros before one, or for another grid)."""
        if self._snapshot is not None and self._snapshot.labels.shape == tuple(shape):
            return self._snapshot.labels
        return np.zeros(shape, np.uint16)

    def _show(self, snapshot: ObjectsSnapshot, asked: int | None = None) -> None:
        """Show a job's snapshot; ``asked``: the object id the job was given (the next interactions go to the
        object it became, unless the user chose another meanwhile)."""
        image = self.image_layer
        self._snapshot = snapshot
        if snapshot.weights_hash is not None:
            self._model_run = snapshot
        self._live.take_changes()  # drawn in full below
        self._notes(snapshot.notes)
        if asked is not None and self._active == asked:
            self._active = snapshot.changed if snapshot.summary(snapshot.changed) is not None else None
        self.objects_table.show_snapshot(snapshot, self._active)
        if image is not None and snapshot.labels.shape == image.data.shape:
            layer = self.objects_layer(image)
            layer.data = snapshot.labels.astype(np.uint16)
            layer.features = class_features({o.id: o.name for o in snapshot.objects})
        elif image is not None and not snapshot.objects and self._layer(OBJECTS_LAYER) is not None:
            self._layer(OBJECTS_LAYER).data = np.zeros(image.data.shape, np.uint16)
        text = snapshot.message or "Draw a box around an object, or click on it."
        if snapshot.weights_hash is not None and snapshot.summary(snapshot.changed) is not None:
            text += " Click, scribble or lasso to correct it; Undo takes it back."
        self.status.setText(text)

    def _notes(self, notes: list[str]) -> None:
        for note in notes:
            show_warning(note)

    def cancel(self, *_: Any) -> None:
        """Cancel every job of the dock; the objects are shown as they are once the jobs have ended."""
        self._resync = True
        super().cancel()

    def job_finished(self) -> None:
        """Once no job is left: stop redrawing, and show the objects as the last finished job left them (a
        cancelled or failed interaction changed nothing)."""
        if self.busy:
            return
        self._live_timer.stop()
        self._live.take_changes()
        if self._resync and self._image_key is not None:  # a Cancel may have come as a job finished
            self._resync = False
            self.run_job(self.editor.listing, self._image_key, description="3D objects: list", on_result=self._show)
            return
        image, layer = self.image_layer, self._layer(OBJECTS_LAYER)
        if image is not None and layer is not None and layer.data.shape == image.data.shape:
            labels = self._labels(layer.data.shape)
            if not np.array_equal(layer.data, labels):
                layer.data = labels.astype(np.uint16)

    def commit(self, *_: Any) -> int:
        """Copy the selected object into the target Labels layer with the chosen label id (undoable)."""
        image, obj_id = self.image_layer, self.objects_table.selected or self._active
        if image is None or self._snapshot is None or obj_id is None or self._snapshot.labels.shape != image.data.shape:
            self.report(MedAdaptError("Nothing to copy: segment an object and select it in the list."))
            return 0
        mask = self._snapshot.labels == obj_id
        try:
            target, changed = self.commit_panel.commit(self.viewer, image, mask)
        except MedAdaptError as err:
            self.report(err)
            return 0
        run = self._model_run
        record_commit(target, image, mask, self.commit_panel.label_spin.value(), run.model if run else None,
                      run.weights_hash if run else None, run.device if run else None)
        text = (f"Copied {self._name_of(obj_id)} ({changed} voxels) as label {self.commit_panel.label_spin.value()} "
                f"into {target.name!r} (Ctrl+Z on that layer undoes it).")
        self.status.setText(text)
        show_info(text)
        return changed
