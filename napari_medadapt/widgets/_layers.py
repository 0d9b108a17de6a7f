"""Helpers between napari layers and core volumes, shared by the docks.

Layers opened by the reader carry ``layer.metadata["medadapt"] = {"geometry": Geometry, "modality": str,
"source_path": str}``; these helpers read it back, assemble a :class:`~napari_medadapt.core.volume.Volume`
from image layers, and paste label results back so that napari's undo can revert them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medadapt._reader import LABELS_MODALITY, class_features, medadapt_metadata

__all__ = [
    "REPLACE_PREFIX", "check_volume_layer", "class_features", "class_names_of", "grid_of", "image_layers_by_modality",
    "is_result_layer", "keep_on_top", "labels_layer_kwargs", "layer_geometry", "layer_modality", "mark_result",
    "place_result", "prompt_metadata", "same_layer", "set_labels_undoable", "target_choices", "target_layer_name",
    "volume_from_layers",
]  # fmt: skip
from napari_medadapt.core.errors import VolumeError
from napari_medadapt.core.volume import Geometry, Volume, canonical_modality


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same napari layer.

    Docks opened from napari's Plugins menu get a proxy viewer whose ``viewer.layers[name]`` returns a new
    wrapper at every access, so layers are compared by their ``unique_id``, never by identity.
    """
    return a is not None and b is not None and a.unique_id == b.unique_id


def _medadapt(layer: Any) -> dict[str, Any]:
    return (getattr(layer, "metadata", None) or {}).get("medadapt") or {}


def layer_geometry(layer: Any) -> Geometry | None:
    """The source geometry a layer carries in its metadata, or ``None``."""
    geometry = _medadapt(layer).get("geometry")
    return geometry if isinstance(geometry, Geometry) else None


#: ``metadata["medadapt"]["role"]`` of the layers a dock computed (labels, probability or confidence maps,
#: heatmaps): never offered as a model input, whatever their name.
RESULT_ROLE = "result"
#: Target lists name a layer that is not a result of ours with this prefix: writing into it is an explicit choice.
REPLACE_PREFIX = "replace: "


def is_result_layer(layer: Any) -> bool:
    """Whether a dock computed ``layer`` (see :func:`mark_result`)."""
    return _medadapt(layer).get("role") == RESULT_ROLE


def mark_result(kwargs: dict[str, Any], dock: str, model: str, part: str) -> dict[str, Any]:
    """Mark the ``add_labels``/``add_image`` keyword arguments of a result layer (returns ``kwargs``).

    ``dock``, ``model`` and ``part`` (e.g. ``"labels"``, ``"probability"``) say which earlier result a new one
    replaces (:func:`place_result`); the role keeps the layer out of every model-input list.
    """
    metadata = dict(kwargs.get("metadata") or {})
    metadata["medadapt"] = {**(metadata.get("medadapt") or {}), "role": RESULT_ROLE, "dock": dock,
                            "model": model, "part": part}  # fmt: skip
    kwargs["metadata"] = metadata
    return kwargs


def _result_key(layer: Any) -> tuple[Any, Any, Any] | None:
    entry = _medadapt(layer)
    return (entry.get("dock"), entry.get("model"), entry.get("part")) if entry.get("role") == RESULT_ROLE else None


def grid_of(layer: Any) -> dict[str, Any]:
    """``scale``, ``translate`` and ``affine`` that put a new layer exactly on ``layer``'s voxels (a raw sequence
    opened on another grid is placed by an affine)."""
    return {"scale": tuple(layer.scale)[-3:], "translate": tuple(layer.translate)[-3:],
            "affine": np.asarray(layer.affine.affine_matrix)[-4:, -4:]}  # fmt: skip


