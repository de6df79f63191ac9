"""Every 3D format nibabel reads (and NRRD), with its affine honoured, and NaN as "no data"."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_emma.fusion import fuse_volumes
from monai_emma.io.volumes import VolumeReadError, read_volume
from tests.conftest import PickChannel

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _head(shape=(12, 14, 10)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return np.where(x**2 + y**2 + z**2 < 0.8, 100.0 + 50.0 * x, 0.0).astype(np.float32)


def _affine() -> np.ndarray:
    aff = np.diag([1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = [-9.0, -14.0, -12.0]
    return aff


def _write(kind: str, folder: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    if kind == "analyze":  # SPM2 Analyze keeps the affine in a .mat beside .hdr/.img; a 4th singleton axis
        path = folder / "mri.hdr"
        nib.Spm2AnalyzeImage(array[..., None], affine).to_filename(str(path))
    elif kind == "mgz":
        path = folder / "mri.mgz"
        nib.MGHImage(array, affine).to_filename(str(path))
    elif kind == "nifti2":
        path = folder / "mri.nii"
        nib.Nifti2Image(array, affine).to_filename(str(path))
    elif kind == "nrrd":
        import nrrd

        path = folder / "mri.nrrd"
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]  # NRRD's space is LPS
        origin = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]
        header = {"space": "left-posterior-superior", "space directions": lps.T, "space origin": origin}
        nrrd.write(str(path), array, header)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["analyze", "mgz", "nifti2", "nrrd"])
def test_written_formats_fuse_on_their_own_grid(kind, tmp_path):
    array, affine = _head(), _affine()
    mri = _write(kind, tmp_path, array, affine)
    pet = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(array, 1, 0), affine), str(pet))
    vol = read_volume(mri)
    assert vol.array.shape == array.shape and vol.kind in ("analyze", "mgh", "nifti", "nrrd")
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)  # the affine the file states
    np.testing.assert_allclose(vol.array, array, atol=1e-4)
    res = fuse_volumes(mri, pet, model=PickChannel(0), modality="pet")
    assert res.fused.shape == array.shape
    np.testing.assert_allclose(res.anatomical.affine, affine, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny.mnc", "minc1_1_scale.mnc", "tinypet.v"])
def test_read_only_formats_from_nibabels_own_files(name):
    path = NIBABEL_DATA / name
    vol = read_volume(path)
    ref = nib.ecat.load(str(path)) if name.endswith(".v") else nib.load(str(path))
    assert vol.array.ndim == 3  # ECAT's trailing frame axis of one is squeezed
    np.testing.assert_allclose(vol.affine, ref.affine)
    res = fuse_volumes(path, path, model=PickChannel(1), modality="pet")
    assert res.fused.shape == vol.array.shape and np.isfinite(res.fused).all()


def test_4d_and_minc2_without_h5py_are_refused_in_one_line():
    with pytest.raises(VolumeReadError, match="4D series are not fused"):
        read_volume(NIBABEL_DATA / "minc1_4d.mnc")
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(VolumeReadError, match="needs h5py: pip install h5py"):
            read_volume(NIBABEL_DATA / "small.mnc")


def test_nan_outside_the_field_of_view_is_no_data(tmp_path):
    array, affine = _head(), _affine()
    mri, pet = tmp_path / "mri.nii.gz", tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(mri))
    resampled = np.roll(array, 2, 1)
    resampled[:3] = np.nan  # what a neuroimaging resampler writes outside its field of view
    resampled[-1, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(resampled, affine), str(pet))
    res = fuse_volumes(mri, pet, model=PickChannel(1), modality="pet")
    nonfinite = 3 * array.shape[1] * array.shape[2] + 1
    assert res.other.nonfinite == nonfinite
    assert any(f"{nonfinite} NaN/infinite voxel(s)" in n for n in res.notes)
    assert np.isfinite(res.fused).all() and np.all(res.fused[:3] == 0)  # zero after scaling
    # the statistics ignore them: the same finite values scale the same way
    clean = np.roll(array, 2, 1)
    clean[:3] = 0.0
    clean[-1, 0, 0] = 0.0
    nib.save(nib.Nifti1Image(clean, affine), str(tmp_path / "clean.nii.gz"))
    ref = fuse_volumes(mri, tmp_path / "clean.nii.gz", model=PickChannel(1), modality="pet")
    np.testing.assert_allclose(res.fused, ref.fused, atol=1e-6)
    assert res.coverage < ref.coverage  # NaN voxels are outside the data's coverage
    # a volume with no finite voxel at all is an error
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), affine), str(tmp_path / "void.nii.gz"))
    with pytest.raises(VolumeReadError, match="no finite voxel"):
        read_volume(tmp_path / "void.nii.gz")


def _parrec_3d(folder: Path) -> Path:
    """A single-dynamic PAR/REC made from nibabel's 3-dynamic EPI phantom (its first dynamic)."""
    src = NIBABEL_DATA / "phantom_EPI_asc_CLEAR_2_1"
    if not src.with_suffix(".PAR").is_file():
        pytest.skip("nibabel's PAR/REC test data are not installed")
    keep = []
    for line in src.with_suffix(".PAR").read_text(encoding="latin-1").splitlines():
        fields = line.split()
        if line.startswith(".") and "Max. number of dynamics" in line:
            line = line.replace(":   3", ":   1")
        elif fields and fields[0].isdigit() and fields[2] != "1":
            continue  # an image line of dynamics 2 and 3
        keep.append(line)
    par = folder / "mri.PAR"
    par.write_text("\n".join(keep) + "\n", encoding="latin-1")
    par.with_suffix(".REC").write_bytes(src.with_suffix(".REC").read_bytes()[: 9 * 64 * 64 * 2])
    return par


def test_parrec_reads_and_fuses(tmp_path):
    par = _parrec_3d(tmp_path)
    full = nib.load(str(NIBABEL_DATA / "phantom_EPI_asc_CLEAR_2_1.PAR"))
    for path in (par, par.with_suffix(".REC")):  # either file of the pair
        vol = read_volume(path)
        assert vol.kind == "parrec" and vol.array.shape == (64, 64, 9)
        np.testing.assert_allclose(vol.array, full.get_fdata()[..., 0], rtol=1e-5)
        np.testing.assert_allclose(vol.affine, full.affine, atol=1e-5)
    pet = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(vol.array, 2, 0), vol.affine), str(pet))
    assert fuse_volumes(par, pet, model=PickChannel(0), modality="pet").fused.shape == (64, 64, 9)


def test_broken_parrec_is_one_line(tmp_path):
    par = _parrec_3d(tmp_path)
    rec = par.with_suffix(".REC")
    rec.write_bytes(rec.read_bytes()[:1000])  # truncated pixel data
    with pytest.raises(VolumeReadError, match=r"mri\.PAR: not a readable Philips PAR/REC file"):
        read_volume(par)
    rec.unlink()
    with pytest.raises(VolumeReadError, match="mri.PAR: not a readable Philips PAR/REC file"):
        read_volume(par)
    par.unlink()
    rec.write_bytes(b"\0" * 100)
    with pytest.raises(VolumeReadError, match="no PAR header beside this REC file"):
        read_volume(rec)
    with pytest.raises(VolumeReadError, match=r"4D series are not fused"):
        read_volume(NIBABEL_DATA / "phantom_EPI_asc_CLEAR_2_1.PAR")
