"""Compressed DICOM as PACS exports it: JPEG (baseline, lossless process 14 and SV1), JPEG-LS,
JPEG 2000 and RLE decode through pydicom's GDCM plugin; lossless syntaxes give the uncompressed
values exactly. The series are encoded here with GDCM from an uncompressed phantom series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from monai_emma.data.phantom import write_phantom_dicom
from monai_emma.fusion import fuse_volumes
from monai_emma.io.volumes import VolumeReadError, read_volume
from tests.conftest import PickChannel

gdcm = pytest.importorskip("gdcm")

LOSSLESS = {
    "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14",
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
    "1.2.840.10008.1.2.4.90": "JPEG2000Lossless",
    "1.2.840.10008.1.2.5": "RLELossless",
}


def _encode(src: Path, dst: Path, syntax: str) -> None:
    """GDCM compresses the pixel data; the other elements stay the source file's (GDCM's writer
    would turn the slice into an enhanced object without per-slice geometry)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst
    packed = pydicom.dcmread(dst)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = packed.file_meta.TransferSyntaxUID
    ds.PixelData = packed.PixelData
    ds["PixelData"].VR = "OB"
    for tag in ("PhotometricInterpretation", "PlanarConfiguration"):
        if tag in packed:
            setattr(ds, tag, packed[tag].value)
    ds.save_as(dst, enforce_file_format=True)


def _encode_series(src: Path, dst: Path, syntax: str) -> Path:
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        _encode(f, dst / f.name, syntax)
    return dst


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    return write_phantom_dicom(root, head_mm=40.0, modalities=("mri",), mri_spacing=2.0)["mri"]


@pytest.mark.parametrize("uid,syntax", list(LOSSLESS.items()))
def test_lossless_syntaxes_equal_the_uncompressed_read(uid, syntax, mr_series, tmp_path):
    series = _encode_series(mr_series, tmp_path / syntax, syntax)
    assert str(pydicom.dcmread(next(series.iterdir())).file_meta.TransferSyntaxUID) == uid
    plain, packed = read_volume(mr_series), read_volume(series)
    np.testing.assert_array_equal(packed.array, plain.array)
    np.testing.assert_allclose(packed.affine, plain.affine)
    res = fuse_volumes(series, mr_series, model=PickChannel(0), modality="pet")  # fuses like any series
    assert res.fused.shape == plain.array.shape


def test_jpeg_baseline_8bit_is_close(mr_series, tmp_path):
    eight = tmp_path / "eight"
    eight.mkdir()
    for f in sorted(mr_series.iterdir()):
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.astype(np.float64)
        ds.PixelData = np.clip(px / max(px.max(), 1) * 255, 0, 255).astype(np.uint8).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.save_as(eight / f.name)
    series = _encode_series(eight, tmp_path / "baseline", "JPEGBaselineProcess1")
    assert str(pydicom.dcmread(next(series.iterdir())).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"
    plain, packed = read_volume(eight), read_volume(series)
    scale = float(np.ptp(plain.array))
    assert packed.array.shape == plain.array.shape
    assert np.abs(packed.array - plain.array).mean() < 0.02 * scale  # lossy, but close


def test_12bit_jpeg_extended_names_the_missing_decoder(tmp_path):
    try:
        import libjpeg  # noqa: F401  (pylibjpeg-libjpeg)

        pytest.skip("pylibjpeg-libjpeg is installed: 12-bit JPEG Extended decodes")
    except ImportError:
        pass
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))  # pydicom's 12-bit JPEG Extended sample
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [1, 1], 1, 1
    path = tmp_path / "jpg12.dcm"
    ds.save_as(path)
    with pytest.raises(VolumeReadError, match="jpg12.dcm: 12-bit JPEG Extended .* pip install pylibjpeg"):
        read_volume(path)
