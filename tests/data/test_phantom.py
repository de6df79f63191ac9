from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from monai_emma.data.phantom import (
    MODALITIES,
    PHANTOM_LABELS,
    PhantomVolume,
    phantom_labels,
    phantom_lesion,
    phantom_slice_pair,
    phantom_volumes,
    write_phantom_dicom,
    write_phantom_nifti,
)

logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

HEAD = 48.0  # a small head: all four volumes in a few tens of milliseconds


@pytest.mark.parametrize("modality", ["ct", "pet", "spect"])
def test_phantom_pair(modality):
    mri, other = phantom_slice_pair(96, modality, seed=3)
    assert mri.shape == other.shape == (96, 96)
    assert mri.dtype == np.float32 and 0 <= mri.min() and mri.max() <= 1
    assert other.max() > 0.5  # bone (CT) or the hot lesion (PET/SPECT)
    again = phantom_slice_pair(96, modality, seed=3)
    assert np.array_equal(again[0], mri) and np.array_equal(again[1], other)


def test_ct_shows_bone_mri_does_not():
    mri, ct = phantom_slice_pair(128, "ct")
    ring = ct > 0.8
    assert ring.any() and mri[ring].mean() < 0.3


def test_unknown_modality():
    with pytest.raises(ValueError, match="unknown modality"):
        phantom_slice_pair(32, "xray")


# ---------------------------------------------------------------------------------------------------------------------
# 3D phantom
# ---------------------------------------------------------------------------------------------------------------------


def _voxel_of(vol: PhantomVolume, world_xyz) -> tuple[int, int, int]:
    i, j, k = np.rint(np.linalg.inv(vol.affine) @ [*world_xyz, 1.0])[:3].astype(int)
    return int(i), int(j), int(k)


def _labels(vol: PhantomVolume, head_mm: float = HEAD) -> np.ndarray:
    return phantom_labels(vol.shape, vol.affine, head_mm)


def test_volumes_are_deterministic_and_seed_changes_only_the_noise():
    a, b, c = phantom_volumes(3, HEAD), phantom_volumes(3, HEAD), phantom_volumes(4, HEAD)
    assert list(a) == list(MODALITIES)
    for m in MODALITIES:
        assert a[m].modality == m and a[m].array.dtype == np.float32 and a[m].affine.shape == (4, 4)
        assert np.array_equal(a[m].array, b[m].array) and np.array_equal(a[m].affine, b[m].affine)
        assert c[m].shape == a[m].shape and np.array_equal(c[m].affine, a[m].affine)
        assert not np.array_equal(c[m].array, a[m].array)
    # a modality's noise does not depend on which other modalities are rendered
    assert np.array_equal(phantom_volumes(3, HEAD, modalities=("pet",))["pet"].array, a["pet"].array)


def test_each_modality_has_its_own_grid():
    vols = phantom_volumes(0, HEAD)
    affines = [vols[m].affine for m in MODALITIES]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(affines[i][:3, 3], affines[j][:3, 3])  # origins differ
            assert not np.allclose(vols[MODALITIES[i]].spacing, vols[MODALITIES[j]].spacing)
    assert vols["mri"].spacing == pytest.approx((1.0, 1.0, 1.0))
    assert vols["ct"].spacing == pytest.approx((0.9, 0.9, 2.0))
    assert vols["pet"].spacing == pytest.approx((2.5, 2.5, 2.5))
    assert vols["spect"].spacing == pytest.approx((4.0, 4.0, 4.0))
    pet = vols["pet"].affine[:3, :3]
    assert np.abs(pet - np.diag(np.diag(pet))).max() > 0.1  # rotated about S: not diagonal
    for m in ("mri", "ct", "spect"):
        lin = vols[m].affine[:3, :3]
        assert np.allclose(lin, np.diag(np.diag(lin))) and np.all(np.diag(lin) > 0)  # axial RAS grids
    # the PET field of view is larger than the head, the MRI grid just covers it
    pet_extent = np.array(vols["pet"].shape) * np.array(vols["pet"].spacing)
    mri_extent = np.array(vols["mri"].shape) * np.array(vols["mri"].spacing)
    assert np.all(pet_extent > mri_extent) and mri_extent[0] <= HEAD + 3
    # voxel sizes scale with mri_spacing
    fine = phantom_volumes(0, HEAD, ("mri", "pet"), mri_spacing=0.5)
    assert fine["mri"].spacing == pytest.approx((0.5,) * 3) and fine["pet"].spacing == pytest.approx((1.25,) * 3)