def _same_origin(previous: Any, metadata: dict[str, Any]) -> bool:
    """Whether a new result comes from the same grid and input files as ``previous`` (else it is another case's)."""
    old, new = _medadapt(previous), metadata.get("medadapt") or {}
    grids = old.get("geometry"), new.get("geometry")
    if all(isinstance(g, Geometry) for g in grids) and not grids[0].matches(grids[1]):
        return False
    inputs = [((entry.get("provenance") or {}).get("inputs")) for entry in (old, new)]
    return inputs[0] == inputs[1]


def place_result(viewer: Any, kind: str, data: np.ndarray, kwargs: dict[str, Any], keep_previous: bool = False,
                 like: Any = None) -> Any:
    """Show a result marked by :func:`mark_result`: it replaces the previous result of the same dock, model and
    part (labels as one undoable step, Ctrl+Z brings the previous result back), or is added as a new layer when
    there is none, when the grid changed, or when ``keep_previous`` (the user asked to keep earlier results).

    Parameters
    ----------
    viewer
        The viewer.
    kind
        ``"labels"`` or ``"image"``.
    data
        The result array.
    kwargs
        Keyword arguments of ``viewer.add_labels`` / ``viewer.add_image`` (marked with :func:`mark_result`).
    keep_previous
        Add a new layer even when an earlier result exists.
    like
        The input layer the result lies on: its affine is copied (a raw sequence placed in scanner space).

    Returns
    -------
    napari layer
        The layer that shows the result.
    """
    from napari.layers import Image, Labels

    layer_type = Labels if kind == "labels" else Image
    key = (kwargs["metadata"]["medadapt"]["dock"], kwargs["metadata"]["medadapt"]["model"],
           kwargs["metadata"]["medadapt"]["part"])  # fmt: skip
    previous = None if keep_previous else next(
        (layer for layer in reversed(list(viewer.layers)) if isinstance(layer, layer_type) and _result_key(layer) == key),
        None,
    )
    if like is not None:
        kwargs = {**kwargs, "affine": grid_of(like)["affine"]}
    data = np.asarray(data)
    if previous is not None and not _same_origin(previous, kwargs["metadata"]):
        previous = None  # another case's (or other inputs') result stays as it is
    if previous is not None and previous.data.shape == data.shape and tuple(previous.scale)[-3:] == tuple(
        kwargs.get("scale", previous.scale)
    )[-3:]:
        if kind == "labels":
            try:
                set_labels_undoable(previous, data)
            except VolumeError:
                previous = None
        else:
            previous.data = data
        if previous is not None:
            previous.metadata = {**previous.metadata, "medadapt": kwargs["metadata"]["medadapt"]}
            if "features" in kwargs:
                previous.features = kwargs["features"]
            if kwargs.get("name") and kwargs["name"] not in viewer.layers:
                previous.name = kwargs["name"]  # e.g. "after TTA (tent)" after "after TTA (bn_affine)"
            return previous
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, **kwargs)


def target_choices(viewer: Any, new_choice: str, shape: tuple[int, ...] | None = None) -> list[str]:
    """The entries of a dock's "write into" list: ``new_choice``, the Labels layers our docks made, then every
    other Labels layer as ``"replace: NAME"`` (a brain mask or a reference segmentation is written into only when
    the user picks it so; the change is undoable). ``shape`` keeps only layers of that shape."""
    from napari.layers import Labels

    ours, others = [], []
    for layer in viewer.layers:
        if not isinstance(layer, Labels) or (shape is not None and tuple(layer.data.shape) != tuple(shape)):
            continue
        if _medadapt(layer).get("part") == "preview":
            continue  # the Segment Anything preview is redrawn at every click: never a place to keep labels
        (ours if is_result_layer(layer) else others).append(layer.name)
    return [new_choice, *ours, *(f"{REPLACE_PREFIX}{name}" for name in others)]


def target_layer_name(choice: str) -> str:
    """The layer name of a :func:`target_choices` entry."""
    return choice[len(REPLACE_PREFIX):] if choice.startswith(REPLACE_PREFIX) else choice


