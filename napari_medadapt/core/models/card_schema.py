"""The one card schema of every model artefact, checked whenever a card is read or built.

A card's ``kind`` says what it describes: ``"segmentation"`` (a MONAI DynUNet segmenter, the default),
``"promptable"`` (a Segment Anything-family model: bundled weights beside the card, or a checkpoint
downloaded on first use), ``"fewshot_adapter"`` (a head trained on a frozen model from a few labelled slices), ``"prototype_bank"``
(prototypes projected onto real training patches, for explanations). Every card has a ``name``, ``tags`` (``"demonstration"`` keeps a model out of the
ordinary model lists) and documentation fields.

A card is JSON written by people and by other tools, so every field is checked for its type and range
before anything is built from it, and a problem is reported as ``field: what is wrong (got ...)``. Types are
strict (``"2"`` is not the number 2, ``1`` is not ``true``); numbers may be written as integers where a
decimal is expected. Unknown top-level fields are ignored (documentation); unknown architecture fields are
refused, because a misspelt setting would otherwise silently fall back to a default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ModelError

PositiveInt = Annotated[int, Field(gt=0)]
PerAxis = PositiveInt | list[PositiveInt]
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not _SHA256.match(value):
        raise ValueError("must be the 64 hexadecimal digits of the file's sha256")
    return value


def _check_file_name(value: str | None) -> str | None:
    if value is not None and (not value.strip() or "/" in value or "\\" in value or value in (".", "..")):
        raise ValueError("must be a file name beside the card (or in the download folder), without folders")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class NormalizerSchema(_Strict):
    hidden: PositiveInt = 16
    residual: bool = True


class PrototypeSchema(_Strict):
    per_class: PositiveInt = 10
    dim: PositiveInt = 128
    scale: Annotated[float, Field(gt=0)] = 10.0
    forgotten: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)


class ArchitectureSchema(_Strict):
    """The ``architecture`` object (see ``network.py``)."""

    network: Literal["DynUNet"] = "DynUNet"
    spatial_dims: Literal[2, 3] = 2
    in_channels: PositiveInt
    out_channels: PositiveInt
    kernel_size: list[PerAxis] = Field(min_length=3)  # MONAI's DynUNet needs at least 3 levels
    strides: list[PerAxis] = Field(min_length=3)
    upsample_kernel_size: list[PerAxis] | None = None
    filters: list[PositiveInt] | None = None
    res_block: bool = True
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    norm_name: Literal["batch"] = "batch"
    normalizer: NormalizerSchema | None = None
    prototypes: PrototypeSchema | None = None
    roi_size: list[PositiveInt] | None = None

    @model_validator(mode="after")
    def _levels_agree(self) -> ArchitectureSchema:
        levels = len(self.strides)
        checks = [
            ("kernel_size", self.kernel_size, levels),
            ("upsample_kernel_size", self.upsample_kernel_size, levels - 1),
            ("filters", self.filters, levels),
        ]
        for name, values, expected in checks:
            if values is not None and len(values) != expected:
                raise ValueError(f"{name} needs {expected} entries (one per level, as strides), got {len(values)}")
        if self.spatial_dims == 3 and self.roi_size is not None and len(self.roi_size) != 3:
            raise ValueError(f"roi_size (the 3D sliding window) needs 3 entries (z, y, x), got {len(self.roi_size)}")
        for name in ("kernel_size", "strides", "upsample_kernel_size"):
            for entry in getattr(self, name) or []:
                if isinstance(entry, list) and len(entry) != self.spatial_dims:
                    raise ValueError(f"{name}: a per-axis entry {entry} needs {self.spatial_dims} values")
        return self


class IntensitySchema(BaseModel):
    """The ``intensity`` object; extra keys are documentation (e.g. ``missing_modality``)."""

    model_config = ConfigDict(strict=True, extra="allow")
    method: Literal["percentile", "zscore", "ct_window", "none"] = "percentile"
    lower: Annotated[float, Field(ge=0, le=100)] = 0.5
    upper: Annotated[float, Field(ge=0, le=100)] = 99.5
    nonzero: bool = True
    clip: bool = True
    window: str | Annotated[list[float], Field(min_length=2, max_length=2)] = "abdomen"

    @model_validator(mode="after")
    def _ordered(self) -> IntensitySchema:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


class PostprocessSchema(_Strict):
    largest_component: bool = False


class CardSchema(BaseModel):
    """A segmentation model's card."""

    model_config = ConfigDict(strict=True, extra="ignore")
    format_version: Annotated[int, Field(ge=1)] = 1
    kind: Literal["segmentation"] = "segmentation"
    tags: list[Annotated[str, Field(min_length=1)]] = []
    name: Annotated[str, Field(min_length=1, max_length=200)]
    architecture: ArchitectureSchema
    modalities: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    labels: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=1)]
    class_names: list[str] = []
    supported_subsets: list[list[str]] = []
    intensity: IntensitySchema = IntensitySchema()
    voxel_size: Annotated[list[Annotated[float, Field(gt=0)] | None], Field(min_length=3, max_length=3)] | None = None
    regions: dict[str, Annotated[list[Annotated[int, Field(ge=1, le=255)]], Field(min_length=1)]] = {}
    description: str = ""
    training_data: dict[str, Any] | str = ""
    evaluation: dict[str, Any] = {}
    license: str = ""
    weights_sha256: str | None = None
    weights_file: str | None = None
    postprocess: PostprocessSchema = PostprocessSchema()
    skull_stripped: bool = False
    shift_score: dict[str, Any] | None = None

    @field_validator("weights_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _check_sha256(value)

    @field_validator("weights_file")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return _check_file_name(value)


class DownloadSchema(_Strict):
    """Where a checkpoint that is not bundled comes from."""

    filename: Annotated[str, Field(min_length=1)]
    url: str | None = None
    sha256: str | None = None
    size_mb: Annotated[float, Field(ge=0)] = 0.0
    source: str = ""
    #: a file shipped inside an installed Python distribution (its pip name) at ``package_path`` below
    #: the distribution's root: found there, never downloaded or copied
    package: str | None = None
    package_path: str | None = None
    package_version: str | None = None

    @model_validator(mode="after")
    def _package_path(self) -> DownloadSchema:
        if (self.package is None) != (self.package_path is None):
            raise ValueError("give both package and package_path, or neither")
        if self.package_path is not None and (self.package_path.startswith("/") or ".." in self.package_path):
            raise ValueError("package_path must be a relative path inside the package, without '..'")
        return self

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _check_sha256(value)

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _check_file_name(value)


class PromptableArchitectureSchema(BaseModel):
    """``encoder``: ``small`` (the bundled CNN encoder, with its config), ``tiny_vit`` (LiteMedSAM's) or a SAM
    ViT size."""

    model_config = ConfigDict(strict=True, extra="allow")
    encoder: Literal["small", "tiny_vit", "vit_b", "vit_l", "vit_h"]


class PromptableCardSchema(BaseModel):
    """A promptable (Segment Anything-family) model's card."""

    model_config = ConfigDict(strict=True, extra="ignore")
    format_version: Annotated[int, Field(ge=1)] = 1
    kind: Literal["promptable"]
    tags: list[Annotated[str, Field(min_length=1)]] = []
    name: Annotated[str, Field(min_length=1, max_length=200)]
    title: str = ""
    architecture: PromptableArchitectureSchema
    preprocess: Literal["sam", "medsam", "litemedsam"] = "sam"
    #: the prompt the model was trained to start from: the dock offers it first
    first_prompt: Literal["click", "box"] = "click"
    dense_prompts: bool = False
    weights_file: str | None = None
    weights_sha256: str | None = None
    download: DownloadSchema | None = None
    #: prompt encoder + mask decoder beside the card, replacing the checkpoint's (a fine-tuned decoder)
    decoder_file: str | None = None
    decoder_sha256: str | None = None
    #: which prompts the card's decoder answers: ``all``, or ``clicks`` (prompts with a click or a previous mask,
    #: what a click decoder learns; a box alone keeps the checkpoint's own decoder)
    decoder_prompts: Literal["all", "clicks"] = "all"
    #: whether clicks alone (no box) give the model a mask; ``False``: the dock advises a box
    clicks_without_box: bool = True
    description: str = ""
    license: str = ""
    note: str = ""

    @field_validator("weights_sha256", "decoder_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _check_sha256(value)

    @field_validator("decoder_file")
    @classmethod
    def _decoder_name(cls, value: str | None) -> str | None:
        return _check_file_name(value)

    @field_validator("weights_file")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return _check_file_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> PromptableCardSchema:
        if (self.weights_file is None) == (self.download is None):
            raise ValueError("give either weights_file (weights beside the card) or download (a checkpoint)")
        if (self.decoder_file is None) != (self.decoder_sha256 is None):
            raise ValueError("give decoder_file together with its decoder_sha256")
        if self.decoder_file is not None and self.architecture.encoder != "tiny_vit":
            raise ValueError("decoder_file is read for tiny_vit (LiteMedSAM) models only")
        if self.decoder_prompts != "all" and self.decoder_file is None:
            raise ValueError("decoder_prompts needs a decoder_file")
        return self


class SupportPlaneSchema(_Strict):
    axis: Annotated[int, Field(ge=0, le=2)]
    index: Annotated[int, Field(ge=0)]
    classes: list[Annotated[int, Field(ge=1, le=255)]] = []


class _DerivedSchema(BaseModel):
    """What every artefact derived from a model shares: its base model's name and weights' sha256, its own
    weight file, and when and with what it was made."""

    model_config = ConfigDict(strict=True, extra="ignore")
    format_version: Annotated[int, Field(ge=1)] = 1
    name: Annotated[str, Field(min_length=1, max_length=200)]
    base_model: Annotated[str, Field(min_length=1)]
    base_sha256: str
    created: str = ""
    software: str = ""
    weights_file: str
    weights_sha256: str

    @field_validator("base_sha256", "weights_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _check_sha256(value)  # type: ignore[return-value]

    @field_validator("weights_file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _check_file_name(value)  # type: ignore[return-value]


class AdapterCardSchema(_DerivedSchema):
    """A few-shot adapter's card: what was trained on which frozen model, from which slices."""

    kind: Literal["fewshot_adapter"]
    backbone: Literal["segmentation", "promptable"] = "segmentation"
    tap: Annotated[str, Field(min_length=1)] = "decoder"
    method: Literal["adapter", "linear_probe", "ft_last", "full"]
    channels: PositiveInt
    spatial_dims: Literal[2, 3] = 2
    labels: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=2)]
    class_names: list[str] = []
    support: list[SupportPlaneSchema] = []
    settings: dict[str, Any] = {}
    metrics: dict[str, Any] = {}

    @model_validator(mode="after")
    def _background_first(self) -> AdapterCardSchema:
        if self.labels[0] != 0 or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must start with background (0) and list each id once")
        if self.class_names and len(self.class_names) != len(self.labels):
            raise ValueError("class_names must name every label")
        return self


class PlaneSourceSchema(BaseModel):
    """A training plane: its case (or phantom) and axial plane, and whatever rebuilds it."""

    model_config = ConfigDict(strict=True, extra="allow")
    case: Annotated[str, Field(min_length=1)]
    plane: Annotated[int, Field(ge=0)]


class PrototypeSourceSchema(PlaneSourceSchema):
    """Where a prototype was projected: a training plane and the position on it."""

    y: Annotated[int, Field(ge=0)]
    x: Annotated[int, Field(ge=0)]


class BankPrototypeSchema(_Strict):
    id: Annotated[int, Field(ge=0)]
    network_class: Annotated[int, Field(ge=0)]
    label: Annotated[int, Field(ge=0, le=255)]
    similarity: float
    source: PrototypeSourceSchema


class PrototypeBankSchema(_DerivedSchema):
    """A prototype bank's card: prototypes projected onto real training patches, with their sources."""

    kind: Literal["prototype_bank"]
    space: Literal["head", "decoder"]
    method: Literal["head-projection", "kmeans-projection"]
    dim: PositiveInt
    labels: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=2)]
    class_names: list[str] = []
    modalities: Annotated[list[str], Field(min_length=1)]
    patch_size: PositiveInt
    prototypes: Annotated[list[BankPrototypeSchema], Field(min_length=1)]
    projection: dict[str, Any] = {}
    training_cases: dict[str, Any] = {}
    planes: Annotated[list[PlaneSourceSchema], Field(min_length=1)]
    license: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> PrototypeBankSchema:
        if [p.id for p in self.prototypes] != list(range(len(self.prototypes))):
            raise ValueError("prototype ids must be 0, 1, 2, ... in order")
        if any(p.network_class >= len(self.labels) for p in self.prototypes):
            raise ValueError("a prototype's network_class must index labels")
        return self


