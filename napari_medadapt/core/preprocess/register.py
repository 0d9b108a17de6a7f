"""Co-registration of one patient's sequences onto a reference sequence (SimpleITK).

Rigid (6 parameters), Mattes mutual information (the usual metric between MRI contrasts), a three-level
pyramid (4, 2, 1 voxels; smoothing 2, 1, 0 mm) and a regular-step gradient descent, started from the scanner's
own alignment (the headers); when that fails or the result is poor it is tried again from the centres of
intensity mass and the better one is kept. Quality: the Dice overlap of the two head masks inside the shared field of view, and
the normalised mutual information (NMI) of the intensities inside them after registration. A registration
whose head masks do not overlap, or whose intensities share no information (NMI near 1: another patient, or a
failure), is refused with the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..errors import VolumeError
from ..jobs import JobContext, ensure_context
from ..postprocess import keep_largest_component
from .itk import from_sitk, grid_of, to_sitk

if TYPE_CHECKING:
    from ..volume import Volume

#: Head-mask Dice below which the scanner alignment is not trusted and moment-based starting points are tried.
RETRY_HEAD_DICE = 0.90
#: Refuse a registration whose head masks overlap less than this (Dice inside the shared field of view).
MIN_HEAD_DICE = 0.80
#: Refuse a registration whose intensities inside the heads share less information than this (NMI, 1 = none).
MIN_NMI = 1.02


@dataclass
class Registration:
    """How one sequence was brought onto the reference grid.

    Attributes
    ----------
    modality
        The moved sequence.
    rotation_deg, translation_mm
        The rigid transform found (Euler angles about x, y, z in degrees; translation in LPS mm).
    metric_before, metric_after
        Mattes mutual information (more negative is better) with the scanner alignment and after registration.
    head_dice
        Overlap of the head masks after registration, inside the field of view both sequences cover.
    nmi
        Normalised mutual information of the intensities inside both head masks after registration (1: none).
    start
        ``"scanner"`` (the headers' alignment) or ``"moments"`` (centres of intensity mass).
    seconds
        Time taken.
    """

    modality: str
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    metric_before: float
    metric_after: float
    head_dice: float
    nmi: float
    start: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def head_mask(array: np.ndarray) -> np.ndarray:
    """The head (or brain, in a stripped scan): above an Otsu threshold of the non-zero intensities, largest
    connected component, holes filled slice by slice (axial)."""
    from skimage.filters import threshold_otsu

    values = array[array > 0]
    if values.size < 100:
        return np.zeros(array.shape, dtype=bool)
    mask, _removed = keep_largest_component(array > threshold_otsu(values) * 0.5)
    mask = ndimage.binary_closing(mask, iterations=2)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """``(H(a) + H(b)) / H(a, b)`` of two intensity samples (1: independent, 2: one determines the other)."""

    def scaled(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, [1, 99])
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)

    joint, _, _ = np.histogram2d(scaled(a), scaled(b), bins=bins, range=[[0, 1], [0, 1]])
    p = joint / max(joint.sum(), 1)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-np.sum(q * np.log(q)))

    joint_entropy = entropy(p)
    return (entropy(p.sum(1)) + entropy(p.sum(0))) / joint_entropy if joint_entropy > 0 else 1.0


def _rigid(
    fixed: Any, moving: Any, start: Any, ctx: JobContext, label: str, moving_mask: Any = None
) -> tuple[Any, float, float]:
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(start, inPlace=False)
    return run_itk(method, lambda: _execute(method, fixed, moving), ctx, f"registering {label}", 900)


def _execute(method: Any, fixed: Any, moving: Any) -> tuple[Any, float, float]:
    before = method.MetricEvaluate(fixed, moving)
    transform = method.Execute(fixed, moving)
    return transform, float(before), float(method.GetMetricValue())


def run_itk(process: Any, execute: Any, ctx: JobContext, message: str, total: int) -> Any:
    """``execute()`` a SimpleITK process with progress every 10 iterations and cancellation: a cancel inside
    SimpleITK's callback stops the process and is raised again here (SimpleITK would turn it into a
    RuntimeError); SimpleITK's own failures become a :class:`RuntimeError` the caller explains."""
    import SimpleITK as sitk

    steps, stopped = [0], []

    def tick() -> None:
        steps[0] += 1
        if steps[0] % 10:
            return
        try:
            ctx.progress(min(steps[0], total - 1), total, message)
        except BaseException as exc:  # JobCancelled, KeyboardInterrupt: stop SimpleITK, re-raise below
            stopped.append(exc)
            stop = getattr(process, "StopRegistration", None) or process.Abort
            stop()

    process.AddCommand(sitk.sitkIterationEvent, tick)
    try:
        result = execute()
    except RuntimeError:
        if stopped:
            raise stopped[0] from None
        raise
    if stopped:
        raise stopped[0]
    return result


