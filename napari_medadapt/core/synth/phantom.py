"""Phantom brain MRI with gliomas: 4 modalities on real anatomy, with per-institution acquisition effects.

Anatomy: the MNI152 T1 template's grey-matter, white-matter and brain-mask maps shipped with nilearn
(offline), reoriented to LPS, transposed to the display order ``(Z, Y, X)`` and scaled per axis so that
the brain fills the extent it has on the 240 x 240 x 155, 1 mm SRI24 grid of BraTS data
(:data:`GRID_SHAPE`, :data:`SRI24_BRAIN_EXTENT`). CSF is the brain mask minus grey and white matter.

Each phantom draws (seeded):

- a smooth random deformation of the anatomy (affine plus low-frequency elastic field);
- a tumour: a lumpy ellipsoid whose inner part is necrosis (label 1), wrapped in an enhancing rim
  (label 4), wrapped in edema (label 2), with mass effect pushing the anatomy outward. Types:
  ``"gbm"`` (necrosis + enhancing rim + edema), ``"solid"`` (enhancing, little or no necrosis) and
  ``"lgg"`` (non-enhancing core, label 1, in edema; no enhancement). Labels are nested by construction;
- tissue intensities per modality (:data:`TISSUE_CONTRAST`, jittered +-10% for normal tissue and +-30%
  for tumour tissue, whose appearance varies far more between real tumours), partial-volume mixing and
  fine texture;
- an institution: raw intensity scale per modality, gamma, bias field, Rician noise, blur and resolution
  (slab thickness for slices, through-plane/in-plane down-sampling for volumes), applied with
  :mod:`napari_medadapt.core.synth.shifts`.

Labels are BraTS ids: 0 background, 1 necrosis / non-enhancing core, 2 edema, 4 enhancing tumour.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .shifts import apply_shift

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
GRID_SHAPE: tuple[int, int, int] = (155, 240, 240)
# brain extent (first, last voxel) per display axis (Z, Y, X) on the SRI24 1 mm grid of BraTS cases
SRI24_BRAIN_EXTENT: tuple[tuple[int, int], ...] = ((9, 139), (51, 212), (54, 182))

# relative mean intensity (white matter on T1 = 1) of each tissue per modality (t1, t1c, t2, flair)
TISSUE_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.50, 0.65),
    "gm": (0.70, 0.72, 0.72, 0.85),
    "csf": (0.25, 0.27, 1.70, 0.12),
    "edema": (0.60, 0.64, 1.15, 1.25),
    "enhancing": (0.65, 1.60, 0.95, 1.10),
    "necrosis": (0.35, 0.40, 1.50, 0.80),
    "non_enhancing": (0.55, 0.58, 1.30, 1.35),
}
#: Relative jitter of the tissue contrasts per phantom and modality (normal tissue, tumour tissue).
CONTRAST_JITTER: dict[str, float] = {"normal": 0.10, "tumour": 0.30}
NORMAL_TISSUES: frozenset[str] = frozenset({"wm", "gm", "csf"})
TUMOUR_TYPES: tuple[tuple[str, float], ...] = (("gbm", 0.5), ("solid", 0.15), ("lgg", 0.35))


@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps on the display grid ``(Z, Y, X)``."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """MNI152 tissue maps (nilearn, offline) aligned to the SRI24-like display grid; cached."""
    import nibabel as nib
    from nilearn import datasets

    maps = {
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
    }
    display = {}
    for name, image in maps.items():
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt("LPS")
        )
        lps = nib.orientations.apply_orientation(np.asarray(image.get_fdata(), dtype=np.float32), ornt)
        display[name] = np.ascontiguousarray(lps.transpose(2, 1, 0))
    brain = np.argwhere(display["mask"] > 0.5)
    src_lo, src_hi = brain.min(0), brain.max(0)
    scale, offset = [], []
    for axis, (dst_lo, dst_hi) in enumerate(SRI24_BRAIN_EXTENT):
        a = (src_hi[axis] - src_lo[axis]) / float(dst_hi - dst_lo)
        scale.append(a)
        offset.append(src_lo[axis] - a * dst_lo)
    resampled = {
        name: ndimage.affine_transform(
            arr, np.asarray(scale), offset=np.asarray(offset), output_shape=GRID_SHAPE, order=1
        ).astype(np.float32)
        for name, arr in display.items()
    }
    mask = resampled["mask"] > 0.5
    gm = np.clip(resampled["gm"], 0, 1) * mask
    wm = np.clip(resampled["wm"], 0, 1) * mask
    csf = np.clip(1.0 - gm - wm, 0, 1) * mask
    return Anatomy(gm=gm, wm=wm, csf=csf, mask=mask.astype(np.float32))


@dataclass
class Institution:
    """Acquisition effects of one simulated site."""

    scale: tuple[float, ...]
    gamma: float
    bias_strength: float
    noise_fraction: float
    blur_sigma: float
    through_plane: float
    in_plane: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Institution:
        """Draw a site: raw scale 100..2000 per modality, gamma 0.8..1.25, bias, noise, blur, resolution."""
        return cls(
            scale=tuple(float(s) for s in np.exp(rng.uniform(np.log(100), np.log(2000), size=4))),
            gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
            bias_strength=float(rng.uniform(0.0, 0.4)),
            noise_fraction=float(rng.uniform(0.01, 0.06)),
            blur_sigma=float(rng.uniform(0.0, 1.0)),
            through_plane=float(rng.uniform(1.0, 4.0)),
            in_plane=float(rng.uniform(1.0, 1.5)),
        )


@dataclass
class PhantomParams:
    """Everything that defines one phantom (drawn by :func:`random_phantom_params`)."""

    seed: int
    tumour_type: str
    centre: np.ndarray
    radii: np.ndarray
    rim_fraction: float
    edema_factor: np.ndarray
    mass_effect: float
    affine: np.ndarray
    shift: np.ndarray
    elastic_amplitude: float
    contrast: dict[str, np.ndarray]
    institution: Institution
    lumps: list[np.ndarray] = field(default_factory=list)
    elastic_waves: list[np.ndarray] = field(default_factory=list)


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    matrix = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):
        angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
        rot = np.eye(3)
        i, j = axes
        rot[i, i] = rot[j, j] = np.cos(angle)
        rot[i, j], rot[j, i] = -np.sin(angle), np.sin(angle)
        matrix = matrix @ rot
    return matrix


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> np.ndarray:
    """``n`` random plane waves as rows (kz, ky, kx, phase, amplitude)."""
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return np.concatenate([k, rng.uniform(0, 2 * np.pi, (n, 1)), rng.normal(size=(n, 1))], axis=1)


def _eval_waves(waves: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = np.zeros(points.shape[:-1], dtype=np.float32)
    for kz, ky, kx, phase, amp in waves:
        out += np.float32(amp) * np.sin(points @ np.asarray([kz, ky, kx], dtype=np.float32) + np.float32(phase))
    return out / np.float32(np.sqrt(len(waves)))


def random_phantom_params(seed: int) -> PhantomParams:
    """Draw a phantom (tumour, deformation, contrasts, institution) from ``seed``."""
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy()
    names = [t for t, _ in TUMOUR_TYPES]
    probs = np.asarray([p for _, p in TUMOUR_TYPES])
    tumour_type = str(rng.choice(names, p=probs / probs.sum()))
    candidates = np.argwhere(anatomy.wm[30:125:4, ::4, ::4] > 0.6) * 4 + np.asarray([30, 0, 0])
    centre = candidates[rng.integers(len(candidates))].astype(np.float32) + rng.uniform(-2, 2, 3)
    radii = rng.uniform(7, 22) * np.exp(rng.uniform(-0.25, 0.25, 3))
    rim = {"gbm": rng.uniform(0.45, 0.8), "solid": rng.uniform(0.0, 0.3), "lgg": 0.0}[tumour_type]
    contrast = {}
    for tissue, values in TISSUE_CONTRAST.items():
        jitter = CONTRAST_JITTER["normal" if tissue in NORMAL_TISSUES else "tumour"]
        factor = rng.uniform(1 - jitter, 1 + jitter, 4).astype(np.float32)
        contrast[tissue] = np.asarray(values, dtype=np.float32) * factor
    return PhantomParams(
        seed=seed,
        tumour_type=tumour_type,
        centre=centre,
        radii=radii.astype(np.float32),
        rim_fraction=float(rim),
        edema_factor=(rng.uniform(1.2, 2.3) * np.exp(rng.uniform(-0.2, 0.2, 3))).astype(np.float32),
        mass_effect=float(rng.uniform(0.0, 0.35)),
        affine=(_rotation(rng, 8.0) @ np.diag(np.exp(rng.uniform(-0.08, 0.08, 3)))).astype(np.float32),
        shift=rng.uniform(-4, 4, 3).astype(np.float32),
        elastic_amplitude=float(rng.uniform(0.0, 4.0)),
        contrast=contrast,
        institution=Institution.random(rng),
        lumps=[_waves(rng, 5, (12.0, 40.0)), _waves(rng, 5, (15.0, 50.0))],
        elastic_waves=[_waves(rng, 4, (50.0, 120.0)) for _ in range(3)],
    )


def _tumour_labels(params: PhantomParams, points: np.ndarray, brain: np.ndarray, csf: np.ndarray) -> np.ndarray:
    rel = points - params.centre.astype(np.float32)
    core_rho = np.sqrt(np.sum((rel / params.radii) ** 2, axis=-1)) * (1 + 0.18 * _eval_waves(params.lumps[0], points))
    edema_rho = np.sqrt(np.sum((rel / (params.radii * params.edema_factor)) ** 2, axis=-1)) * (
        1 + 0.25 * _eval_waves(params.lumps[1], points)
    )
    labels = np.zeros(points.shape[:-1], dtype=np.uint8)
    labels[(edema_rho < 1) & (csf < 0.6)] = 2
    core = core_rho < 1
    if params.tumour_type == "lgg":
        labels[core] = 1
    else:
        labels[core] = 4
        labels[core_rho < params.rim_fraction] = 1
    labels[brain < 0.5] = 0
    return labels


def _render_points(
    params: PhantomParams, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Clean images ``(4, *grid)``, labels and tissue fractions (gm, wm, csf) at ``points`` (..., 3) zyx."""
    anatomy = load_anatomy()
    rel = points - params.centre
    dist2 = np.sum((rel / (params.radii * 1.8)) ** 2, axis=-1, keepdims=True)
    source = params.centre + rel * (1 - params.mass_effect * np.exp(-dist2))
    brain_centre = np.asarray([74.0, 131.5, 118.0], dtype=np.float32)
    source = (source - brain_centre) @ params.affine.T + brain_centre + params.shift
    if params.elastic_amplitude > 0:
        disp = np.stack([_eval_waves(w, source) for w in params.elastic_waves], axis=-1)
        source = source + np.float32(params.elastic_amplitude) * disp
    coords = np.moveaxis(source, -1, 0)
    sampled = {
        name: ndimage.map_coordinates(getattr(anatomy, name), coords, order=1, mode="constant", cval=0.0)
        for name in ("gm", "wm", "csf", "mask")
    }
    labels = _tumour_labels(params, points, sampled["mask"], sampled["csf"])
    total = sampled["gm"] + sampled["wm"] + sampled["csf"] + 1e-6
    c = params.contrast
    images = np.zeros((4,) + points.shape[:-1], dtype=np.float32)
    weights = {t: sampled[t] / total for t in ("gm", "wm", "csf")}
    for m in range(4):
        images[m] = c["gm"][m] * weights["gm"] + c["wm"][m] * weights["wm"] + c["csf"][m] * weights["csf"]
    core_tissue = "non_enhancing" if params.tumour_type == "lgg" else "necrosis"
    heterogeneity = 1 + 0.08 * _eval_waves(params.lumps[1], points * 2.0)
    for label, tissue, mix in ((2, "edema", 0.75), (4, "enhancing", 1.0), (1, core_tissue, 1.0)):
        sel = labels == label
        if sel.any():
            for m in range(4):
                images[m][sel] = (1 - mix) * images[m][sel] + mix * c[tissue][m] * heterogeneity[sel]
    brain = sampled["mask"] > 0.5
    images *= brain
    return images, labels, {t: w * brain for t, w in weights.items()}


