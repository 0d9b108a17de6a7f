"""Prototype explanations (METHODS section 3): prototype banks projected onto real training patches, case-based
explanations of a voxel or region, similarity heatmaps, forgetting prototypes, and Captum baselines."""

from .bank import (
    PrototypeBank,
    bank_path_for,
    cache_bank_path,
    check_bank_model,
    find_bank,
    load_bank,
    save_bank,
)
from .explain import Explainer, Explanation, PrototypeMatch
from .projection import TrainingSlices, case_slices, head_bank, kmeans_bank, project, with_prototypes
from .sources import SourceUnavailable, source_plane

__all__ = [
    "Explainer", "Explanation", "PrototypeBank", "PrototypeMatch", "SourceUnavailable", "TrainingSlices",
    "bank_path_for", "cache_bank_path", "case_slices", "check_bank_model", "find_bank", "head_bank", "kmeans_bank", "load_bank",
    "project", "save_bank", "source_plane", "with_prototypes",
]  # fmt: skip
