"""Test-time adaptation of a segmentation model to one volume (METHODS section 1, plus Tent).

Methods
-------
``bn_affine`` (default, METHODS variant B)
    Train only the BatchNorm affine parameters (weight, bias) of the chosen blocks (default: the input block
    and every downsampling block) on the BN-KL loss (:mod:`.stats`). BatchNorm stays in eval mode:
    the running statistics are the fixed target and are never updated.
``normalizer`` (METHODS variant A)
    Train only the per-modality normaliser network in front of the segmenter on the same loss.
``tent`` (literature baseline, Wang et al. 2021)
    Minimise the mean softmax entropy of the predictions over the chosen slices by training BN affine
    parameters (default: every BN layer, as in Tent). As in Tent, BatchNorm normalises with *test-batch*
    statistics; here the batch is the set of chosen slices of the volume, i.e. volume-level statistics.
    When done, each layer's running statistics are set to the volume statistics under the kept parameters,
    so eval-mode inference of the adapted model reproduces Tent's normalisation.

Optimisation (all methods): the source model is never modified (adaptation acts on ``model.copy()``).
The statistics come from a fixed set of chosen slices (default: ``DEFAULT_SLICES`` evenly spread
foreground slices, see :mod:`.samples`), the same at every iteration, so every iteration's loss is the
exact loss over those slices and losses of different iterations are comparable. Every iteration is one full
forward/backward pass over them (in chunks of ``batch_size`` slices whose per-channel sums are accumulated
with their graphs; exact mean and variance). Iteration ``i`` records the loss of the parameters before its
update and a final no-grad pass scores the last update. The BN-KL methods keep the parameters with the
minimal loss (iteration 0 is the source model, so the kept loss never exceeds the source's); Tent keeps
its last parameters, as published. A non-finite loss stops the run early, keeps the best parameters so far
and adds a warning to the result.

Defaults (Adam, lr 1e-3, 20 iterations) come from METHODS' grid; see docs/benchmarks/tta.md for how they
were chosen (on the training case's simulated shifts, never on the benchmark case).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import ModelError
from ...jobs import JobContext, ensure_context
from .samples import SlicePolicy, network_inputs
from .stats import (
    FeatureStatistics,
    ReferenceStatistics,
    SampleSums,
    batchnorm_layers,
    bn_kl_loss,
    reference_statistics,
)

if TYPE_CHECKING:
    from ...models import SegModel
    from ...volume import Volume

METHODS: tuple[str, ...] = ("bn_affine", "normalizer", "tent")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: Block groups of ``SegModel.bn_groups()`` trained by default, per method.
DEFAULT_BLOCKS: dict[str, tuple[str, ...]] = {"bn_affine": ("input", "down"), "tent": ("all",)}
#: Slices per forward pass when statistics are accumulated without gradients.
EVAL_BATCH = 8
#: Default optimisation settings (METHODS' grid: lr 1e-3 or 5e-3, 20 or 50 iterations; see the module docs).
DEFAULT_LR = 1e-3
DEFAULT_ITERATIONS = 20
#: SGD momentum (METHODS does not state one).
SGD_MOMENTUM = 0.9

LossCallback = Callable[[int, float], None]
#: Warn when adaptation changes the foreground on the sampled slices by more than this factor either way.
COLLAPSE_FACTOR = 5.0


@dataclass
class AdaptationResult:
    """Outcome of :func:`adapt`.

    Attributes
    ----------
    model
        The adapted copy (eval mode, no parameter requires gradients). The source is untouched.
    method
        ``"bn_affine"``, ``"normalizer"`` or ``"tent"``.
    loss_history
        Loss of iteration 0..n (iteration 0: source parameters; the last entry scores the final update).
        BN-KL for ``bn_affine``/``normalizer``, mean entropy for ``tent``.
    best_iteration
        Index into ``loss_history`` of the kept parameters.
    shift_score_before, shift_score_after
        BN-KL loss against the source model's training statistics on the chosen slices, before and after.
    params
        The settings used (optimizer, lr, iterations, blocks, slices, number of trained parameters, ...).
    seconds
        Wall time of the adaptation.
    warnings
        Problems the user should know about (e.g. a divergent loss that stopped the run early).
    """

    model: SegModel
    method: str
    loss_history: list[float]
    best_iteration: int
    shift_score_before: float
    shift_score_after: float
    params: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def best_loss(self) -> float:
        """Loss of the kept parameters."""
        return self.loss_history[self.best_iteration]


def resolve_blocks(model: SegModel, blocks: Sequence[str]) -> list[str]:
    """Names of ``model.bn_groups()`` selected by ``blocks``.

    Each entry is a group name (``"input"``, ``"down2"``, ``"bottleneck"``, ``"up1"``), a prefix
    standing for every numbered group (``"down"``, ``"up"``) or ``"all"``.
    """
    groups = list(model.bn_groups())
    chosen: list[str] = []
    for block in blocks:
        matches = (
            groups if block == "all" else [g for g in groups if g == block or g.rstrip("0123456789") == block]
        )
        if not matches:
            raise ModelError(
                f"unknown block {block!r}; choose from 'all', 'input', 'down', 'bottleneck', 'up' or {groups}."
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def require_batchnorm(model: nn.Module, method: str) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers of ``model``; :class:`ModelError` when it has none (no TTA method then applies)."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ModelError(
            f"test-time adaptation '{method}' and the shift score need BatchNorm layers with running "
            "statistics, and this model has none: none of bn_affine, normalizer, tent or the shift score "
            "applies to it. Segment without adaptation, or use a model trained with BatchNorm."
        )
    return layers


def _trainable_parameters(model: SegModel, method: str, blocks: Sequence[str]) -> list[nn.Parameter]:
    if method == "normalizer":
        if getattr(model, "normalizer", None) is None:
            raise ModelError(
                f"model {model.card.name!r} has no normalizer network in front of the segmenter, so "
                "method 'normalizer' cannot run. Use method 'bn_affine', or a model trained with a normalizer."
            )
        return list(model.normalizer.parameters())
    groups = model.bn_groups()
    params: list[nn.Parameter] = []
    for name in resolve_blocks(model, blocks):
        for layer in groups[name]:
            params.extend(p for p in (layer.weight, layer.bias) if p is not None)
    if not params:
        raise ModelError(f"the BatchNorm layers of blocks {list(blocks)} have no affine parameters to train.")
    return params


def record_statistics(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH,
    grad: bool = False,
    ctx: JobContext | None = None,
) -> SampleSums:
    """Per-sample feature sums entering every BatchNorm layer of ``model`` for ``inputs`` (samples on dim 0).

    ``inputs`` are pushed through in mini-batches of ``batch_size``; with ``grad`` the graph of every batch
    is kept. ``ctx`` gets one progress step per batch (and can cancel between them).
    """
    statistics = FeatureStatistics(batchnorm_layers(model))
    chunks = inputs.split(batch_size)
    with statistics.recording(), torch.set_grad_enabled(grad):
        for index, chunk in enumerate(chunks):
            model(chunk)
            if ctx is not None:
                ctx.progress(index + 1, len(chunks), "measuring feature statistics")
    return statistics.rows()


def _entropy_on(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    log_probs = torch.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1).mean()


def _use_batch_statistics(layers: Sequence[nn.Module], enabled: bool) -> None:
    """Tent mode: normalise with the current batch's statistics, leaving the running buffers alone."""
    for layer in layers:
        layer.train(enabled)
        layer.track_running_stats = not enabled


