"""Geometry for volume fusion: field-of-view coverage, and the display orientation.

Volumes are ``(X, Y, Z)`` arrays with 4×4 voxel-to-RAS+ affines (MONAI's and NIfTI's
convention). Fusion runs on axial slices in *display orientation* (radiological: anterior at the
top, the patient's right on the image's left, the way the 2D training slices look): MONAI's
``Orientation`` with axis codes ``"PLS"`` puts any volume there exactly (axis permutations and
flips only) and ``Invertd`` brings results back; resampling is MONAI's ``ResampleToMatch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["DISPLAY_AXCODES", "coverage_mask", "to_display"]

#: MONAI ``Orientation`` codes of the display orientation: rows anterior -> posterior, columns the
#: patient's right -> left, slices inferior -> superior
DISPLAY_AXCODES = "PLS"


def coverage_mask(
    shape: Sequence[int],
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Which voxels of the target grid lie inside the field of view of a (shape, affine) grid.

    A voxel counts when its centre falls within the source grid's outer voxel boundaries and, with
    ``valid`` (a boolean array on the source grid, e.g. its finite voxels), when the nearest source
    voxel is valid.

    Returns:
        bool (X', Y', Z').
    """
    to_src = np.linalg.inv(affine) @ target_affine
    axes = [np.arange(n, dtype=np.float64) for n in target_shape]
    inside = np.ones(tuple(target_shape), bool)
    nearest = []
    for a in range(3):
        idx = (
            to_src[a, 0] * axes[0][:, None, None]
            + to_src[a, 1] * axes[1][None, :, None]
            + to_src[a, 2] * axes[2][None, None, :]
            + to_src[a, 3]
        )
        inside &= (idx >= -0.5) & (idx <= shape[a] - 0.5)
        if valid is not None:
            nearest.append(np.clip(np.round(idx), 0, shape[a] - 1).astype(np.intp))
    if valid is not None:
        inside &= np.asarray(valid, bool)[tuple(nearest)]
    return inside


def to_display(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A volume (X, Y, Z) or (X, Y, Z, C) in display orientation (rows, columns, slices[, C]), by
    MONAI's ``Orientation``.

    Example:
        >>> to_display(np.arange(8.0).reshape(2, 2, 2), np.eye(4))[:, :, 0]  # RAS: flip x and y, swap
        array([[6., 2.],
               [4., 0.]])
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    arr = np.asarray(array)
    channels = arr.reshape(*arr.shape[:3], -1)
    img = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(np.moveaxis(channels, -1, 0))), affine=torch.as_tensor(affine)
    )
    out = Orientation(axcodes=DISPLAY_AXCODES, labels=None)(img)
    out = np.moveaxis(np.asarray(out.detach().cpu().numpy()), 0, -1)
    return out.reshape(*out.shape[:3], *arr.shape[3:])
