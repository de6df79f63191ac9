from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from monai_emma.data.phantom import phantom_lesion, write_phantom_nifti
from monai_emma.fusion import FusionError, fuse_images, fuse_volumes, guess_modality
from monai_emma.io.volumes import Volume, read_volume
from monai_emma.networks import UFuser
from monai_emma.transforms import IntensityRule
from tests.conftest import PickChannel


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UFuser().eval()


def test_nifti_fusion_keeps_the_anatomical_grid(phantom_volume_files, net):
    files = phantom_volume_files["nifti"]
    res = fuse_volumes(files["mri"], files["pet"], model=net, modality="pet", batch_size=16)
    mri = read_volume(files["mri"])
    assert res.fused.shape == mri.array.shape and res.fused.dtype == np.float32
    assert np.isfinite(res.fused).all() and 0 <= res.fused.min() and res.fused.max() <= 1
    assert res.coverage == pytest.approx(1.0)  # the PET field of view holds the whole head
    np.testing.assert_array_equal(res.anatomical.affine, mri.affine)


def test_coarse_shifted_pet_lands_on_the_lesion(tmp_path):
    # a finer phantom so that the PET shows the lesion clearly (see the phantom's docs)
    files = write_phantom_nifti(tmp_path, head_mm=48.0, mri_spacing=0.5, modalities=("mri", "pet"))
    pet = read_volume(files["pet"])
    unclipped = IntensityRule("window", 0.0, float(pet.array.max()))  # keep the hottest voxels distinct
    res = fuse_volumes(files["mri"], pet, model=PickChannel(1), modality="pet", other_rule=unclipped, batch_size=32)
    mri = res.anatomical
    assert not np.allclose(pet.affine[:3, :3], np.diag(np.diag(pet.affine[:3, :3])))  # rotated, coarser grid
    assert min(pet.spacing) > 2 * max(mri.spacing)
    # the fused volume (here: the resampled PET) is hottest at the lesion, in world coordinates
    centre, radius = phantom_lesion(48.0)
    hot = res.fused >= 0.9 * res.fused.max()
    ijk = np.argwhere(hot)
    weights = res.fused[hot]
    world = (mri.affine[:3, :3] @ ((ijk * weights[:, None]).sum(0) / weights.sum())) + mri.affine[:3, 3]
    assert np.linalg.norm(world - np.asarray(centre)) < 1.5 * min(pet.spacing)
    # and the anatomical channel is untouched by the resampling
    back = fuse_volumes(mri, pet, model=PickChannel(0), modality="pet", zero_empty=False)
    np.testing.assert_allclose(back.fused, back.anatomical_scaled, atol=1e-6)


def test_partial_and_missing_overlap(phantom_volume_files):
    mri = read_volume(phantom_volume_files["nifti"]["mri"])
    pet = read_volume(phantom_volume_files["nifti"]["pet"])
    half = pet.affine.copy()
    half[0, 3] += 30.0  # slide the PET field of view right by 30 mm: partial overlap
    res = fuse_volumes(mri, Volume(pet.array, half, pet.path, "nifti"), model=PickChannel(1), modality="pet")
    assert 0.05 < res.coverage < 0.95 and any("covers" in n for n in res.notes)
    x_world = mri.affine[0, 0] * np.arange(mri.array.shape[0]) + mri.affine[0, 3]
    left = x_world < half[0, 3] - 0.5 * pet.spacing[0] - 2  # beyond the PET's left edge
    assert left.any() and res.other_scaled[left].max() == 0
    far = pet.affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(FusionError, match="do not overlap"):
        fuse_volumes(mri, Volume(pet.array, far, pet.path, "nifti"), model=PickChannel(1), modality="pet")


def test_mixing_2d_and_3d_is_refused(phantom_volume_files, phantom_root):
    png = phantom_root / "MRI_CT" / "MRI" / "1.png"
    with pytest.raises(FusionError, match="1.png: a 2D image cannot be fused with a 3D volume"):
        fuse_volumes(png, phantom_volume_files["nifti"]["ct"], model=PickChannel(0))
    with pytest.raises(FusionError, match="ct.nii.gz: a 3D volume cannot be fused with a 2D image"):
        fuse_images(png, phantom_volume_files["nifti"]["ct"], model=PickChannel(0))