def layer_modality(layer: Any) -> str | None:
    """Canonical modality of a layer: from its metadata, else recognised in its name (load_case aliases).
    A layer a dock computed (:func:`is_result_layer`) has none."""
    if is_result_layer(layer):
        return None
    modality = _medadapt(layer).get("modality")
    if modality and modality != LABELS_MODALITY:
        return canonical_modality(modality) or modality
    return canonical_modality(layer.name)


def image_layers_by_modality(viewer: Any) -> dict[str, Any]:
    """``{modality: Image layer}`` for the image layers of ``viewer`` whose modality is recognised.

    When two layers have the same modality, the one higher in the layer list (added later) wins.
    """
    from napari.layers import Image

    found: dict[str, Any] = {}
    for layer in viewer.layers:
        modality = layer_modality(layer) if isinstance(layer, Image) else None
        if modality is not None:
            found[modality] = layer
    return found


def check_volume_layer(name: str, layer: Any) -> np.ndarray:
    """The 3D array of an image layer fed to a model as ``name``; :class:`VolumeError` for multiscale, RGB,
    2D (a PNG or a screenshot) or 4D data."""
    if getattr(layer, "multiscale", False):
        raise VolumeError(f"Layer {layer.name!r} ({name}) is multiscale; open the volume as a single-scale image.")
    if getattr(layer, "rgb", False):
        raise VolumeError(f"Layer {layer.name!r} ({name}) is an RGB image; a grayscale 3D volume is needed.")
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise VolumeError(
            f"Layer {layer.name!r} ({name}) has {data.ndim}D data of shape {data.shape}; a 3D volume "
            "(Z, Y, X) is needed. Split 4D or channel data into one layer per modality."
        )
    return data


def volume_from_layers(layers: Mapping[str, Any], modalities: Sequence[str] | None = None) -> Volume:
    """Assemble a :class:`Volume` from ``{modality: image layer}``.

    Parameters
    ----------
    layers
        Image layers keyed by modality (aliases such as ``t1ce`` are recognised).
    modalities
        Channels to take, in this order; default: all given layers.

    Raises
    ------
    VolumeError
        When a modality is missing, a layer is not a 3D grayscale volume, or the layers do not share one
        display shape and geometry.
    """
    by_modality = {canonical_modality(key) or key: layer for key, layer in layers.items()}
    wanted = [canonical_modality(m) or m for m in (modalities if modalities is not None else by_modality)]
    missing = [m for m in wanted if m not in by_modality]
    if missing or not wanted:
        raise VolumeError(
            f"Image layers for {', '.join(missing) or 'at least one modality'} are needed "
            f"(available: {', '.join(by_modality) or 'none'}). Open them, or name the layers after their modality."
        )
    arrays = [check_volume_layer(m, by_modality[m]) for m in wanted]
    geometries = [layer_geometry(by_modality[m]) for m in wanted]
    reference = next((g for g in geometries if g is not None), None)
    if reference is None:
        first = by_modality[wanted[0]]
        reference = Geometry.from_display_grid(arrays[0].shape, tuple(first.scale)[-3:], tuple(first.translate)[-3:])
    if all(g is not None for g in geometries) and not all(g.matches(reference) for g in geometries):
        grids = "; ".join(f"{by_modality[m].name}: {g.summary()}" for m, g in zip(wanted, geometries, strict=True))
        raise VolumeError(
            f"The image layers are on different grids (scans as exported: {grids}). Prepare scans first: "
            "Plugins > MedAdapt > Prepare scans co-registers them onto one sequence; then segment the prepared layers."
        )
    for modality, array, geometry in zip(wanted, arrays, geometries, strict=True):
        if array.shape != reference.display_shape or (geometry is not None and not geometry.matches(reference)):
            described = geometry.describe() if geometry is not None else f"display shape {array.shape}"
            raise VolumeError(
                f"Layer {by_modality[modality].name!r} ({modality}: {described}) is not on the grid of the "
                f"other layers ({reference.describe()}). Use images of one case on one voxel grid."
            )
    paths = tuple(_medadapt(by_modality[m]).get("source_path", "") for m in wanted)
    return Volume(np.stack(arrays).astype(np.float32, copy=False), reference, tuple(wanted), paths)


