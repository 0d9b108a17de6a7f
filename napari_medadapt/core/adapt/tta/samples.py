"""Which parts of a volume feed the BN-KL statistics, and turning them into network inputs.

A 2D model sees the volume as slices along axis 0 (``Z``); a 3D model as slabs of consecutive slices.
Only slices inside the body/brain count: a slice is *foreground* when some voxel of some channel differs
from that channel's minimum over the volume (background of skull-stripped MRI is 0, of CT air).

Subsample policy (``slices`` argument of :func:`~napari_medadapt.core.adapt.tta.methods.adapt` and
:func:`~napari_medadapt.core.adapt.tta.score.shift_score`):

- ``None``: the default, ``DEFAULT_SLICES`` foreground slices spread evenly through the foreground slab
  (the middle slice of each of ``DEFAULT_SLICES`` equal strata). The same slices are used at every
  iteration, so losses of different iterations are comparable and "keep the minimal-loss iteration" is
  well defined. The relative error of this loss against full-volume statistics is measured by
  ``medadapt bench tta`` (docs/benchmarks/tta.md).
- ``"all"``: every foreground slice (exact volume statistics; slower).
- an int ``N``: ``N`` evenly spread foreground slices as above.
- a sequence of ints: exactly these slice indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import VolumeError

if TYPE_CHECKING:
    import torch

    from ...models import SegModel
    from ...volume import Volume

#: Default number of evenly spread foreground slices per volume (see the module docstring).
DEFAULT_SLICES = 8

#: Slices per slab when a 3D model is fed a volume slab-wise.
SLAB_DEPTH = 32

SlicePolicy = None | str | int | Sequence[int]


def foreground_slices(data: np.ndarray) -> np.ndarray:
    """Indices along axis 0 of ``data`` (C, Z, Y, X) holding any foreground voxel (see module docstring)."""
    minimum = data.reshape(data.shape[0], -1).min(axis=1).reshape(-1, 1, 1, 1)
    foreground = np.any(data > minimum, axis=0)
    return np.flatnonzero(foreground.any(axis=(1, 2)))


def select_slices(volume_data: np.ndarray, slices: SlicePolicy = None) -> np.ndarray:
    """Slice indices (sorted, unique) that the policy ``slices`` picks from ``volume_data`` (C, Z, Y, X).

    Raises
    ------
    VolumeError
        When the volume has no foreground voxel, or explicit indices fall outside it.
    """
    depth = volume_data.shape[1]
    if slices is not None and not isinstance(slices, str | int) and not isinstance(slices, np.integer):
        chosen = np.unique(np.asarray(list(slices), dtype=int))
        if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= depth:
            raise VolumeError(f"slice indices must lie in 0..{depth - 1}; got {list(slices)}.")
        return chosen
    candidates = foreground_slices(volume_data)
    if candidates.size == 0:
        raise VolumeError(
            "the volume has no foreground: every voxel of every channel has the same value. Check that "
            "the right image layer/file is selected and that it is not empty."
        )
    if isinstance(slices, str):
        if slices != "all":
            raise ValueError(f"unknown slice policy {slices!r}; use None, 'all', a number or indices")
        return candidates
    count = DEFAULT_SLICES if slices is None else int(slices)
    if count < 1:
        raise ValueError(f"the number of slices must be at least 1, got {count}")
    if count >= candidates.size:
        return candidates
    positions = ((np.arange(count) + 0.5) * candidates.size / count).astype(int)
    return candidates[positions]


def network_inputs(
    model: SegModel, volume: Volume, slices: SlicePolicy = None
) -> tuple[np.ndarray, torch.Tensor]:
    """The slices chosen by ``slices`` and their normalised network inputs, on the model's device.

    The volume is prepared exactly as :func:`napari_medadapt.core.inference.predict_volume` feeds it
    (modality order, intensity normalisation, voxel size, and the same crop to the bounding box of the
    non-zero input plus margin, so the statistics are those of what the network sees when segmenting);
    slices are chosen on that prepared array.

    Returns
    -------
    indices, inputs
        Slice indices along axis 0 of the prepared array, and ``(N, C, Y, X)`` inputs (2D models, one sample
        per slice) or ``(N, C, D, Y, X)`` (3D models: one slab of up to ``SLAB_DEPTH`` consecutive slices per
        group of chosen slices; slabs do not overlap).
    """
    import torch

    from ...inference import input_box
    from ...model_input import prepare_input

    prepared = prepare_input(model, volume)
    indices = select_slices(prepared, slices)
    box = input_box(prepared, model.spatial_dims, model.size_divisor) if model.card.labels[0] == 0 else None
    if box is not None:  # as predict_volume: y, x (and z for 3D models) cropped to the non-zero input
        z_box = slice(None) if model.spatial_dims == 2 else box[0]
        prepared = prepared[:, z_box, box[1], box[2]]
        indices_in_box = indices - (0 if model.spatial_dims == 2 else box[0].start)
    else:
        indices_in_box = indices
    if model.spatial_dims == 2:
        samples = np.ascontiguousarray(np.moveaxis(prepared[:, indices_in_box], 1, 0))
    else:
        depth = prepared.shape[1]
        slab = min(SLAB_DEPTH, depth)
        inside = [int(i) for i in indices_in_box if 0 <= i < depth]
        starts = sorted({min(i // SLAB_DEPTH * SLAB_DEPTH, depth - slab) for i in inside})
        samples = np.stack([prepared[:, start : start + slab] for start in starts])
    return indices, torch.from_numpy(samples).to(model.device)
