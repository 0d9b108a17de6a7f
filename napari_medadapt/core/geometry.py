"""The voxel grid of a NIfTI file and its mapping to the LPS ``(Z, Y, X)`` display array.

Orientation convention: every volume is reoriented at load (axis permutation and flips only, never
resampling) to LPS and its array is transposed to ``(Z, Y, X)`` = (S, P, L). Axis 0 runs inferior ->
superior; in napari's default axial view anterior is at the top and the patient's right on the screen's
left (radiological convention). Oblique affines are shown in the nearest LPS orientation; the exact source
affine and header are kept in :class:`Geometry`, so label maps are written back on the source grid with the
same shape, affine and qform/sform codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import nibabel as nib
import nibabel.orientations as orientations
import numpy as np

from .errors import VolumeError

__all__ = ["GRID_ATOL", "Geometry"]

_LPS = orientations.axcodes2ornt(("L", "P", "S"))
#: mm; two grids whose display affines differ by less are the same grid (header affines are float32).
GRID_ATOL = 1e-4


def _fmt_affine(affine: np.ndarray) -> str:
    return np.array2string(np.asarray(affine)[:3], precision=3, suppress_small=True).replace("\n", "")


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid of a NIfTI file and its mapping to the LPS ``(Z, Y, X)`` display array.

    Parameters
    ----------
    source_affine
        (4, 4) affine of the file as on disk (voxel ``(i, j, k)`` -> world RAS mm).
    source_shape
        Spatial shape ``(i, j, k)`` of the file as on disk.
    source_header
        The file's header (qform/sform codes, units, description), reused when writing labels.
    """

    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_header: nib.Nifti1Header

    def __post_init__(self) -> None:
        affine = np.array(self.source_affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VolumeError(f"The affine must be a finite 4x4 matrix, got {affine.tolist()}.")
        shape = tuple(int(s) for s in self.source_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise VolumeError(f"A volume needs 3 spatial axes of size >= 1, got shape {shape}.")
        if np.isnan(orientations.io_orientation(affine)).any():
            raise VolumeError(
                f"The affine {_fmt_affine(affine)} is degenerate (an axis has zero length or two axes "
                "point the same way); fix the file's header (qform/sform) in the scanner export."
            )
        affine.setflags(write=False)
        object.__setattr__(self, "source_affine", affine)
        object.__setattr__(self, "source_shape", shape)
        object.__setattr__(self, "source_header", self.source_header.copy())

    @classmethod
    def from_image(cls, image: nib.Nifti1Image, source_shape: Sequence[int]) -> Geometry:
        """Geometry of a loaded NIfTI image whose spatial shape is ``source_shape``."""
        return cls(image.affine, tuple(source_shape), image.header)

    @classmethod
    def from_display_grid(
        cls,
        display_shape: Sequence[int],
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> Geometry:
        """An LPS-stored grid whose display array has ``display_shape`` (Z, Y, X) and ``spacing`` (mm).

        ``origin`` is the world (RAS, mm) position of display voxel (0, 0, 0). Use it for arrays that
        do not come from a file (synthetic volumes); labels saved against it are LPS-oriented NIfTI.
        """
        sz, sy, sx = (float(s) for s in spacing)
        affine = np.diag([-sx, -sy, sz, 1.0])
        affine[:3, 3] = np.asarray(origin, dtype=np.float64)
        header = nib.Nifti1Header()
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm")
        return cls(affine, tuple(int(s) for s in display_shape)[::-1], header)

    @cached_property
    def _to_lps(self) -> np.ndarray:
        return orientations.ornt_transform(orientations.io_orientation(self.source_affine), _LPS)

    @cached_property
    def _from_lps(self) -> np.ndarray:
        return orientations.ornt_transform(_LPS, orientations.io_orientation(self.source_affine))

    @cached_property
    def _lps_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, (target, _flip) in enumerate(self._to_lps):
            shape[int(target)] = self.source_shape[axis]
        return tuple(shape)

    @property
    def source_axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the file's axes, e.g. ``("L", "P", "S")`` or ``("R", "A", "S")``."""
        return tuple(orientations.aff2axcodes(self.source_affine))

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """Shape ``(Z, Y, X)`` of the display array."""
        return self._lps_shape[::-1]

    @cached_property
    def display_affine(self) -> np.ndarray:
        """(4, 4) affine mapping display index ``(z, y, x, 1)`` to world RAS mm."""
        lps_affine = self.source_affine @ orientations.inv_ornt_aff(self._to_lps, self.source_shape)
        zyx_to_xyz = np.zeros((4, 4))
        zyx_to_xyz[0, 2] = zyx_to_xyz[1, 1] = zyx_to_xyz[2, 0] = zyx_to_xyz[3, 3] = 1.0
        affine = lps_affine @ zyx_to_xyz
        affine.setflags(write=False)
        return affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(z, y, x)`` in mm of the display array (use it as a napari layer's scale)."""
        return tuple(float(s) for s in np.linalg.norm(self.display_affine[:3, :3], axis=0))

    def to_display(self, array_ijk: np.ndarray) -> np.ndarray:
        """Reorient a source-ordered array ``(..., i, j, k)`` to the display order ``(..., Z, Y, X)``."""
        array_ijk = np.asanyarray(array_ijk)
        if array_ijk.shape[-3:] != self.source_shape:
            raise VolumeError(
                f"Array of shape {array_ijk.shape} does not end with the source shape {self.source_shape}."
            )
        lps = orientations.apply_orientation(np.moveaxis(array_ijk, (-3, -2, -1), (0, 1, 2)), self._to_lps)
        return np.ascontiguousarray(np.moveaxis(lps, (0, 1, 2), (-1, -2, -3)))

    def to_source(self, array_zyx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_display`: ``(..., Z, Y, X)`` -> ``(..., i, j, k)`` as on disk."""
        array_zyx = np.asanyarray(array_zyx)
        if array_zyx.shape[-3:] != self.display_shape:
            raise VolumeError(
                f"Array of shape {array_zyx.shape} does not end with the display shape {self.display_shape}."
            )
        src = orientations.apply_orientation(np.moveaxis(array_zyx, (-1, -2, -3), (0, 1, 2)), self._from_lps)
        return np.ascontiguousarray(np.moveaxis(src, (0, 1, 2), (-3, -2, -1)))

    def source_index_to_display(self, ijk: np.ndarray) -> np.ndarray:
        """Map source voxel indices ``(N, 3)`` ``(i, j, k)`` to display indices ``(N, 3)`` ``(z, y, x)``."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        lps = np.empty_like(ijk)
        for axis, (target, flip) in enumerate(self._to_lps):
            values = ijk[:, axis]
            lps[:, int(target)] = values if flip > 0 else self.source_shape[axis] - 1 - values
        return lps[:, ::-1].copy()

    def display_index_to_source(self, zyx: np.ndarray) -> np.ndarray:
        """Map display indices ``(N, 3)`` ``(z, y, x)`` to source voxel indices ``(N, 3)`` ``(i, j, k)``."""
        lps = np.asarray(zyx, dtype=np.int64).reshape(-1, 3)[:, ::-1]
        ijk = np.empty_like(lps)
        for axis, (target, flip) in enumerate(self._to_lps):
            values = lps[:, int(target)]
            ijk[:, axis] = values if flip > 0 else self.source_shape[axis] - 1 - values
        return ijk

    def placement_on(self, reference: Geometry) -> np.ndarray:
        """(4, 4) affine from this grid's display index ``(z, y, x, 1)`` to ``reference``'s display space in mm
        (its index times its spacing): a napari layer with it overlays a layer of ``reference`` shown with
        ``scale=reference.spacing``, whatever the two grids (scans as the scanner exported them)."""
        scale = np.diag([*reference.spacing, 1.0])
        return scale @ np.linalg.inv(reference.display_affine) @ self.display_affine

    def summary(self) -> str:
        """Short description for messages: display shape and spacing."""
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        return f"{self.display_shape[0]} slices of {self.display_shape[1]} x {self.display_shape[2]}, {spacing} mm"

    def matches(self, other: Geometry, atol: float = GRID_ATOL) -> bool:
        """Whether ``other`` has the same display grid (shape, and affine within ``atol`` mm)."""
        return self.display_shape == other.display_shape and np.allclose(
            self.display_affine, other.display_affine, atol=atol
        )

    def describe(self) -> str:
        """One-line description: source shape, orientation, spacing and affine."""
        return (
            f"shape {self.source_shape} ({''.join(self.source_axcodes)}), spacing (z, y, x) "
            f"{tuple(round(s, 4) for s in self.spacing)} mm, affine {_fmt_affine(self.source_affine)}"
        )

    def __repr__(self) -> str:
        return f"Geometry({self.describe()})"