def labels_layer_kwargs(
    geometry: Geometry, name: str = "labels", source_path: str = "", class_names: Mapping[int, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_labels`` that put labels on ``geometry`` (scale and metadata) and
    name their classes (hovering a voxel shows ``class: edema``; the writer stores the names in the file).
    ``provenance``: the arguments of :func:`~napari_medadapt.core.provenance.provenance_record` for the result
    (the writer completes the record, hashing the inputs, when the layer is saved)."""
    metadata = medadapt_metadata(geometry, LABELS_MODALITY, source_path)
    if provenance:
        metadata["medadapt"]["provenance"] = dict(provenance)
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": geometry.spacing,
        "metadata": metadata,
    }
    if class_names:
        kwargs["features"] = class_features(class_names)
    return kwargs


def class_names_of(card: Any) -> dict[int, str]:
    """``{label id: class name}`` of a model card (empty for ``None``)."""
    return {} if card is None else dict(zip(card.labels, card.class_names, strict=True))


def prompt_metadata(**entries: Any) -> dict[str, Any]:
    """``layer.metadata`` of a prompt or keypoint layer: :func:`keep_on_top` keeps such layers on top."""
    return {"medadapt": {"role": "prompts", **entries}}


def keep_on_top(viewer: Any) -> None:
    """Move the prompt and keypoint layers (:func:`prompt_metadata`) above every other layer, so result
    layers added later never hide the clicks; the active layer stays active."""
    layers = viewer.layers
    prompts = [layer.name for layer in layers if _medadapt(layer).get("role") == "prompts"]
    if not prompts or [layer.name for layer in layers][-len(prompts):] == prompts:
        return
    active = layers.selection.active
    for name in prompts:
        layers.move(layers.index(name), len(layers))
    if active is not None and active.name in layers:
        layers.selection.active = layers[active.name]


def set_labels_undoable(labels_layer: Any, new_data: np.ndarray) -> int:
    """Replace a Labels layer's data as one undoable step (Ctrl+Z in napari restores the old labels).

    Only the voxels that change are written, through the layer's ``data_setitem`` (which records them
    in the layer's undo history).

    Returns
    -------
    int
        Number of voxels changed.
    """
    current = labels_layer.data
    new = np.asarray(new_data)
    if new.shape != current.shape:
        raise VolumeError(
            f"New labels have shape {new.shape} but layer {labels_layer.name!r} has shape {current.shape}."
        )
    dtype = np.dtype(current.dtype)
    if new.size and (new.min() < np.iinfo(dtype).min or new.max() > np.iinfo(dtype).max):
        raise VolumeError(
            f"Label values {new.min()}..{new.max()} do not fit layer {labels_layer.name!r} ({dtype})."
        )
    changed = np.nonzero(np.asarray(current) != new)
    if changed[0].size == 0:
        return 0
    labels_layer.data_setitem(changed, new[changed].astype(dtype))
    return int(changed[0].size)


def provenance_draft(
    method: str, volume: Any, model: Mapping[str, Any] | None, settings: Mapping[str, Any], device: Any = None,
    adapter: Mapping[str, Any] | None = None, extra_inputs: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The arguments of :func:`~napari_medadapt.core.provenance.provenance_record` for a dock's result: the
    volume's channel files (none for an array made in napari), the model, settings and device."""
    inputs = dict(zip(volume.channels, volume.source_paths or [None] * len(volume.channels), strict=True))
    return {
        "method": method, "inputs": {**inputs, **(extra_inputs or {})}, "model": dict(model) if model else None,
        "adapter": dict(adapter) if adapter else None, "settings": dict(settings),
        "device": None if device is None else str(device),
    }