def _store_batch_statistics(model: nn.Module, layers: Sequence[nn.Module], inputs: torch.Tensor) -> None:
    """Set every layer's running statistics to its statistics on ``inputs`` (one batch, batch-stat mode)."""
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        layer.track_running_stats = True
        layer.train(True)
    with torch.no_grad():
        model(inputs)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.train(False)


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def adapt(
    model: SegModel,
    volume: Volume,
    method: str = "bn_affine",
    *,
    optimizer: str = "adam",
    lr: float = DEFAULT_LR,
    iterations: int = DEFAULT_ITERATIONS,
    blocks: Sequence[str] | None = None,
    slices: SlicePolicy = None,
    batch_size: int = EVAL_BATCH,
    ctx: JobContext | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    on_loss: LossCallback | None = None,
) -> AdaptationResult:
    """Adapt a copy of ``model`` to ``volume`` at test time.

    Parameters
    ----------
    model
        The source model (never modified).
    volume
        The test volume (its modalities must satisfy the model card).
    method
        ``"bn_affine"`` (default), ``"normalizer"`` or ``"tent"`` (see the module docstring).
    optimizer, lr, iterations
        ``"adam"`` or ``"sgd"`` (momentum 0.9), learning rate, number of parameter updates.
    blocks
        BN groups trained by ``bn_affine``/``tent`` (see :func:`resolve_blocks`); default
        ``("input", "down")`` for ``bn_affine`` and ``("all",)`` for ``tent``. Ignored by ``normalizer``.
    slices
        Which slices give the statistics (see :mod:`.samples`): ``None`` (``DEFAULT_SLICES`` evenly
        spread foreground slices), ``"all"``, a number, or explicit indices.
    batch_size
        Slices per forward pass (the graphs of all of them are kept until the backward pass; lower it to
        save a little memory). Tent always forwards all chosen slices as one batch (batch statistics).
    ctx
        Progress (one step per iteration) and cancellation; a cancelled run raises ``JobCancelled`` and leaves
        the source model untouched.
    device
        Compute device (default: :func:`napari_medadapt.core.device.select_device`).
    seed
        Seed of torch's random generator (reproducible runs).
    on_loss
        Called as ``on_loss(iteration, loss)`` after every loss evaluation (e.g. for a live plot); it runs
        in the computing thread.

    Returns
    -------
    AdaptationResult
    """
    from ...device import select_device

    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}")
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be at least 1, got {iterations}, {batch_size}")
    ctx = ensure_context(ctx)
    require_batchnorm(model, method)
    started = time.perf_counter()
    torch.manual_seed(seed)
    target = select_device(device) if device is None or isinstance(device, str) else device
    adapted = model.copy().to(target)
    adapted.eval()
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    chosen_blocks = tuple(blocks) if blocks is not None else DEFAULT_BLOCKS.get(method, ())
    trainable = _trainable_parameters(adapted, method, chosen_blocks)
    references = reference_statistics(adapted)
    layers = batchnorm_layers(adapted)
    indices, inputs = network_inputs(adapted, volume, slices)
    total_steps = iterations + 1
    foreground_before = _foreground_voxels(adapted, inputs, batch_size)
    for parameter in trainable:
        parameter.requires_grad_(True)
    opt = _make_optimizer(optimizer, trainable, lr)
    history: list[float] = []
    warnings: list[str] = []
    best_iteration, best_loss = 0, math.inf
    best_state = [p.detach().clone() for p in trainable]
    # the BN-KL methods score the source parameters at iteration 0; Tent's objective is another one
    score_before = _exact_kl(adapted, inputs, references) if method == "tent" else math.nan
    try:
        if method == "tent":
            _use_batch_statistics(layers, True)
        for iteration in range(total_steps):
            ctx.progress(iteration, total_steps, f"adapting ({method}): iteration {iteration}/{iterations}")
            last = iteration == iterations
            with torch.set_grad_enabled(not last):
                if method == "tent":
                    loss = _entropy_on(adapted, inputs)
                else:
                    sums = record_statistics(adapted, inputs, batch_size=batch_size, grad=not last)
                    loss = bn_kl_loss(sums.moments(), references)
            value = float(loss.detach())
            history.append(value)
            if iteration == 0 and method != "tent":
                score_before = value
            if on_loss is not None:
                on_loss(iteration, value)
            if not math.isfinite(value):
                warnings.append(
                    f"the loss diverged (became {value}) at iteration {iteration}; stopped early and kept "
                    f"iteration {best_iteration}. Try a lower learning rate or fewer iterations."
                )
                break
            # Tent keeps its last parameters (as published); the BN-KL methods the minimal-loss ones.
            if method == "tent" or value < best_loss:
                best_iteration, best_loss = iteration, value
                best_state = [p.detach().clone() for p in trainable]
            if not last:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _restore(trainable, best_state)
        for parameter in trainable:
            parameter.requires_grad_(False)
        if method == "tent":
            _store_batch_statistics(adapted, layers, inputs)
            _use_batch_statistics(layers, False)
            adapted.eval()
            score_after = _exact_kl(adapted, inputs, references)
        else:
            score_after = best_loss if math.isfinite(best_loss) else score_before
    finally:
        _use_batch_statistics(layers, False)
        adapted.eval()
    foreground_after = _foreground_voxels(adapted, inputs, batch_size)
    drastic = foreground_change_warning(foreground_before, foreground_after)
    if drastic:
        warnings.append(drastic)
    ctx.progress(total_steps, total_steps, f"adapting ({method}): done")
    return AdaptationResult(
        model=adapted,
        method=method,
        loss_history=history,
        best_iteration=best_iteration,
        shift_score_before=score_before,
        shift_score_after=score_after,
        params={
            "optimizer": optimizer,
            "lr": float(lr),
            "iterations": int(iterations),
            "blocks": list(chosen_blocks) if method != "normalizer" else [],
            "slices": [int(i) for i in indices],
            "batch_size": int(batch_size),
            "trained_parameters": int(sum(p.numel() for p in trainable)),
            "device": str(target),
            "seed": int(seed),
            "foreground_voxels_sampled": [foreground_before, foreground_after],
        },
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )


