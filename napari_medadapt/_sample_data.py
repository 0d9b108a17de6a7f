"""napari sample data: the real multi-modal glioma case TCGA-FG-6692 shipped with the package.

See ``napari_medadapt/sample_data/ATTRIBUTION.md`` for its origin and the required citations (CC BY 3.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Case name of the bundled sample.
SAMPLE_CASE = "glioma_tcga_fg6692"


def sample_case_dir() -> Path:
    """Folder of the bundled sample case (t1, t1c, t2, flair and reference labels seg_fusion)."""
    return Path(__file__).resolve().parent / "sample_data"


def glioma_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Layers of the sample case: four MRI contrasts and the reference labels ``seg_fusion``.

    The reference uses the BraTS label ids, named as the bundled brain-tumour model names them (hovering a
    voxel shows its class).
    """
    from napari_medadapt._reader import class_features, read_case_layers
    from napari_medadapt.core.models import DEFAULT_MODEL, ModelCard, find_card

    card = ModelCard.load(find_card(DEFAULT_MODEL))
    layers = read_case_layers(sample_case_dir())
    for _data, kwargs, kind in layers:
        if kind == "labels" and "features" not in kwargs:
            kwargs["features"] = class_features(dict(zip(card.labels, card.class_names, strict=True)))
    return layers