def _quality(reference: np.ndarray, moved: np.ndarray, covered: np.ndarray) -> tuple[float, float]:
    """Head-mask Dice inside the field of view both cover, and NMI inside both heads."""
    head_ref, head_moved = head_mask(reference) & covered, head_mask(moved) & covered
    total = head_ref.sum() + head_moved.sum()
    dice = 2.0 * float((head_ref & head_moved).sum()) / total if total else 0.0
    both = head_ref & head_moved
    nmi = normalised_mutual_information(reference[both], moved[both]) if both.sum() > 1000 else 1.0
    return float(dice), float(nmi)


def coregister(
    reference: Volume, moving: Volume, *, ctx: JobContext | None = None
) -> tuple[np.ndarray, Registration]:
    """``moving``'s first channel resampled (linear) onto ``reference``'s display grid after rigid registration.

    Raises
    ------
    VolumeError
        When the registration fails the quality check (the message gives the head overlap and the NMI).
    """
    import SimpleITK as sitk

    ctx = ensure_context(ctx)
    started = time.perf_counter()
    name = moving.channels[0]
    fixed = to_sitk(reference.data[0].astype(np.float32), reference.geometry)
    moved_image = to_sitk(moving.data[0].astype(np.float32), moving.geometry)
    target = grid_of(reference.geometry)
    inside = to_sitk(np.ones(moving.geometry.display_shape, dtype=np.float32), moving.geometry)

    def resample(transform: Any) -> tuple[np.ndarray, np.ndarray]:
        moved = from_sitk(sitk.Resample(moved_image, target, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        covered = from_sitk(sitk.Resample(inside, target, transform, sitk.sitkNearestNeighbor, 0.0)) > 0.5
        return moved, covered

    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    scanner = sitk.Euler3DTransform()
    scanner.SetCenter(centre)
    scored = []  # ((head Dice, NMI), start, transform, metric before, metric after, moved array)

    def attempt(start: str, initial: Any) -> None:
        transform, before, after = _rigid(fixed, moved_image, initial, ctx, name)
        moved, covered = resample(transform)
        scored.append((_quality(reference.data[0], moved, covered), start, transform, before, after, moved))

    try:  # from the scanners' alignment (fails when the headers do not overlap at all)
        attempt("scanner", scanner)
    except RuntimeError:
        pass
    if not scored or scored[0][0][0] < RETRY_HEAD_DICE:
        moments = sitk.CenteredTransformInitializer(
            fixed, moved_image, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        try:
            attempt("moments", moments)
        except RuntimeError as exc:
            if not scored:
                raise VolumeError(
                    f"{name} could not be registered onto {reference.channels[0]} ({str(exc).strip().splitlines()[-1]}). "
                    "Check that both are 3D scans of the same head."
                ) from exc
    (dice, nmi), start, transform, before, after, moved = max(scored, key=lambda item: item[0][0])
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    angles = tuple(float(np.degrees(a)) for a in euler.GetParameters()[:3])
    shift = tuple(float(t) for t in euler.GetParameters()[3:])
    record = Registration(name, angles, shift, before, after, dice, nmi, start, time.perf_counter() - started)
    if dice < MIN_HEAD_DICE or nmi < MIN_NMI:
        raise VolumeError(
            f"Registration of {name} onto {reference.channels[0]} failed the quality check: the heads overlap "
            f"{dice:.2f} (at least {MIN_HEAD_DICE} expected) and the intensities share NMI {nmi:.3f} (at least "
            f"{MIN_NMI}). Check that both files are of the same patient and session, and show the head."
        )
    return moved.astype(np.float32), record


def align_brain_to_head(head: Volume, brain: Volume, *, ctx: JobContext | None = None) -> Any:
    """The rigid transform (SimpleITK; ``head`` grid points -> ``brain`` grid points) that places a
    skull-stripped ``brain`` scan onto a whole-``head`` scan of the same patient: mutual information over the
    brain's non-zero voxels only, started from the centres of intensity mass (no quality check: the two differ
    by the skull by design). Used to bring reference labels of a preprocessed scan into the raw scan's space."""
    import SimpleITK as sitk

    ctx = ensure_context(ctx)
    fixed = to_sitk(head.data[0].astype(np.float32), head.geometry)
    moving = to_sitk(brain.data[0].astype(np.float32), brain.geometry)
    mask = sitk.Cast(moving != 0, sitk.sitkUInt8)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)  # fmt: skip
    transform, _before, _after = _rigid(fixed, moving, start, ctx, brain.channels[0], moving_mask=mask)
    return transform


def resample_onto(array: np.ndarray, geometry: Any, target: Any, transform: Any, nearest: bool = False) -> np.ndarray:
    """``array`` (display order, on ``geometry``) on the ``target`` geometry's grid through ``transform``
    (nearest neighbour for labels, else linear; 0 outside)."""
    import SimpleITK as sitk

    image = to_sitk(np.asarray(array, dtype=np.float32), geometry)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return from_sitk(sitk.Resample(image, grid_of(target), transform, interpolator, 0.0, sitk.sitkFloat32))
