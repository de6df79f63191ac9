import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from monai_emma.io.volumes import VolumeReadError, input_kind, list_dicom_series, read_volume


def test_nifti_matches_nibabel(phantom_volume_files):
    path = phantom_volume_files["nifti"]["pet"]
    vol = read_volume(path)
    ref = nib.load(str(path))
    assert vol.kind == "nifti" and vol.is_3d
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(vol.array, ref.get_fdata(), atol=1e-5)
    assert vol.spacing == pytest.approx((2.5, 2.5, 2.5), abs=1e-4)


def test_dicom_series_matches_nifti(phantom_volume_files):
    nii = read_volume(phantom_volume_files["nifti"]["ct"])
    dcm = read_volume(phantom_volume_files["dicom"]["ct"])
    assert dcm.kind == "dicom" and dcm.modality == "CT" and dcm.series_uid
    assert len(dcm.files) == dcm.array.shape[2]
    np.testing.assert_allclose(dcm.affine, nii.affine, atol=1e-4)
    np.testing.assert_allclose(dcm.array, nii.array, atol=0.5)


def test_several_series_need_a_choice(phantom_volume_files, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for mod in ("mri", "pet"):
        for f in sorted(phantom_volume_files["dicom"][mod].iterdir()):
            shutil.copy(f, mixed / f"{mod}_{f.name}")
    series = list_dicom_series(mixed)
    assert len(series) == 2
    with pytest.raises(VolumeReadError, match="2 DICOM series here, choose one with --series-uid") as err:
        read_volume(mixed)
    assert all(uid in str(err.value) for uid in series)
    pet_uid = next(u for u, s in series.items() if s.modality == "PT")
    vol = read_volume(mixed, pet_uid)
    assert vol.modality == "PT"
    np.testing.assert_allclose(vol.affine, read_volume(phantom_volume_files["nifti"]["pet"]).affine, atol=1e-4)
    # several candidate UIDs (the CLI's repeated --series-uid): the one present is used
    assert read_volume(mixed, ["1.2.3", pet_uid]).modality == "PT"
    with pytest.raises(VolumeReadError, match="no series 1.2.3"):
        read_volume(mixed, "1.2.3")


@pytest.mark.parametrize(
    "name,shape,modality", [("CT_small.dcm", (128, 128, 1), "CT"), ("MR_small.dcm", (64, 64, 1), "MR")]
)
def test_pydicom_real_single_slices(name, shape, modality):
    path = get_testdata_file(name)
    vol = read_volume(path)
    ds = pydicom.dcmread(path)
    assert vol.array.shape == shape and vol.modality == modality
    # the slice axis gets the slice thickness along the normal (RAS)
    assert np.linalg.norm(vol.affine[:3, 2]) == pytest.approx(float(ds.SliceThickness))
    # pixel (0, 0) sits at ImagePositionPatient (LPS -> RAS)
    ipp = np.asarray(ds.ImagePositionPatient, float) * [-1, -1, 1]
    np.testing.assert_allclose(vol.affine[:3, 3], ipp, atol=1e-3)


def test_bad_inputs_name_the_file(tmp_path, phantom_volume_files):
    with pytest.raises(VolumeReadError, match="missing.nii.gz: no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(VolumeReadError, match="empty.nii.gz: empty file"):
        read_volume(empty)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not really gzip" * 20)
    with pytest.raises(VolumeReadError, match="corrupt.nii.gz: not a readable NIfTI file") as err:
        read_volume(corrupt)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    bad_dcm = tmp_path / "bad.dcm"
    bad_dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)
    with pytest.raises(VolumeReadError, match="bad.dcm"):
        read_volume(bad_dcm)
    with pytest.raises(VolumeReadError, match="unknown input format"):
        (tmp_path / "x.xyz").write_text("?")
        read_volume(tmp_path / "x.xyz")
    nan = tmp_path / "nan.nii.gz"
    data = np.full((4, 4, 4), np.nan, np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    with pytest.raises(VolumeReadError, match="nan.nii.gz: no finite voxel"):
        read_volume(nan)
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(VolumeReadError, match="4d.nii.gz: expected a 3D volume"):
        read_volume(four_d)
    no_dicom = tmp_path / "folder"
    no_dicom.mkdir()
    (no_dicom / "readme.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="no DICOM files"):
        read_volume(no_dicom)


def test_series_with_a_missing_slice_is_refused(phantom_volume_files, tmp_path):
    series = tmp_path / "gap"
    shutil.copytree(phantom_volume_files["dicom"]["mri"], series)
    files = sorted(series.iterdir())
    files[len(files) // 2].unlink()
    with pytest.raises(VolumeReadError, match="unevenly spaced slices"):
        read_volume(series)


def test_input_kind(tmp_path):
    assert input_kind(tmp_path) == "dicom"
    assert input_kind("a.NII.GZ") == "nifti" and input_kind("b.png") == "image2d"