def render_clean(
    params: PhantomParams, z_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Pre-acquisition axial slices at (possibly fractional) ``z_indices`` of the display grid.

    Returns
    -------
    images, labels, tissues
        float32 ``(4, nz, 240, 240)`` relative intensities (:data:`TISSUE_CONTRAST` units), uint8 labels
        ``(nz, 240, 240)`` and the partial-volume fractions ``{"gm", "wm", "csf"}`` of the normal tissue.
    """
    return _render_points(params, _grid_points(np.asarray(z_indices, dtype=np.float32)))


def _grid_points(z_indices: np.ndarray) -> np.ndarray:
    z = np.asarray(z_indices, dtype=np.float32)
    zz, yy, xx = np.meshgrid(
        z, np.arange(GRID_SHAPE[1], dtype=np.float32), np.arange(GRID_SHAPE[2], dtype=np.float32), indexing="ij"
    )
    return np.stack([zz, yy, xx], axis=-1)


def _acquire(images: np.ndarray, institution: Institution, seed: int, volume: bool) -> np.ndarray:
    """Apply the institution's gamma, bias, blur, resolution, noise and raw scale (in that order)."""
    mask = np.any(images != 0, axis=0)
    out = apply_shift(images, "gamma", seed=seed, mask=mask, gamma=institution.gamma)
    out = apply_shift(out, "bias_field", seed=seed + 1, mask=mask, strength=institution.bias_strength)
    if institution.blur_sigma > 0.05:
        out = apply_shift(out, "blur", seed=seed, mask=mask, sigma=institution.blur_sigma)
    out = apply_shift(
        out,
        "low_resolution",
        seed=seed,
        mask=mask,
        through_plane=institution.through_plane if volume else 1.0,
        in_plane=institution.in_plane,
    )
    out = apply_shift(out, "noise", seed=seed + 2, mask=mask, sigma_fraction=institution.noise_fraction)
    return apply_shift(out, "intensity_scale", seed=seed, mask=mask, factor=institution.scale)


def make_phantom_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume.

    Returns
    -------
    images, labels
        float32 ``(4, 155, 240, 240)`` raw-like intensities (channels :data:`MODALITIES`, display order
        ``(Z, Y, X)``, zero outside the brain) and uint8 ``(155, 240, 240)`` BraTS labels.
    """
    params = random_phantom_params(seed)
    images, labels, _ = render_clean(params, np.arange(GRID_SHAPE[0]))
    return _acquire(images, params.institution, seed, volume=True), labels


def make_phantom_slice(
    seed: int, tumour_probability: float = 0.85, params: PhantomParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One axial phantom slice ``(4, 240, 240)`` float32 and its labels ``(240, 240)`` uint8.

    With probability ``tumour_probability`` the slice crosses the tumour's core or edema; otherwise it
    is any brain slice (often tumour-free). A slab of 1-4 slices is averaged (slice thickness).
    """
    rng = np.random.default_rng([seed, 7])
    params = random_phantom_params(seed) if params is None else params
    if rng.uniform() < tumour_probability:
        half = params.radii[0] * (1.0 + 0.7 * (params.edema_factor[0] - 1.0))
        z = float(np.clip(params.centre[0] + rng.uniform(-half, half), 5, GRID_SHAPE[0] - 6))
    else:
        z = float(rng.uniform(12, 135))
    thickness = int(rng.integers(1, 5))
    offsets = np.arange(thickness, dtype=np.float32) - (thickness - 1) / 2.0
    images, labels, _ = render_clean(params, z + offsets)
    image = images.mean(axis=1)
    label = labels[thickness // 2]
    image = _acquire(image, params.institution, seed, volume=False)
    return image.astype(np.float32), label