def test_constant_volumes_and_stretch(net):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    a = Volume(np.full((16, 24, 3), 5.0, np.float32), aff, Path("a.nii"), "nifti")
    b = Volume(np.zeros((16, 24, 3), np.float32), aff, Path("b.nii"), "nifti")
    res = fuse_volumes(a, b, model=net, modality="pet")
    assert np.isfinite(res.fused).all()
    rng = np.random.default_rng(0)
    a.array[:] = rng.random(a.array.shape) * 100
    res = fuse_volumes(a, b, model=net, modality="pet", stretch=True)
    for k in range(3):
        assert res.fused[..., k].min() == pytest.approx(0, abs=1e-6) and res.fused[..., k].max() == pytest.approx(1)


def test_pydicom_real_slices_fuse_with_partners(tmp_path, net):
    # MR_small (anatomical) with a synthetic PET on its own, coarser grid around that slice
    mr = read_volume(get_testdata_file("MR_small.dcm"))
    centre = mr.affine @ np.array([32.0, 32.0, 0.0, 1.0])
    pet_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    pet_aff[:3, 3] = centre[:3] - 3.0 * np.array([5.0, 5.0, 2.0])
    pet = np.zeros((11, 11, 5), np.float32)
    pet[3:8, 3:8, :] = 5.0
    nib.save(nib.Nifti1Image(pet, pet_aff), str(tmp_path / "pet.nii.gz"))
    res = fuse_volumes(get_testdata_file("MR_small.dcm"), tmp_path / "pet.nii.gz", model=net, modality="pet")
    assert res.fused.shape == (64, 64, 1) and np.isfinite(res.fused).all()
    assert res.coverage == 1.0 and res.other_scaled.max() == 1 and res.other_scaled.min() == 0
    # CT_small as the second modality, with an MRI partner on its own 1 mm grid
    ct = read_volume(get_testdata_file("CT_small.dcm"))
    assert guess_modality(ct)[0] == "ct"
    c = ct.affine @ np.array([64.0, 64.0, 0.0, 1.0])
    mri_aff = np.eye(4)
    mri_aff[:3, 3] = c[:3] - np.array([40.0, 40.0, 2.0])
    mri = np.random.default_rng(1).random((80, 80, 5)).astype(np.float32) * 500
    nib.save(nib.Nifti1Image(mri, mri_aff), str(tmp_path / "mri.nii.gz"))
    res = fuse_volumes(tmp_path / "mri.nii.gz", get_testdata_file("CT_small.dcm"), model=net)
    assert res.modality == "ct" and res.fused.shape == (80, 80, 5) and np.isfinite(res.fused).all()


def test_2d_pairs_colour_from_pixels_and_sizes(phantom_root, net, tmp_path):
    pet = fuse_images(phantom_root / "MRI_PET" / "MRI" / "1.png", phantom_root / "MRI_PET" / "PET" / "1.png", net)
    ct = fuse_images(phantom_root / "MRI_CT" / "MRI" / "1.png", phantom_root / "MRI_CT" / "CT" / "1.png", net)
    assert pet.fused.dtype == np.uint8 and pet.fused.ndim == 3 and ct.fused.ndim == 2
    from PIL import Image

    small = tmp_path / "small.png"
    Image.open(phantom_root / "MRI_CT" / "CT" / "1.png").resize((32, 32)).save(small)
    with pytest.raises(FusionError, match="sizes differ .*--resize"):
        fuse_images(phantom_root / "MRI_CT" / "MRI" / "1.png", small, net)
    res = fuse_images(phantom_root / "MRI_CT" / "MRI" / "1.png", small, net, resize=True)
    assert res.fused.shape == ct.fused.shape


def _ycbcr(rgb_hwc: np.ndarray) -> np.ndarray:
    from monai_emma.transforms.colour import rgb_to_ycbcr

    return rgb_to_ycbcr(np.moveaxis(rgb_hwc, -1, 0).astype(np.float64) / 255.0, 0)


