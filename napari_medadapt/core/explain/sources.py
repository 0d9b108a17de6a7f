"""The full training slice a prototype was projected onto, rebuilt from its recorded source.

A source is a phantom (rebuilt exactly from its seed), or a case folder (read again from its recorded path, or
by its name from the data folder: ``MEDADAPT_DATA_DIR`` or ``../shared/data/real`` beside a checkout). When the
case is gone the stored patch is all there is: :class:`SourceUnavailable` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedAdaptError


class SourceUnavailable(MedAdaptError):
    """The training case of a prototype is not on this machine (its stored patch still is)."""


def _case_folder(source: dict[str, Any]) -> Path | None:
    from ..paths import data_dir

    candidates = [Path(source["path"])] if source.get("path") else []
    try:
        candidates.append(data_dir() / source["case"])
    except MedAdaptError:
        pass
    return next((c for c in candidates if c.is_dir()), None)


def _phantom_plane(source: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's training plane, rebuilt from its seed (the phantom anatomy comes with nilearn, a dependency)."""
    try:
        from ..synth.training_data import phantom_planes

        images, labels = phantom_planes(int(source["phantom_seed"]), int(source.get("slices_per_phantom", 8)))
    except ModuleNotFoundError as err:  # an install without its dependencies (pip --no-deps): say what is missing
        if err.name is None or err.name.partition(".")[0] != "nilearn":
            raise
        raise SourceUnavailable(
            f"the synthetic training slice of this prototype ({source['case']}) is rebuilt from the MNI152 anatomy "
            "shipped with nilearn, which is not installed; only its stored patch can be shown. Install it with: "
            "pip install nilearn"
        ) from err
    return images[int(source["plane"])].astype(np.float32), labels[int(source["plane"])]


def source_plane(source: dict[str, Any], modalities: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised source plane ``(C, Y, X)`` (channels in ``modalities`` order, zeros for one the case lacks)
    and its reference labels ``(Y, X)``.

    Raises
    ------
    SourceUnavailable
        The case folder is missing (the message names it and says the stored patch is shown instead).
    """
    if "phantom_seed" in source:
        return _phantom_plane(source)
    folder = _case_folder(source)
    if folder is None:
        raise SourceUnavailable(
            f"the training case {source['case']!r} of this prototype is not on this machine (looked for "
            f"{source.get('path') or source['case']}); only its stored patch can be shown. Set MEDADAPT_DATA_DIR "
            "to the folder holding the case to see the full slice."
        )
    from ..cases import load_case
    from ..synth.training_data import normalize_channels

    volume, label_maps = load_case(folder)
    plane = int(source["plane"])
    shape = volume.geometry.display_shape
    stack = np.stack([volume.channel(m) if m in volume.channels else np.zeros(shape, np.float32) for m in modalities])
    name = source.get("label_map")
    labels = label_maps.get(name) if name else next(iter(label_maps.values()), None)
    plane_labels = np.zeros(shape[1:], np.uint8) if labels is None else np.asarray(labels[plane], dtype=np.uint8)
    # percentiles over the whole volume, as the training planes (and so the stored patches) were normalised
    return normalize_channels(stack)[:, plane], plane_labels