def test_mri_spacing_scales_every_modality(tmp_path):
    """mri_spacing is named after the MRI but sets the scale of every grid (the documented ratios: CT 0.9 x 0.9 x 2,
    PET 2.5, SPECT 4); the fields of view stay, so twice the spacing gives about 1/8 of the voxels."""
    ratios = {"mri": (1.0, 1.0, 1.0), "ct": (0.9, 0.9, 2.0), "pet": (2.5, 2.5, 2.5), "spect": (4.0, 4.0, 4.0)}
    base, coarse = phantom_volumes(0, HEAD), phantom_volumes(0, HEAD, mri_spacing=2.0)
    for m in MODALITIES:
        assert base[m].spacing == pytest.approx(ratios[m]), m
        assert coarse[m].spacing == pytest.approx(tuple(2 * r for r in ratios[m])), m
        assert 1 / 10 < coarse[m].array.size / base[m].array.size < 1 / 5, m
    paths = write_phantom_nifti(tmp_path / "nii", head_mm=HEAD, modalities=("ct", "spect"), mri_spacing=2.0)
    assert nib.load(paths["ct"]).header.get_zooms() == pytest.approx((1.8, 1.8, 4.0))
    assert nib.load(paths["spect"]).header.get_zooms() == pytest.approx((8.0, 8.0, 8.0))
    for fn in (write_phantom_nifti, write_phantom_dicom):
        assert "every modality's voxels" in fn.__doc__ and "SPECT ``4``" in fn.__doc__


def test_lesion_geometry_scales_with_the_head():
    (x, y, z), radius = phantom_lesion(180.0)
    assert x > 0 and y > 0 and z > 0 and radius > 0  # right, anterior, superior
    (x2, y2, z2), radius2 = phantom_lesion(HEAD)
    assert np.allclose(np.array([x2, y2, z2, radius2]) * 180.0 / HEAD, [x, y, z, radius])
    mri = phantom_volumes(0, HEAD, ("mri",))["mri"]
    assert _labels(mri)[_voxel_of(mri, (x2, y2, z2))] == PHANTOM_LABELS["lesion"]


@pytest.mark.parametrize("seed", [0, 1])
def test_lesion_lands_in_the_right_voxels(seed):
    # at mri_spacing=0.5 the small head is imaged at the relative resolution of an adult head at ~2 mm, so the
    # lesion stands out clearly even in the blurred SPECT
    centre, _ = phantom_lesion(HEAD)
    vols = phantom_volumes(seed, HEAD, mri_spacing=0.5)
    for m, vol in vols.items():
        wm = vol.array[_labels(vol) == PHANTOM_LABELS["white_matter"]].mean()
        i, j, k = _voxel_of(vol, centre)
        assert vol.array[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2].mean() > wm, m
        assert vol.array[i, j, k] > wm, m

    pet = vols["pet"]
    wm = pet.array[_labels(pet) == PHANTOM_LABELS["white_matter"]].mean()
    peak = np.unravel_index(np.argmax(pet.array), pet.shape)
    hot, _ = ndimage.label(pet.array > 0.5 * (pet.array.max() + wm))
    spot = hot == hot[peak]
    centroid = np.array(ndimage.center_of_mass(pet.array * spot))
    world = (pet.affine @ [*centroid, 1.0])[:3]
    assert np.linalg.norm(world - np.array(centre)) < pet.spacing[0]