def _foreground_voxels(model: SegModel, inputs: torch.Tensor, batch_size: int) -> int:
    """Voxels of the sampled slices that ``model`` labels as anything but its first class (background)."""
    with torch.no_grad():
        return int(sum(int((model(inputs[i : i + batch_size]).argmax(dim=1) != 0).sum())
                       for i in range(0, len(inputs), batch_size)))


def foreground_change_warning(
    before: int, after: int, factor: float = COLLAPSE_FACTOR, where: str = "on the sampled slices"
) -> str | None:
    """A message when the adapted model's foreground (``where``) shrank or grew ``factor``-fold.

    The BN-KL loss can be lowered by feature statistics that no longer mean anything to the rest of the
    network (a normaliser that maps the whole image to a constant matches many statistics); the segmentation
    then collapses. The result is still returned, so the user can compare it with the source model.
    """
    if before == after or max(before, after) < 50:
        return None
    if after * factor < before or after > factor * max(before, 1):
        return (
            f"adaptation changed the segmented foreground {where} from {before} to {after} "
            f"voxels; it may have collapsed. Compare with the source result, then Reset or try another method "
            f"or a lower learning rate."
        )
    return None


def segmentation_change_warning(before_labels: np.ndarray, after_labels: np.ndarray) -> str | None:
    """:func:`foreground_change_warning` on two whole-volume label maps (0 = background).

    The check inside :func:`adapt` only sees the sampled slices, which can be tumour-free; wherever both
    whole-volume segmentations exist (the dock's "Adapt and segment"), this one sees the whole target.
    """
    return foreground_change_warning(
        int(np.count_nonzero(before_labels)), int(np.count_nonzero(after_labels)), where="in the whole volume"
    )


def _restore(parameters: Sequence[nn.Parameter], values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, value in zip(parameters, values, strict=True):
            parameter.copy_(value.to(parameter.device))


def _exact_kl(model: nn.Module, inputs: torch.Tensor, references: Sequence[ReferenceStatistics]) -> float:
    with torch.no_grad():
        return float(bn_kl_loss(record_statistics(model, inputs).moments(), references))