def test_colour_visible_keeps_its_chroma(net, tmp_path):
    """Infrared-visible: a colour visible image (first) and a grey infrared image (second) give a
    colour result whose luminance is the fused Y and whose Cb/Cr are the visible image's."""
    from PIL import Image

    from monai_emma.fuse2d import fuse_slice_pair, luminance, to_8bit

    rng = np.random.default_rng(0)
    vis = np.zeros((48, 64, 3), np.uint8)
    vis[..., 0] = np.linspace(40, 220, 64)[None].astype(np.uint8)  # a red ramp, a blue block
    vis[10:30, 20:40, 2] = 200
    vis[..., 1] = 90
    ir = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    fused = fuse_slice_pair(lambda ya, yb: (ya + yb) / 2, np.moveaxis(vis, -1, 0), ir[None])
    assert fused.shape == (48, 64, 3) and fused.dtype == np.uint8
    from monai_emma.transforms.colour import ycbcr_to_rgb

    want_y = (luminance(np.moveaxis(vis, -1, 0)) + ir / 255.0) / 2
    got = _ycbcr(fused)
    unclipped = ycbcr_to_rgb(np.concatenate([want_y[None], _ycbcr(vis)[1:]]), 0)
    inside = ((unclipped > 0.01) & (unclipped < 0.99)).all(0)  # pixels whose RGB is not clipped
    assert inside.mean() > 0.3
    assert np.abs(got[0] - want_y)[inside].max() < 3 / 255
    assert np.abs(got[1:] - _ycbcr(vis)[1:])[:, inside].max() < 4 / 255
    # a colour second image (PET/SPECT) still wins; two grey images stay grey
    pet = np.stack([ir, ir // 2, 255 - ir])
    assert (
        np.abs(_ycbcr(to_8bit(want_y, pet, np.moveaxis(vis, -1, 0)))[1:] - _ycbcr(np.moveaxis(pet, 0, -1))[1:]).mean()
        < 2 / 255
    )
    assert to_8bit(want_y, ir[None], ir[None]).ndim == 2
    # the same through fuse_images (files, the CLI's path)
    Image.fromarray(vis).save(tmp_path / "vi.png")
    Image.fromarray(ir).save(tmp_path / "ir.png")
    res = fuse_images(tmp_path / "vi.png", tmp_path / "ir.png", net)
    assert res.fused.shape == (48, 64, 3)
    assert np.abs(_ycbcr(res.fused)[1:] - _ycbcr(vis)[1:])[:, inside].mean() < 2 / 255


@pytest.mark.shared_data
def test_roadscene_colour_pairs_stay_in_colour(ivf_root, tmp_path):
    """The shared RoadScene (FLIR) pairs: colour visible photographs come out in colour, with the
    visible image's chroma, through ``fuse-folder`` and the shipped weights."""
    from PIL import Image

    from monai_emma.cli import main

    vi, ir = ivf_root / "RoadScene" / "vi", ivf_root / "RoadScene" / "ir"
    names = sorted(p.name for p in vi.iterdir())[:3]
    a, b = tmp_path / "vi", tmp_path / "ir"
    a.mkdir(), b.mkdir()
    for n in names:
        (a / n).write_bytes((vi / n).read_bytes())
        (b / n).write_bytes((ir / n).read_bytes())
    out = tmp_path / "out"
    assert main(["fuse-folder", str(a), str(b), str(out), "--quiet"]) == 0
    for n in names:
        src = np.asarray(Image.open(vi / n).convert("RGB"))
        got = np.asarray(Image.open(out / (n.rsplit(".", 1)[0] + ".png")))
        assert got.ndim == 3 and got.shape == src.shape
        y, ref = _ycbcr(got), _ycbcr(src)
        inside = (y[0] > 0.1) & (y[0] < 0.9)
        assert np.abs(y[1:] - ref[1:])[:, inside].mean() < 3 / 255  # the visible image's chroma
        assert np.abs(y[1:] - 0.5).max() > 0.05  # really in colour
