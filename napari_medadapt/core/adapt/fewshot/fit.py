"""Few-shot adaptation: the user labels a few slices of a volume, a small head on the frozen model segments the
rest of it (METHODS section 4, with the authors' settings).

Methods (:data:`METHODS`):

- ``adapter`` (default): a residual block (conv 3x3 -> ReLU -> conv 3x3, no bias, last conv zero) on the frozen
  model's last decoder map, then a 1x1 head initialised from the source head where the class exists in it;
- ``linear_probe``: the 1x1 head only;
- ``ft_last``: the last decoder block and the head (the backbone's block at lr 1e-4);
- ``full``: every weight at lr 1e-4 (the baseline that collapses with few shots).

AdamW (lr 1e-2 for adapter and head, weight decay 1e-5), cosine decay, soft Dice on the support planes (the
marginal cross-entropy is an option); with ``prior`` the transductive size prior (margin 0.3, weight 0.1) on the unlabelled planes
between them for the second half of the steps. The backbone stays in eval mode (BatchNorm statistics untouched);
for ``adapter`` and ``linear_probe`` its features are computed once per volume (kept by the session), so a step
costs only the head. The source model is never changed: the result holds an adapted copy whose head is swapped,
segmenting the whole volume on the one inference path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError, VolumeError
from ...jobs import JobContext, ensure_context
from ...postprocess import keep_components_touching
from .backbone import SegBackbone
from .suggest import SliceSuggestion, rank_slices
from .support import AXIS_NAMES, Support, SupportPlane, expected_areas, find_support
from .train import BackbonePlanes, CachedPlanes, PlaneTarget, train
from .warm import WARM_LR_SHARE, refit_seconds, warm_key, warm_steps

if TYPE_CHECKING:
    import torch

    from ...models import SegModel
    from ...sam.predictor import SamPredictor
    from ...session import ModelSession
    from ...volume import Volume
    from .backbone import FeatureVolume

METHODS = ("adapter", "linear_probe", "ft_last", "full")
#: Steps of a fit (each one sees every support plane): the published 100 epochs.
DEFAULT_STEPS = 100
HEAD_LR = 1e-2
BACKBONE_LR = 1e-4


@dataclass
class FewShotResult:
    """What a fit produced.

    Attributes
    ----------
    model
        The adapted copy (the source model is untouched); its card lists background + the support's classes.
    labels
        uint8 ``(Z, Y, X)`` labels of the whole volume on its own grid: on the support planes the user's paint,
        and the prediction of the classes not painted on a plane where nothing is painted.
    predicted
        The adapted model's labels before the support planes were copied in.
    probabilities
        float16 ``(K, Z, Y, X)`` per-class probabilities (background first, then :attr:`classes`).
    zero_shot
        The source model's labels of the volume (the floor).
    support
        The planes used and the classes.
    history
        One entry per step: ``loss``, ``seg`` (soft Dice, + cross-entropy when asked) and ``prior`` (NaN while it
        is off).
    leave_one_out
        Support plane index -> foreground Dice of a fit without that plane (two planes or more).
    seconds
        ``features``, ``fit``, ``predict`` and ``leave_one_out`` wall times.
    warm_key
        What a later fit must share to start from this one (:func:`fit`'s ``warm_start``): the frozen features
        (model, volume, inputs), method, settings, classes and axis.
    """

    model: SegModel
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    zero_shot: np.ndarray
    support: Support
    method: str
    prior: bool
    history: list[dict[str, float]]
    class_names: dict[int, str]
    settings: dict[str, Any]
    leave_one_out: dict[int, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused_classes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warm_key: tuple = ()

    @property
    def classes(self) -> tuple[int, ...]:
        """The label ids of the fit (without background)."""
        return self.support.classes

    @property
    def prior_terms(self) -> list[float]:
        """The size-prior term of every step (NaN while it is off)."""
        return [h["prior"] for h in self.history]

    @property
    def warm_started(self) -> bool:
        """Whether this fit started from an earlier one's weights."""
        return bool(self.settings.get("warm_start"))

    def refit_seconds(self, planes: int | None = None) -> float:
        """Expected seconds of a warm refit from this fit with ``planes`` support slices (default: as many as
        this fit's), from this fit's measured seconds per step (:func:`~.warm.refit_seconds`)."""
        per_step, old = self.seconds.get("fit", 0.0) / max(len(self.history), 1), len(self.support.planes)
        return refit_seconds(per_step, int(self.settings.get("steps", len(self.history))), self.prior, old,
                             planes or old, self.seconds.get("predict", 0.0))

    def suggestions(self, count: int = 3) -> list[SliceSuggestion]:
        """The unpainted slices along the support axis where a label is expected to help most, best first, each
        with why (:func:`~.suggest.rank_slices`: uncertainty over the object and its rim, distance to
        the nearest painted slice, object ends)."""
        return rank_slices(self.probabilities, self.predicted, self.support, count)

    def suggest_next(self, count: int = 3) -> list[tuple[int, float]]:
        """``(slice index, mean uncertainty)`` of :meth:`suggestions`, best first."""
        return [(s.index, s.uncertainty) for s in self.suggestions(count)]


# ------------------------------------------------------------------------------------------------ training
@dataclass
class _Problem:
    """A fit's inputs on the feature grid."""

    backbone: SegBackbone
    cache: FeatureVolume
    support: Support
    planes: list[PlaneTarget]
    query: dict[int, torch.Tensor]
    classes: tuple[int, ...]


def _problem(backbone: SegBackbone, cache: FeatureVolume, labels: np.ndarray, support: Support) -> _Problem:
    import torch

    classes = support.classes
    lut = np.zeros(256, dtype=np.int64)
    lut[list(classes)] = np.arange(1, len(classes) + 1)
    grid = np.zeros(backbone.grid_shape, dtype=np.uint8)
    planes, grid_planes = [], []
    for plane in support.planes:
        mapped = backbone.to_grid(np.take(labels, plane.index, axis=support.axis), support.axis, plane.index)
        if mapped is None:
            continue
        index, values = mapped
        known = torch.zeros(len(classes) + 1, dtype=torch.bool)
        known[0] = True
        for cls in plane.classes or classes:
            known[int(lut[cls])] = True
        target = torch.from_numpy(lut[values.astype(np.int64)].ravel())
        planes.append(PlaneTarget(index, target, known, plane.index))
        grid_planes.append(SupportPlane(support.axis, index, plane.classes))
        sl = [slice(None)] * 3
        sl[support.axis] = index
        grid[tuple(sl)] = values
    if not planes:
        raise VolumeError(
            "every labelled slice lies outside the region with image data (where the answer is background "
            "anyway): paint slices through the object."
        )
    areas = expected_areas(grid, Support(support.axis, grid_planes, classes), classes)
    taken = {p.index for p in planes}
    query = {}
    for index in range(grid.shape[support.axis]):
        expected = [float("nan")] + [float(areas[c][index]) for c in classes]
        if index not in taken and np.isfinite(expected[1:]).any():
            query[index] = torch.tensor(expected, dtype=torch.float32)
    return _Problem(backbone, cache, support, planes, query, classes)


def _fit_head(
    problem: _Problem, method: str, prior: bool, steps: int, seed: int, device, ctx, on_step, label: str,
    cross_entropy: bool = False, init: Any = None, lr_share: float = 1.0,
) -> tuple[Any, list[dict[str, float]], list[int]]:
    """Train a new head (and for ``ft_last``/``full`` part of a model copy) on the problem's planes; return the
    adapted model, the loss history and the label ids the head took from the source. ``init``: an earlier
    adapted model of the same backbone, method and classes to start from (a warm start); ``lr_share`` scales
    the learning rates."""
    import torch

    torch.manual_seed(seed)
    adapted, head, reused = problem.backbone.trainable(method, problem.classes)
    if init is not None:
        if method in ("ft_last", "full"):
            adapted.load_state_dict(init.state_dict())
        else:
            head.load_state_dict(problem.backbone.head_of(init).state_dict())
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    adapted.to(device).eval()
    head_ids = {id(p) for p in head.parameters()}
    body: list[torch.nn.Parameter] = []
    if method in ("ft_last", "full"):
        trained = adapted.network.upsamples[-1] if method == "ft_last" else adapted
        body = [p for p in trained.parameters() if id(p) not in head_ids]
    for parameter in [*body, *head.parameters()]:
        parameter.requires_grad_(True)
    params = [{"params": list(head.parameters()), "lr": HEAD_LR * lr_share}]
    if body:
        params.append({"params": body, "lr": BACKBONE_LR * lr_share})
    planes = _planes(problem, adapted, head, method, device)
    with torch.enable_grad():
        history = train(
            planes, params, problem.planes, problem.query, steps, prior, seed, ctx, on_step, label, cross_entropy
        )
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    return adapted, history, reused


def _planes(problem: _Problem, adapted: Any, head: Any, method: str, device) -> Any:
    """Where a plane's logits come from: the cached features through the head, or the model copy itself."""
    if method in ("adapter", "linear_probe"):
        return CachedPlanes(problem, head, device)
    return BackbonePlanes(problem.backbone, adapted, device)


def _leave_one_out(
    problem: _Problem, labels: np.ndarray, method: str, prior: bool, steps: int, seed: int, device, ctx,
    cross_entropy: bool = False,
) -> dict[int, float]:
    """Foreground Dice on each painted support plane of a fit without it (its classes and its area left out of
    the fit and of the size prior)."""
    import torch

    from ...metrics import dice

    scores = {}
    painted = [p for p in problem.support.planes if p.classes]
    for count, held in enumerate(painted):
        rest = [p for p in problem.support.planes if p is not held]
        classes = tuple(sorted({c for p in rest for c in p.classes}))
        sub = _problem(problem.backbone, problem.cache, labels, Support(problem.support.axis, rest, classes))
        target = next((p for p in problem.planes if p.source_index == held.index), None)
        if target is None:
            continue
        label = f"leave-one-out {count + 1} of {len(painted)}"
        adapted, _history, _ = _fit_head(sub, method, prior, steps, seed, device, ctx, None, label, cross_entropy)
        planes = _planes(sub, adapted, sub.backbone.head_of(adapted), method, device)
        with torch.no_grad():
            predicted = planes.logits(target.index).argmax(dim=0).cpu().numpy()
        scores[held.index] = dice(predicted > 0, target.target.numpy() > 0)
    return scores


def make_backbone(
    model: SegModel | SamPredictor, volume: Volume, modalities: Mapping[str, str | None] | None = None,
    channel: str | None = None,
) -> Any:
    """The frozen part of a fit: a segmentation model's decoder tap, or a promptable model's features."""
    if hasattr(model, "decoder_channels"):
        if channel is not None:
            raise ModelError("channel picks the image of a promptable backbone; a segmentation model takes modalities.")
        return SegBackbone(model, volume, modalities)
    from .sam import SamBackbone

    if channel is not None and channel not in volume.channels:
        raise VolumeError(f"channel {channel!r} is not in the volume ({', '.join(volume.channels)}).")
    return SamBackbone(model, volume, channel)


def _setup(
    model: Any, volume: Volume, support_labels: np.ndarray, method: str, steps: int,
    empty_planes: Iterable[tuple[int, int]], modalities: Mapping[str, str | None] | None, channel: str | None,
    axis: int | None = None,
) -> tuple[np.ndarray, Support, Any]:
    """Checked support labels, the support found in them and the backbone."""
    if method not in METHODS:
        raise ModelError(f"unknown few-shot method {method!r}; choose one of {', '.join(METHODS)}.")
    if steps < 1:
        raise ModelError(f"steps must be at least 1, got {steps}.")
    labels = np.asarray(support_labels)
    shape = volume.geometry.display_shape
    if labels.shape != tuple(shape):
        raise VolumeError(
            f"the support labels have shape {labels.shape} but the image has {tuple(shape)}: paint them on the "
            "image's own grid (a Labels layer made from the image, or a label file saved from it)."
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise VolumeError("the support labels must be integer label ids between 0 and 255.")
    support = find_support(labels, empty_planes, axis)
    if not support.classes:
        raise VolumeError("no structure is painted (only slices marked empty): paint it on a few slices.")
    backbone = make_backbone(model, volume, modalities, channel)
    if method in ("ft_last", "full") and (backbone.spatial_dims != 2 or support.axis != 0):
        raise ModelError(
            f"{method} trains the model itself and needs slices painted on its own (axial) planes of a "
            f"slice-wise model; these are {AXIS_NAMES[support.axis]}. Use adapter or linear_probe."
        )
    return labels, support, backbone


def leave_one_out(
    model: SegModel | SamPredictor,
    volume: Volume,
    support_labels: np.ndarray,
    method: str = "adapter",
    *,
    prior: bool = True,
    steps: int = DEFAULT_STEPS,
    cross_entropy: bool = False,
    empty_planes: Iterable[tuple[int, int]] = (),
    axis: int | None = None,
    modalities: Mapping[str, str | None] | None = None,
    channel: str | None = None,
    device: Any = None,
    session: ModelSession | None = None,
    seed: int = 0,
    ctx: JobContext | None = None,
) -> dict[int, float]:
    """Support plane index -> foreground Dice on that painted plane of a fit without it (the same settings
    as :func:`fit`; with ``session`` the frozen features of an earlier fit are reused). Empty with fewer than
    two painted planes."""
    from ...device import select_device

    labels, support, backbone = _setup(
        model, volume, support_labels, method, steps, empty_planes, modalities, channel, axis
    )
    if sum(bool(p.classes) for p in support.planes) < 2:
        return {}
    torch_device = select_device(device)
    ctx = ensure_context(ctx)
    problem = _problem(backbone, backbone.compute(torch_device, ctx, session), labels, support)
    return _leave_one_out(problem, labels, method, prior, steps, seed, torch_device, ctx, cross_entropy)


def fit(
    model: SegModel | SamPredictor,
    volume: Volume,
    support_labels: np.ndarray,
    method: str = "adapter",
    *,
    prior: bool = True,
    channel: str | None = None,
    steps: int = DEFAULT_STEPS,
    cross_entropy: bool = False,
    empty_planes: Iterable[tuple[int, int]] = (),
    axis: int | None = None,
    modalities: Mapping[str, str | None] | None = None,
    leave_one_out: bool = True,
    largest_component: bool | None = None,
    device: Any = None,
    session: ModelSession | None = None,
    seed: int = 0,
    on_step: Callable[[int, int, dict[str, float]], Any] | None = None,
    ctx: JobContext | None = None,
    warm_start: FewShotResult | None = None,
) -> FewShotResult:
    """Adapt ``model`` to ``volume`` from the few planes painted in ``support_labels`` and segment the rest.

    Parameters
    ----------
    model
        A segmentation model (its ``decoder`` tap is the frozen features) or a promptable model's predictor
        (LiteMedSAM: its slice embeddings, any anatomy and modality); never changed.
    volume
        The volume; ``support_labels`` lie on its display grid.
    support_labels
        ``(Z, Y, X)`` integer labels, painted on a few planes of one axis (0 elsewhere); every label id painted
        becomes a class (a new one too).
    method
        One of :data:`METHODS`.
    prior
        The transductive size prior (second half of the steps).
    channel
        The image of a promptable (single-channel) backbone (default: the volume's first channel).
    steps
        Optimisation steps (each sees every support plane).
    cross_entropy
        Add the marginal cross-entropy to the soft Dice (off: it did not help on the data defaults were
        chosen on).
    empty_planes
        ``(axis, index)`` planes marked *annotated, empty*.
    axis
        The axis the slices were painted on (default: found, :func:`~.support.find_support`).
    modalities
        Explicit model-modality -> channel assignments.
    leave_one_out
        Also fit once without each painted plane and score it (two planes or more).
    largest_component
        Keep only connected components of the prediction that touch the painted object (the largest one when
        none does); ``None``: when the source card keeps its largest component.
    device
        Torch device (default: the best available).
    session
        Keeps the frozen features between fits on the same volume.
    seed
        Seeds the head's initialisation and the prior's plane sampling.
    on_step
        ``on_step(step, steps, {"loss", "seg", "prior"})`` after every step (a live loss plot).
    ctx
        Progress and cancellation.
    warm_start
        An earlier fit on the same volume with the same model, inputs, method, settings, classes and axis
        (typically before one more slice was painted): the fit starts from its weights and runs
        :func:`warm_steps` steps at :data:`WARM_LR_SHARE` of the learning rate. Any other earlier fit is
        ignored (a note says so) and the fit starts from scratch.

    Raises
    ------
    VolumeError
        Labels not on the volume's grid, nothing painted, every plane painted.
    ModelError
        Unknown method; ``ft_last``/``full`` on planes other than the model's own (axial) planes.
    """
    from ...device import select_device

    labels, support, backbone = _setup(
        model, volume, support_labels, method, steps, empty_planes, modalities, channel, axis
    )
    ctx = ensure_context(ctx)
    torch_device = select_device(device)
    if largest_component is None:
        card = getattr(model, "card", None)
        largest_component = bool(card is not None and card.postprocess.get("largest_component", False))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    cache = backbone.compute(torch_device, ctx, session)
    seconds["features"] = time.perf_counter() - start
    problem = _problem(backbone, cache, labels, support)
    key_settings = {"method": method, "prior": prior, "steps": steps, "seed": seed, "cross_entropy": cross_entropy,
                    "largest_component": largest_component}
    key = warm_key(backbone, support, key_settings)
    notes: list[str] = []
    init, run_steps, lr_share, label = None, steps, 1.0, method
    if warm_start is not None and warm_start.warm_key == key:
        init, run_steps, lr_share = warm_start.model, warm_steps(steps), WARM_LR_SHARE
        label = f"{method}, refit from the previous adapter"
    elif warm_start is not None:
        notes.append("the previous adapter was made with other inputs, settings or classes: fitted from scratch.")
    start = time.perf_counter()
    adapted, history, reused = _fit_head(
        problem, method, prior, run_steps, seed, torch_device, ctx, on_step, label, cross_entropy, init, lr_share
    )
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    predicted, probabilities = backbone.predict(adapted, problem.classes, torch_device, ctx, False, session)
    if largest_component:
        predicted, _removed = keep_components_touching(predicted, labels > 0)
    seconds["predict"] = time.perf_counter() - start
    merged = predicted.copy()
    for plane in support.planes:
        index = [slice(None)] * 3
        index[support.axis] = plane.index
        index = tuple(index)
        # the painted voxels as painted; elsewhere on the plane, classes not painted on it stay predicted
        unknown = np.isin(predicted[index], [c for c in support.classes if c not in plane.classes])
        keep_predicted = (labels[index] == 0) & unknown if plane.classes else np.zeros_like(unknown)
        merged[index] = np.where(keep_predicted, predicted[index], labels[index])
    scores: dict[int, float] = {}
    if leave_one_out and sum(bool(p.classes) for p in support.planes) >= 2:
        start = time.perf_counter()
        scores = _leave_one_out(problem, labels, method, prior, steps, seed, torch_device, ctx, cross_entropy)
        seconds["leave_one_out"] = time.perf_counter() - start
    notes = [*getattr(getattr(backbone, "prepared", None), "notes", []), *notes]
    if len(problem.planes) < len(support.planes):
        notes.append("slices outside the region with image data were not used (the answer there is background).")
    if prior and not problem.query:
        notes.append("the size prior needs two labelled slices of a class to interpolate between: it had no effect.")
    return FewShotResult(
        model=adapted,
        labels=merged.astype(np.uint8),
        predicted=predicted,
        probabilities=probabilities,
        zero_shot=cache.zero_shot,
        support=support,
        method=method,
        prior=prior,
        history=history,
        class_names=backbone.class_names(problem.classes),
        settings={
            **key_settings, "warm_start": init is not None,
            "base_model": backbone.base_name, "base_sha256": backbone.base_sha256,
            "backbone": "segmentation" if isinstance(backbone, SegBackbone) else "promptable",
            "channels": backbone.channels, "spatial_dims": backbone.spatial_dims,
            "channel": getattr(backbone, "channel", None), "window": list(getattr(backbone, "window", ())) or None,
        },
        leave_one_out=scores,
        seconds=seconds,
        reused_classes=reused,
        notes=notes,
        warm_key=key,
    )