def test_value_ranges():
    vols = phantom_volumes(2, HEAD)
    ct, ct_labels = vols["ct"].array, _labels(vols["ct"])
    assert (ct_labels == PHANTOM_LABELS["skull"]).sum() > 100
    assert ct[ct_labels == PHANTOM_LABELS["skull"]].min() > 700
    assert ct[ct_labels == PHANTOM_LABELS["background"]].max() < -900
    assert np.array_equal(ct, np.rint(ct))  # integer HU
    for m in ("mri", "pet", "spect"):
        assert vols[m].array.min() >= 0, m
    assert vols["pet"].array[0, 0, 0] == 0 and vols["spect"].array[0, 0, 0] == 0  # no activity outside the head


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown modality"):
        phantom_volumes(modalities=("mri", "xray"))
    with pytest.raises(ValueError, match="positive"):
        phantom_volumes(head_mm=0)


def test_nifti_round_trip(tmp_path):
    paths = write_phantom_nifti(tmp_path / "nii", seed=5, head_mm=HEAD)
    vols = phantom_volumes(5, HEAD)
    assert {m: p.name for m, p in paths.items()} == {m: f"{m}.nii.gz" for m in MODALITIES}
    for m, path in paths.items():
        img = nib.load(path)
        assert img.get_data_dtype() == np.float32
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        assert np.array_equal(np.asarray(img.dataobj), vols[m].array)
        assert np.allclose(img.affine, vols[m].affine, atol=1e-4)  # the header stores float32
        assert np.allclose(img.get_qform(), vols[m].affine, atol=1e-4)


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory) -> tuple[dict[str, Path], dict[str, PhantomVolume]]:
    folders = write_phantom_dicom(tmp_path_factory.mktemp("dicom"), seed=7, head_mm=HEAD)
    return folders, phantom_volumes(7, HEAD)


def _stored(vol) -> np.ndarray:
    """The values the DICOM series holds: PET as Bq/ml of its body-weight SUV study."""
    from monai_emma.data.phantom import _bqml_per_suv

    return vol.array * _bqml_per_suv() if vol.modality == "pet" else vol.array


def _slope(folder: Path) -> float:
    return float(pydicom.dcmread(folder / "0001.dcm", stop_before_pixels=True).RescaleSlope)


@pytest.mark.parametrize("modality", MODALITIES)
def test_dicom_round_trip_through_monai(dicom_series, modality):
    folders, vols = dicom_series
    vol = vols[modality]
    img = LoadImage(reader="PydicomReader", image_only=True)(folders[modality])
    assert tuple(img.shape) == vol.shape
    assert np.allclose(img.affine.numpy(), vol.affine, atol=1e-3)
    tolerance = 0.51 * _slope(folders[modality]) + 1e-6 * float(np.abs(_stored(vol)).max())
    assert np.abs(img.numpy() - _stored(vol)).max() <= tolerance
    lesion = _voxel_of(vol, phantom_lesion(HEAD)[0])  # the same voxel index in both
    assert img[lesion] == pytest.approx(float(_stored(vol)[lesion]), abs=tolerance)


@pytest.mark.parametrize("modality", MODALITIES)
def test_dicom_geometry_by_the_dicom_definition(dicom_series, modality):
    # independent of MONAI: pixel (r, c) of the slice with InstanceNumber n lies at IPP + c dc rowcos + r dr colcos
    folders, vols = dicom_series
    vol = vols[modality]
    files = sorted(folders[modality].iterdir())
    assert [f.name for f in files] == [f"{n:04d}.dcm" for n in range(1, vol.shape[2] + 1)]
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    assert [int(d.InstanceNumber) for d in datasets] == list(range(1, vol.shape[2] + 1))
    ras_from_lps = np.diag([-1.0, -1.0, 1.0])
    tolerance = 0.51 * _slope(folders[modality]) + 1e-6 * float(np.abs(_stored(vol)).max())
    along_normal = []
    for k in (0, vol.shape[2] // 2, vol.shape[2] - 1):
        ds = datasets[k]
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        row_cos, col_cos = iop[:3], iop[3:]
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        assert (ds.Rows, ds.Columns) == (vol.shape[1], vol.shape[0])
        for r, c in ((0, 0), (0, 3), (5, 0), (ds.Rows - 1, ds.Columns - 2)):
            world_ras = ras_from_lps @ (ipp + c * dc * row_cos + r * dr * col_cos)
            assert np.allclose(world_ras, (vol.affine @ [c, r, k, 1.0])[:3], atol=1e-3)
        values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(values - _stored(vol)[:, :, k].T).max() <= tolerance
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        along_normal.append(float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:])))
    assert np.all(np.diff(along_normal) > 0)  # InstanceNumber increases along the normal
    assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(vol.spacing[2])


