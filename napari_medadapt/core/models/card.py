"""Model cards: the JSON document that travels beside a weight file.

A card says what a network is (its architecture config, so it can be rebuilt), what it expects (modalities,
the subsets of them it supports, intensity normalisation, voxel size), what it outputs (network class ->
label id, names), where it came from (training data, evaluation figures) and which exact weights belong to it
(sha256). It is plain JSON so a user can read it; no code is ever executed or unpickled to load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..files import write_text_atomic
from .card_schema import plain, validate_card

CARD_FORMAT_VERSION = 1

#: Default intensity normalisation: per-channel percentile scaling over the non-zero voxels.
DEFAULT_INTENSITY: dict[str, Any] = {
    "method": "percentile",
    "lower": 0.5,
    "upper": 99.5,
    "nonzero": True,
    "clip": True,
}


#: Post-processing steps a card may switch on (see :attr:`ModelCard.postprocess`).
POSTPROCESS_STEPS: tuple[str, ...] = ("largest_component",)


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and trust a segmentation model.

    Attributes
    ----------
    name
        Short identifier (the bundled model ``glioma2d`` is loaded by this name).
    architecture
        Config understood by :func:`napari_medadapt.core.models.build_model` (see ``network.py``).
    modalities
        Input channel names in network order, e.g. ``["t1", "t1c", "t2", "flair"]`` (lower case).
    supported_subsets
        Subsets of ``modalities`` the model was trained/validated to work with; missing channels are
        filled with zeros after normalisation. Empty means every modality is required.
    intensity
        Intensity normalisation spec applied per channel before the network (see ``core/inference.py``).
    voxel_size
        ``(z, y, x)`` spacing in mm the model was trained at; an entry may be ``None`` (no resampling
        along that axis, e.g. the slice axis of a 2D model); ``None`` disables resampling altogether.
    labels
        Network class index -> label id written to the output, e.g. ``[0, 1, 2, 4]``.
    class_names
        Human-readable name of each network class, parallel to ``labels``.
    description, training_data, evaluation, license
        Free documentation: what data it was trained on, measured figures, terms of use.
    weights_sha256
        Hex sha256 of the weight file; checked on load when set.
    weights_file
        File name of the weights relative to the card (default: card stem + ``.safetensors``).
    regions
        Named groups of label ids whose total volume the docks report beside the classes, e.g.
        ``{"whole tumour (WT)": [1, 2, 4]}``.
    postprocess
        Label post-processing applied by :func:`napari_medadapt.core.inference.predict_volume` unless the
        caller overrides it: ``{"largest_component": true}`` keeps only the largest 3D connected component
        of the foreground (all non-zero labels together, face connectivity), for models of a single lesion.
    skull_stripped
        The model was trained on brain-only (skull-stripped) MRI: inputs that are not skull-stripped are
        reported before it runs (:mod:`napari_medadapt.core.preprocess` prepares raw scans).
    shift_score
        Optional distribution of the test-time-adaptation shift score on the training/validation data
        (e.g. ``{"mean": ..., "std": ..., "quantiles": {...}}``).
    tags
        Labels for lists: ``"demonstration"`` keeps a model (e.g. the deliberately biased ``tts_trap``) out of
        the ordinary model lists (the Segment and TTA docks); docks that demonstrate it list it.
    kind
        ``"segmentation"`` (the card schema's other kinds have their own card types).
    path
        Where the card was read from (set by :meth:`load`; not written to JSON).
    """

    name: str
    architecture: dict[str, Any]
    modalities: list[str]
    labels: list[int]
    class_names: list[str] = field(default_factory=list)
    supported_subsets: list[list[str]] = field(default_factory=list)
    intensity: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_INTENSITY))
    voxel_size: list[float | None] | None = None
    description: str = ""
    training_data: dict[str, Any] | str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    weights_sha256: str | None = None
    weights_file: str | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, list[int]] = field(default_factory=dict)
    skull_stripped: bool = False
    shift_score: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    kind: str = "segmentation"
    format_version: int = CARD_FORMAT_VERSION
    path: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "path":
                setattr(self, f.name, plain(getattr(self, f.name)))
        validate_card(self.to_dict(), self._where)  # types first: "flair" is not a list
        self.modalities = [str(m).lower() for m in self.modalities]
        self.labels = [int(v) for v in self.labels]
        self.supported_subsets = [[str(m).lower() for m in subset] for subset in self.supported_subsets]
        if not self.class_names:
            self.class_names = ["background" if v == 0 else f"label {v}" for v in self.labels]
        self._check_consistency()

    # ------------------------------------------------------------------ validation
    @property
    def _where(self) -> str:
        return f"model card {self.path}" if self.path else f"model card {self.name!r}"

    def validate(self) -> None:
        """Raise :class:`ModelError` when a field has the wrong type (:mod:`.card_schema`) or the card is
        inconsistent (e.g. after editing a field)."""
        validate_card(plain(self.to_dict()), self._where)
        self._check_consistency()

    def _check_consistency(self) -> None:
        where = self._where
        if not self.modalities:
            raise ModelError(f"{where} lists no input modalities; add a 'modalities' list to the card.")
        if len(set(self.modalities)) != len(self.modalities):
            raise ModelError(f"{where} lists a modality twice: {self.modalities}.")
        if not self.labels:
            raise ModelError(f"{where} has an empty 'labels' list (network class -> label id).")
        if len(self.class_names) != len(self.labels):
            raise ModelError(
                f"{where}: 'class_names' has {len(self.class_names)} entries but 'labels' has "
                f"{len(self.labels)}; give one name per class."
            )
        if any(not 0 <= v <= 255 for v in self.labels):
            raise ModelError(f"{where}: label ids must lie in 0..255, got {self.labels}.")
        for subset in self.supported_subsets:
            unknown = sorted(set(subset) - set(self.modalities))
            if unknown:
                raise ModelError(
                    f"{where}: supported_subsets: {subset} names {unknown}, which are not model modalities "
                    f"{self.modalities}."
                )
        arch = self.architecture
        if not isinstance(arch, Mapping):
            raise ModelError(f"{where}: 'architecture' must be a JSON object.")
        n_in = arch.get("in_channels", len(self.modalities))
        n_out = arch.get("out_channels", len(self.labels))
        if int(n_in) != len(self.modalities):
            raise ModelError(
                f"{where}: the network takes {n_in} input channels but the card lists "
                f"{len(self.modalities)} modalities."
            )
        if int(n_out) != len(self.labels):
            raise ModelError(
                f"{where}: the network outputs {n_out} classes but the card maps {len(self.labels)} labels."
            )
        unknown_steps = sorted(set(self.postprocess) - set(POSTPROCESS_STEPS))
        if unknown_steps:
            raise ModelError(
                f"{where}: unknown 'postprocess' step(s) {unknown_steps}; known: {list(POSTPROCESS_STEPS)}."
            )
        if self.voxel_size is not None and len(self.voxel_size) != 3:
            raise ModelError(f"{where}: 'voxel_size' must be [z, y, x] in mm (entries may be null).")
        for region, ids in self.regions.items():
            unknown = sorted(set(ids) - set(self.labels))
            if unknown:
                raise ModelError(f"{where}: regions: {region!r} names label ids {unknown} the model does not output.")

    # ------------------------------------------------------------------ modalities
    def missing_for(self, available: Iterable[str]) -> list[str]:
        """Modalities that must still be provided for ``available`` to be usable (empty when usable).

        With supported subsets, the answer is the smallest set of missing modalities over all subsets
        (ties: the first subset listed).
        """
        have = {str(m).lower() for m in available}
        subsets = self.supported_subsets or [self.modalities]
        best: list[str] | None = None
        for subset in subsets:
            missing = [m for m in subset if m not in have]
            if best is None or len(missing) < len(best):
                best = missing
        return best or []

    def check_modalities(self, available: Iterable[str]) -> None:
        """Raise :class:`ModelError` naming what is missing, e.g. ``this model needs FLAIR; got t1, t2``."""
        available = [str(m).lower() for m in available]
        missing = self.missing_for(available)
        if missing:
            needs = ", ".join(m.upper() for m in missing)
            got = ", ".join(available) if available else "nothing"
            raise ModelError(
                f"model {self.name!r} needs {needs}; got {got}. Load the missing image(s) "
                f"and assign them to the model's inputs."
            )

    @property
    def optional_modalities(self) -> list[str]:
        """Modalities that some supported subset can do without."""
        if not self.supported_subsets:
            return []
        required = set.intersection(*(set(s) for s in self.supported_subsets))
        return [m for m in self.modalities if m not in required]

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (without :attr:`path`)."""
        data = asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card", path: str | None = None) -> ModelCard:
        """Build a card from a parsed JSON object, checked field by field (:mod:`.card_schema`); unknown
        top-level keys are ignored. ``path`` is where the card was read from (named in messages)."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source} must be a JSON object ({{...}}), not {type(data).__name__}.")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > CARD_FORMAT_VERSION:
            raise ModelError(
                f"{source} uses card format {version}, newer than this napari-medadapt understands "
                f"({CARD_FORMAT_VERSION}); update napari-medadapt."
            )
        validate_card(dict(data), source)
        known = {f.name for f in fields(cls)} - {"path"}
        return cls(**{k: v for k, v in data.items() if k in known}, path=path)

    def save(self, path: str | Path) -> Path:
        """Check the card (a card that could not be read back is never written), then write it as indented
        JSON atomically; returns the path."""
        self.validate()
        path = write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n", what="Model card")
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card from a JSON file (:class:`ModelError` on a missing or malformed file)."""
        path = Path(path)
        if path.is_dir():
            raise ModelError(f"model card {path} is a folder; give the card's .json file.")
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError as err:
            raise ModelError(f"model card {path} does not exist.") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"model card {path} is not valid JSON ({err}); restore it from its source.") from err
        except RecursionError as err:
            raise ModelError(f"model card {path} is nested too deeply to be a model card.") from err
        return cls.from_dict(data, source=f"model card {path}", path=str(path))


def default_card(architecture: Mapping[str, Any], modalities: Sequence[str] | None = None) -> ModelCard:
    """A minimal card for a freshly built network (channel names ``ch0..``, labels ``0..K-1``)."""
    n_in = int(architecture["in_channels"])
    n_out = int(architecture["out_channels"])
    return ModelCard(
        name="untitled",
        architecture=dict(architecture),
        modalities=list(modalities) if modalities is not None else [f"ch{i}" for i in range(n_in)],
        labels=list(range(n_out)),
    )
