"""Display arrays <-> SimpleITK images, with the geometry the rest of the product uses.

Files are never read with SimpleITK: every image comes from :mod:`napari_medadapt.core.volume` (one reading of
the header, the damaged-header checks, the LPS display order), and is handed to SimpleITK with the physical
placement of its :class:`~napari_medadapt.core.geometry.Geometry`. SimpleITK works in LPS millimetres; the
geometry's ``display_affine`` maps display indices ``(z, y, x)`` to RAS millimetres, so the first two world axes
change sign. A SimpleITK index ``(i, j, k)`` is the display index ``(x, y, z)`` (numpy's last axis first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..geometry import Geometry

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_sitk(array_zyx: np.ndarray, geometry: Geometry) -> Any:
    """A SimpleITK image of a display array ``(Z, Y, X)`` placed as ``geometry`` places it."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    columns = _RAS_TO_LPS @ np.asarray(geometry.display_affine[:3, :3])[:, ::-1]  # sitk axes: x, y, z
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (columns / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ np.asarray(geometry.display_affine[:3, 3])))
    return image


def from_sitk(image: Any) -> np.ndarray:
    """The display array ``(Z, Y, X)`` of an image made by :func:`to_sitk` (or resampled onto one)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def grid_of(geometry: Geometry) -> Any:
    """An empty float32 SimpleITK image on ``geometry``'s grid (a resampling target)."""
    return to_sitk(np.zeros(geometry.display_shape, dtype=np.float32), geometry)