def test_dicom_tags_and_uids(dicom_series, tmp_path):
    folders, _ = dicom_series
    expected = {
        "mri": ("MR", "1.2.840.10008.5.1.4.1.1.4", 0),
        "ct": ("CT", "1.2.840.10008.5.1.4.1.1.2", 1),
        "pet": ("PT", "1.2.840.10008.5.1.4.1.1.128", 0),
        "spect": ("NM", "1.2.840.10008.5.1.4.1.1.20", 0),
    }
    first = {m: pydicom.dcmread(folders[m] / "0001.dcm") for m in MODALITIES}
    for m, ds in first.items():
        modality, sop_class, signed = expected[m]
        assert (folders[m] / "0001.dcm").read_bytes()[128:132] == b"DICM"  # preamble + prefix
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == sop_class
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == modality and ds.PixelRepresentation == signed
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel) == (16, 16, 15, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert str(ds.PatientName) == "EMMA^Phantom" and ds.Manufacturer == "monai-emma phantom"
        assert ds.SeriesDescription.startswith("EMMA phantom")
        assert float(ds.SliceThickness) > 0 and ds.StudyDate and ds.WindowWidth
    assert len({ds.StudyInstanceUID for ds in first.values()}) == 1
    assert len({ds.FrameOfReferenceUID for ds in first.values()}) == 1
    assert len({ds.SeriesInstanceUID for ds in first.values()}) == 4
    assert len({int(ds.SeriesNumber) for ds in first.values()}) == 4
    sop = {m: {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in folders[m].iterdir()} for m in first}
    assert sum(len(s) for s in sop.values()) == len(set().union(*sop.values()))  # all instance UIDs distinct

    # UIDs are deterministic from the seed, also when only some modalities are written
    again = write_phantom_dicom(tmp_path / "again", seed=7, head_mm=HEAD, modalities=("spect",))
    ds = pydicom.dcmread(again["spect"] / "0001.dcm", stop_before_pixels=True)
    assert ds.StudyInstanceUID == first["spect"].StudyInstanceUID
    assert (
        ds.SeriesInstanceUID == first["spect"].SeriesInstanceUID and ds.SOPInstanceUID == first["spect"].SOPInstanceUID
    )
    other = write_phantom_dicom(tmp_path / "other", seed=8, head_mm=HEAD, modalities=("spect",))
    assert pydicom.dcmread(other["spect"] / "0001.dcm").StudyInstanceUID != ds.StudyInstanceUID


def test_emission_blur_matches_scipy_and_the_base_install_needs_no_scipy(monkeypatch):
    """The PET/SPECT point-spread blur is scipy's Gaussian filter (zeros outside), written in numpy so
    that ``pip install monai-emma`` (no scipy) can make the embedded sample."""
    import sys

    from monai_emma.data.phantom import _gaussian_blur

    x = np.random.default_rng(0).random((30, 24, 20)).astype(np.float32)
    for sigmas in ([2.1, 3.3, 1.2], [0.6, 0.6, 0.6]):
        ref = ndimage.gaussian_filter(x, sigmas, mode="constant")
        np.testing.assert_allclose(_gaussian_blur(x, sigmas), ref, atol=1e-6)
    monkeypatch.setitem(sys.modules, "scipy", None)  # any scipy import now fails
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    vols = phantom_volumes(modalities=("pet", "spect"), mri_spacing=6.0)
    assert all(np.isfinite(v.array).all() and v.array.max() > 0 for v in vols.values())
