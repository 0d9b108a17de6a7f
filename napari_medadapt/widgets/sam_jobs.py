"""The Segment Anything dock's long jobs: precomputing a plane's embeddings and propagating the object through the
volume (progress, Cancel, a precomputation that resumes after a click). A mixin of
:class:`~napari_medadapt.widgets.sam.SamWidget`, which owns the state these methods use."""

from __future__ import annotations

from typing import Any

from napari_medadapt._worker import get_worker
from napari_medadapt.core.errors import MedAdaptError
from napari_medadapt.widgets import sam_prompts as sp
from napari_medadapt.widgets._keypoints import current_plane


class SamLongJobs:
    """Precompute, propagate and cancel for the Segment Anything dock."""

    def precompute(self, *_: Any) -> Any:
        """Embed every slice of the displayed plane (progress, Cancel; already cached slices are skipped)."""
        try:
            image, data = self._checked_image()
            plane = current_plane(self.viewer, image)
        except MedAdaptError as err:
            self.report(err)
            return None
        choice = self._chosen_model()
        if choice is None:
            return None
        if self._long_handle is not None and not self._long_handle.done:
            self.status.setText("Another precomputation or propagation is running; wait for it or Cancel it.")
            return None
        if self._predict_handle is not None and not self._predict_handle.done:
            self._precompute_pending = True
            self.status.setText("Precomputation starts after the slice being segmented.")
            return None
        self._precompute_pending = False
        self.prefetch.pause()
        self.status.setText(f"Embedding {data.shape[plane.axis]} slices...")
        # same key as clicks: a click interrupts it (no message), and it resumes afterwards
        handle = get_worker(self.viewer, self).submit(
            self.workspace.precompute, choice, data, self._window_spec(image), plane.axis,
            description="Segment Anything: precompute", interactive_key="sam",
            on_result=self.results.show_precompute, on_error=self._job_failed,
        )
        return self._track_long(handle, resume_when_superseded=True)

    def propagate(self, *_: Any) -> Any:
        """Propagate the object from its annotated slice(s) through the volume into the preview."""
        choice = self.model_choice
        try:
            image, plane, prompts, data = self._prompts()
        except MedAdaptError as err:
            self.report(err)
            return None
        seeds = self.results.seeds(self._layer(sp.PREVIEW_LAYER), plane.axis, prompts)
        if choice is None or not seeds:
            self.report(MedAdaptError("Segment the object on at least one slice of this plane, then propagate."))
            return None
        stops = sorted(i for i, p in prompts.items() if p.negative_only)
        generation = self._generation
        self.prefetch.pause()
        self.status.setText(f"Propagating from slice(s) {', '.join(map(str, sorted(seeds)))}...")
        handle = get_worker(self.viewer, self).submit(
            self.workspace.propagate, choice, data, self._window_spec(image), plane.axis, seeds, stop_slices=stops,
            **self.propagation_panel.options(seeds, data.shape[plane.axis]),
            description="Segment Anything: propagation",
            on_result=lambda output: self._show_propagation(output, image, plane.axis, generation),
            on_error=self._job_failed,
        )
        return self._track_long(handle)

    def _track_long(self, handle: Any, resume_when_superseded: bool = False) -> Any:
        self._long_handle = handle
        self.job_panel.track(handle)

        def finished() -> None:
            if resume_when_superseded and handle.superseded:
                self._precompute_pending = True
            if self._long_handle is handle:
                if handle.state.value == "cancelled":
                    self.status.setText("Cancelled; the preview and labels are unchanged.")

        handle.finished.connect(finished)
        return handle

    def cancel(self, *_: Any) -> None:
        """Cancel the running precomputation or propagation."""
        self._precompute_pending = False
        if self._long_handle is not None:
            self._long_handle.cancel()

    def _show_propagation(self, output: Any, image: Any, axis: int, generation: int) -> None:
        if not self._is_current(image, generation):
            return
        self._took(output)
        self.results.show_propagation(self.preview_layer(image), output.value, axis)
