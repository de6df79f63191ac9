"""Writing a fused volume as a DICOM series derived from the anatomical series.

Each output file is a copy of one anatomical slice's header with the fused pixels: same geometry
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, slice order), same Study and Frame
of Reference, a new Series and new SOP Instance UIDs, ``ImageType`` DERIVED\\SECONDARY, a
derivation description and a reference to the source image. Pixels are 16-bit unsigned with
``RescaleSlope`` = 1/4095, so the real-world value is the fused intensity in [0, 1].

Which fused voxel belongs to which file pixel is computed from the geometry itself (each pixel's
patient position mapped through the volume's affine), so it does not depend on the reader's axis
or slice order.
"""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import numpy as np

from monai_emma.io.atomic import atomic_dir
from monai_emma.io.volumes import LPS_TO_RAS, PydicomWarnings, Volume

__all__ = ["write_derived_series", "slice_voxel_indices", "DICOM_LEVELS"]

#: Stored values run 0…DICOM_LEVELS; RescaleSlope = 1 / DICOM_LEVELS.
DICOM_LEVELS = 4095

# Attributes of the source that would describe the source pixels, not ours.
_DROP = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "WindowCenterWidthExplanation",
    "VOILUTSequence",
    "ModalityLUTSequence",
    "IconImageSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "PlanarConfiguration",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "NumberOfFrames",
    "DerivationCodeSequence",
    "SourceImageSequence",
)


def slice_voxel_indices(ds, affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Voxel indices (into a volume with ``affine``) of every pixel of one DICOM slice.

    Returns:
        Three integer arrays of shape (Rows, Columns), usable as ``volume[i, j, k]``.

    Raises:
        ValueError: the slice's pixels do not land on voxel centres of the volume.
    """
    iop = np.asarray(ds.ImageOrientationPatient, np.float64)
    ipp = np.asarray(ds.ImagePositionPatient, np.float64)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    rows, cols = int(ds.Rows), int(ds.Columns)
    to_index = np.linalg.inv(affine) @ LPS_TO_RAS
    origin = to_index @ np.append(ipp, 1.0)
    step_c = to_index[:, :3] @ (iop[:3] * dc)  # one column to the right
    step_r = to_index[:, :3] @ (iop[3:] * dr)  # one row down
    r, c = np.mgrid[0:rows, 0:cols]
    idx = origin[:3, None, None] + step_c[:3, None, None] * c + step_r[:3, None, None] * r
    rounded = np.round(idx)
    if np.abs(idx - rounded).max() > 1e-2:
        raise ValueError("slice pixels do not fall on voxel centres of the volume")
    out = rounded.astype(np.int64)
    for a in range(3):
        if out[a].min() < 0 or out[a].max() >= shape[a]:
            raise ValueError("slice lies outside the volume")
    return out[0], out[1], out[2]


def write_derived_series(
    fused: np.ndarray,
    anatomical: Volume,
    out_dir: str | os.PathLike,
    description: str,
    series_description: str = "EMMA fusion",
    overwrite: bool = False,
    source_uids: tuple[str, ...] = (),
) -> Path:
    """Write ``fused`` (on the anatomical grid, values in [0, 1]) as a derived DICOM series.

    Args:
        fused: (X, Y, Z) in the anatomical volume's voxel order.
        anatomical: the anatomical input; must come from DICOM.
        out_dir: the series folder to create (written to a temporary folder, renamed at the end).
        description: ``DerivationDescription`` (method and modalities).
        series_description: ``SeriesDescription``.
        overwrite: replace an existing folder.
        source_uids: Series Instance UIDs of all source series, recorded in the derivation text.

    pydicom's complaints about the copied headers (e.g. an over-long InstitutionName, one per file)
    are not shown one by one: when the anatomical volume's notes do not already sum them up (as
    :func:`~monai_emma.io.volumes.read_volume` does), one ``UserWarning`` counts them.

    Returns:
        The series folder.

    Raises:
        ValueError: the anatomical input is not DICOM or the array does not fit its grid.
        FileExistsError: the folder exists and ``overwrite`` is false.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if anatomical.kind != "dicom" or not anatomical.files:
        raise ValueError(f"{anatomical.path}: DICOM output needs a DICOM anatomical series")
    if tuple(fused.shape) != tuple(anatomical.array.shape):
        raise ValueError(f"fused shape {fused.shape} does not match the anatomical grid {anatomical.array.shape}")
    stored = np.clip(np.round(np.asarray(fused, np.float64) * DICOM_LEVELS), 0, DICOM_LEVELS).astype(np.uint16)
    series_uid = generate_uid()
    now = datetime.datetime.now()
    text = description if not source_uids else f"{description}; sources {', '.join(source_uids)}"
    collected = PydicomWarnings()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, collected.collect():
        for n, path in enumerate(anatomical.files, start=1):
            ds = pydicom.dcmread(path)
            pixels = stored[slice_voxel_indices(ds, anatomical.affine, stored.shape)]
            source_class, source_instance = ds.SOPClassUID, ds.SOPInstanceUID
            for keyword in _DROP:
                if keyword in ds:
                    delattr(ds, keyword)
            new_uid = generate_uid()
            ds.SOPInstanceUID = new_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = int(ds.get("SeriesNumber", 0) or 0) + 1000
            ds.SeriesDescription = series_description[:64]
            ds.ImageType = ["DERIVED", "SECONDARY", "FUSION"]
            ds.DerivationDescription = text[:1024]
            ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.Rows, ds.Columns = pixels.shape
            ds.RescaleSlope = f"{1.0 / DICOM_LEVELS:.10g}"
            ds.RescaleIntercept = "0"
            ds.RescaleType = "US"
            ds.WindowCenter, ds.WindowWidth = "0.5", "1"
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source_class, source_instance
            ds.SourceImageSequence = pydicom.Sequence([ref])
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            ds["PixelData"].VR = "OW"
            ds.file_meta.MediaStorageSOPInstanceUID = new_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(tmp / f"{n:04d}.dcm", enforce_file_format=True)
    note = collected.note(anatomical.path, doing="copying the headers of", done="copied")
    if note and not any(line.startswith("pydicom:") for line in anatomical.notes):
        warnings.warn(note, UserWarning, stacklevel=2)
    return Path(out_dir)