#: card kind -> its schema
SCHEMAS: dict[str, type[BaseModel]] = {
    "segmentation": CardSchema,
    "promptable": PromptableCardSchema,
    "fewshot_adapter": AdapterCardSchema,
    "prototype_bank": PrototypeBankSchema,
}


def card_kind(data: Any) -> str:
    """The ``kind`` of a parsed card (``"segmentation"`` when absent)."""
    return str(data.get("kind", "segmentation")) if isinstance(data, dict) else "segmentation"


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "the card"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown setting (check its spelling)"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{field}: {message} (got {shown})" if "input" in error and error["type"] != "missing" else f"{field}: {message}"


def plain(value: Any) -> Any:
    """A card value as JSON would hold it: tuples become lists, numpy scalars Python numbers (cards built
    in Python, e.g. ``labels=tuple(np.unique(seg))``, are checked like cards read from JSON)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def validate_card(data: Any, source: str = "model card") -> None:
    """Check a parsed card (a JSON object) against :class:`CardSchema`.

    Raises
    ------
    ModelError
        Naming every wrong field (up to five), what it should be and the value found.
    """
    if not isinstance(data, dict):
        raise ModelError(f"{source} must be a JSON object ({{...}}), not {type(data).__name__}.")
    schema = SCHEMAS.get(card_kind(data))
    if schema is None:
        raise ModelError(f"{source} has kind {data.get('kind')!r}; known kinds: {', '.join(SCHEMAS)}.")
    try:
        schema.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors(include_url=False)]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ModelError(
            f"{source} has invalid fields: " + "; ".join(problems[:5]) + more
            + ". Correct them in the card (its format is described in docs/models/README.md)."
        ) from None
    except RecursionError:
        raise ModelError(f"{source} is nested too deeply to be a model card.") from None


def read_card_file(path: Any, kind: str, what: str) -> dict[str, Any]:
    """The checked card of ``kind`` in the JSON file ``path`` (``what`` names it in messages, e.g. ``"adapter
    card"``); the caller has checked the file exists.

    Raises
    ------
    ModelError
        Unreadable JSON, another kind, or invalid fields.
    """
    import json
    from pathlib import Path

    try:
        card = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{what} {path} cannot be read ({err}).") from err
    if not isinstance(card, dict) or card.get("kind") != kind:
        raise ModelError(f"{path} is not a {what} (kind {kind!r}).")
    validate_card(card, f"{what} {path}")
    return card
