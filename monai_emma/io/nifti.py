"""Writing fused volumes as NIfTI on the anatomical input's grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_emma.io.atomic import atomic_path
from monai_emma.io.volumes import Volume

__all__ = ["save_nifti_like", "RGB_DTYPE"]

#: nibabel's structured dtype for NIFTI_TYPE_RGB24 (opened as a colour volume by 3D Slicer and ITK-SNAP).
RGB_DTYPE = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def _header_like(reference: Volume):
    """A NIfTI-1 header with the reference's geometry (its own header for NIfTI inputs)."""
    import nibabel as nib

    if reference.kind == "nifti":
        img = nib.load(str(reference.path))
        if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            header = nib.Nifti1Header.from_header(img.header)
            sform, scode = img.get_sform(coded=True)
            qform, qcode = img.get_qform(coded=True)
            return header, (sform, int(scode or 0)), (qform, int(qcode or 0))
    return nib.Nifti1Header(), (reference.affine, 1), (reference.affine, 1)


def save_nifti_like(
    array: np.ndarray, reference: Volume, path: str | os.PathLike, overwrite: bool = False, description: str = ""
) -> Path:
    """Save a volume on the reference's grid: same shape, affine (sform and qform with their codes)
    and voxel sizes; float32 for scalar data, RGB24 for ``(X, Y, Z, 3)`` uint8 colour.

    Args:
        array: (X, Y, Z) float data or (X, Y, Z, 3) uint8 RGB, in the reference's voxel order.
        reference: the anatomical input (NIfTI or DICOM).
        path: ``.nii`` or ``.nii.gz`` target, written atomically.
        overwrite: replace an existing file.
        description: stored in the header's ``descrip`` (80 characters at most).

    Raises:
        FileExistsError: the target exists and ``overwrite`` is false.
        ValueError: the array does not fit the reference grid.
    """
    import nibabel as nib

    shape = tuple(reference.array.shape)
    rgb = array.ndim == 4 and array.shape[-1] == 3
    if tuple(array.shape[:3]) != shape or array.ndim != (4 if rgb else 3):
        raise ValueError(f"array of shape {array.shape} does not fit the reference grid {shape}")
    header, (sform, scode), (qform, qcode) = _header_like(reference)
    if rgb:
        data = np.ascontiguousarray(array.astype(np.uint8)).view(RGB_DTYPE).reshape(shape)
    else:
        data = np.asarray(array, np.float32)
    img = nib.Nifti1Image(data, None, header=header)
    img.set_data_dtype(RGB_DTYPE if rgb else np.float32)
    img.header.set_slope_inter(None, None)
    img.set_sform(sform if sform is not None else reference.affine, scode or 1)
    img.set_qform(qform if qform is not None else reference.affine, qcode or (0 if scode else 1))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    if not rgb:
        img.header["cal_min"], img.header["cal_max"] = 0.0, 1.0
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
