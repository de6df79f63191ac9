"""Geometry for volume fusion: resampling onto the anatomical grid and a display orientation.

Volumes are ``(X, Y, Z)`` arrays with 4×4 voxel-to-RAS+ affines (MONAI's and NIfTI's
convention). Fusion runs on axial slices in *display orientation* (radiological: anterior at the
top, the patient's right on the image's left, the way the 2D training slices look), whatever the
order in which the file stores its axes; :class:`DisplayOrientation` converts there and back
exactly (axis permutations and flips only, no interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["resample_to_grid", "coverage_mask", "DisplayOrientation"]


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    mode: str = "bilinear",
) -> np.ndarray:
    """Resample a volume onto another grid with MONAI's ``ResampleToMatch`` (zeros outside).

    Args:
        array: (X, Y, Z) values.
        affine: its voxel-to-world affine.
        shape: the target grid's (X', Y', Z').
        target_affine: the target grid's affine.
        mode: interpolation, ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.

    Returns:
        float32 (X', Y', Z').

    Example:
        >>> vol = np.ones((4, 4, 4), np.float32)
        >>> resample_to_grid(vol, np.eye(4), (2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0])).shape
        (2, 2, 2)
    """
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, np.float32))[None], affine=torch.as_tensor(affine))
    dst = MetaTensor(torch.empty((1, *shape), dtype=torch.float32), affine=torch.as_tensor(target_affine))
    out = ResampleToMatch(mode=mode, padding_mode="zeros", dtype=torch.float32)(src, dst)
    return np.asarray(out.detach().cpu().numpy()[0], np.float32)


def coverage_mask(
    shape: Sequence[int], affine: np.ndarray, target_shape: Sequence[int], target_affine: np.ndarray
) -> np.ndarray:
    """Which voxels of the target grid lie inside the field of view of a (shape, affine) grid.

    A voxel counts when its centre falls within the source grid's outer voxel boundaries.

    Returns:
        bool (X', Y', Z').
    """
    to_src = np.linalg.inv(affine) @ target_affine
    axes = [np.arange(n, dtype=np.float64) for n in target_shape]
    inside = np.ones(tuple(target_shape), bool)
    for a in range(3):
        idx = (
            to_src[a, 0] * axes[0][:, None, None]
            + to_src[a, 1] * axes[1][None, :, None]
            + to_src[a, 2] * axes[2][None, None, :]
            + to_src[a, 3]
        )
        inside &= (idx >= -0.5) & (idx <= shape[a] - 0.5)
    return inside


class DisplayOrientation:
    """Exact reorientation between a volume's stored axes and a display stack.

    The display stack is ``(rows, columns, slices)``: axial slices, anterior at row 0, the
    patient's right in column 0, inferior to superior along the slices.

    Args:
        affine: the volume's voxel-to-RAS+ affine (the nearest axis-aligned orientation is used).

    Example:
        >>> orient = DisplayOrientation(np.diag([-1.0, 1.0, 2.0, 1.0]))
        >>> vol = np.arange(24.0).reshape(2, 3, 4)
        >>> np.array_equal(orient.from_display(orient.to_display(vol)), vol)
        True
    """

    def __init__(self, affine: np.ndarray) -> None:
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        self.ornt = io_orientation(np.asarray(affine, np.float64))
        self.back = ornt_transform(axcodes2ornt(("R", "A", "S")), self.ornt)

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """(X, Y, Z) stored order → (rows, columns, slices)."""
        from nibabel.orientations import apply_orientation

        ras = apply_orientation(array, self.ornt)
        return np.ascontiguousarray(ras[::-1, ::-1, :].transpose(1, 0, 2))

    def from_display(self, stack: np.ndarray) -> np.ndarray:
        """(rows, columns, slices) → the stored (X, Y, Z) order."""
        from nibabel.orientations import apply_orientation

        ras = stack.transpose(1, 0, 2)[::-1, ::-1, :]
        return np.ascontiguousarray(apply_orientation(ras, self.back))
