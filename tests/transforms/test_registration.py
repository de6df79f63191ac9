"""Registration before fusion: known rigid misalignments of the phantom are recovered."""

import json
import re
import time

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from monai_emma.transforms.registration import (  # noqa: E402
    RegisterToMatchd,
    RegistrationError,
    check_registration,
    register,
)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A phantom head of adult size (180 mm) with 1.5 mm MRI voxels as NIfTI files."""
    from monai_emma.data.phantom import write_phantom_nifti

    return write_phantom_nifti(tmp_path_factory.mktemp("reg_head"), head_mm=180.0, mri_spacing=1.5)


@pytest.fixture(scope="module")
def small_head(tmp_path_factory):
    """A smaller, coarser head (120 mm, 2 mm voxels) for the end-to-end runs."""
    from monai_emma.data.phantom import write_phantom_nifti

    return write_phantom_nifti(tmp_path_factory.mktemp("reg_small"), head_mm=120.0, mri_spacing=2.0)


def _misalign(affine: np.ndarray, centre: np.ndarray, degrees: float, shift_mm: np.ndarray, axis: int = 2):
    """``affine`` with the image rotated by ``degrees`` about ``axis`` through ``centre`` and shifted."""
    th = np.radians(degrees)
    c, s = np.cos(th), np.sin(th)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(4)
    rot[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
    to, back = np.eye(4), np.eye(4)
    to[:3, 3], back[:3, 3] = -centre, centre + shift_mm
    return back @ rot @ to @ affine


def _residual(corrected: np.ndarray, truth: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees) and displacement of the centre (mm) left between two affines (the
    rotation of the linear part's polar decomposition: a scale left over is not read as one)."""
    r = corrected @ np.linalg.inv(truth)
    u, _, vt = np.linalg.svd(r[:3, :3])
    angle = np.degrees(np.arccos(np.clip((np.trace(u @ vt) - 1) / 2, -1, 1)))
    return float(angle), float(np.linalg.norm(r[:3, :3] @ centre + r[:3, 3] - centre))


def _corners(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (8, 3) of the corners of the bounding box of the head in ``image``."""
    idx = np.argwhere(image > 0.05 * image.max())
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return (corners @ np.asarray(affine).T)[:, :3]


def _max_displacement(corrected: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Largest distance (mm) between where two affines put ``points``: a wrong scale, small at the
    centre, shows at the corners of the head."""
    r = corrected @ np.linalg.inv(truth)
    return float(np.linalg.norm(points @ r[:3, :3].T + r[:3, 3] - points, axis=1).max())


def _scaled(affine: np.ndarray, centre: np.ndarray, scales) -> np.ndarray:
    """``affine`` with the image scaled by ``scales`` along the world axes about ``centre``: voxel
    sizes in the header that are wrong by a few per cent."""
    to, back, s = np.eye(4), np.eye(4), np.diag([*scales, 1.0])
    to[:3, 3], back[:3, 3] = -centre, centre
    return back @ s @ to @ affine


def _load(path):
    img = nib.load(str(path))
    return img.get_fdata().astype(np.float32), img.affine


@pytest.mark.parametrize(
    "modality,degrees,shift,axis",
    [("pet", 10.0, (8.0, 0.0, 0.0), 2), ("spect", -10.0, (0.0, 5.0, 6.0), 0), ("ct", 10.0, (0.0, -8.0, 0.0), 1)],
)
def test_rigid_misalignment_is_recovered(head, modality, degrees, shift, axis):
    mri, mri_affine = _load(head["mri"])
    other, other_affine = _load(head[modality])
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    moved = _misalign(other_affine, centre, degrees, np.asarray(shift), axis)
    before = _residual(moved, other_affine, centre)
    assert before[0] == pytest.approx(abs(degrees), abs=1e-6) and before[1] > 7.5  # the test's own misalignment
    reg = register(mri, mri_affine, other, moved, "rigid")
    angle, shift_left = _residual(np.linalg.inv(reg.matrix) @ moved, other_affine, centre)
    assert angle < 0.5 and shift_left < 1.0, (angle, shift_left, reg.summary())
    assert reg.metric_after < reg.metric_before
    assert reg.rotation_deg == pytest.approx(abs(degrees), abs=0.5)


def test_affine_keeps_the_rigid_solution_of_a_rigid_misalignment(head):
    """Issue 29: affine on the PET moved by 10 deg and 8 mm was accepted 9-18 mm off. Now the
    affine refinement starts from the rigid solution; its gain (a PET magnified by a few per cent,
    which mutual information prefers against a sharp MRI) is too small to trust, so the rigid
    solution stays, with a note, right at the corners of the head too."""
    mri, mri_affine = _load(head["mri"])
    pet, pet_affine = _load(head["pet"])
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    moved = _misalign(pet_affine, centre, 10.0, np.array([8.0, 0.0, 0.0]))
    reg = register(mri, mri_affine, pet, moved, "affine")
    corrected = np.linalg.inv(reg.matrix) @ moved
    angle, shift_left = _residual(corrected, pet_affine, centre)
    worst = _max_displacement(corrected, pet_affine, _corners(mri, mri_affine))
    assert angle < 0.5 and shift_left < 1.0 and worst < 1.0, (angle, shift_left, worst, reg.summary(), reg.notes)
    assert reg.mode == "rigid" and reg.scales == (1.0, 1.0, 1.0)
    assert any("affine did not improve on rigid enough" in n and "kept the rigid solution" in n for n in reg.notes)
    np.testing.assert_array_equal(reg.rigid_matrix, reg.matrix)
    assert reg.to_dict()["rigid_matrix"] == reg.to_dict()["matrix"]


def test_affine_recovers_a_scaled_misalignment(head):
    """A CT whose header's voxel size is 5 % off along one axis, moved by 10 deg and 8 mm: affine
    recovers it at the head's corners too, and the scale; its rigid stage cannot (about 5 mm off
    at the corners)."""
    mri, mri_affine = _load(head["mri"])
    ct, ct_affine = _load(head["ct"])
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    corners = _corners(mri, mri_affine)
    moved = _misalign(_scaled(ct_affine, centre, (1.05, 1.0, 1.0)), centre, 10.0, np.array([8.0, 0.0, 0.0]))
    assert _max_displacement(moved, _misalign(ct_affine, centre, 10.0, np.array([8.0, 0, 0])), corners) > 4.0
    reg = register(mri, mri_affine, ct, moved, "affine")
    corrected = np.linalg.inv(reg.matrix) @ moved
    angle, shift_left = _residual(corrected, ct_affine, centre)
    worst = _max_displacement(corrected, ct_affine, corners)
    # the corners: within 2 mm (measured 1.3; mutual information leaves a scale error of about
    # 1 % along one axis between a 1.5 mm MRI and a CT of 3 mm slices even when aligned)
    assert reg.mode == "affine" and angle < 0.5 and shift_left < 1.0 and worst < 2.0, (angle, shift_left, worst)
    assert reg.scales[0] == pytest.approx(1.05, abs=0.01) and all(abs(s - 1) < 0.015 for s in reg.scales[1:])
    assert any(n.startswith("affine improved on rigid") for n in reg.notes), reg.notes
    rigid_worst = _max_displacement(np.linalg.inv(reg.rigid_matrix) @ moved, ct_affine, corners)
    assert rigid_worst > 3.0, rigid_worst  # the value of the affine: rigid cannot fit a wrong voxel size


@pytest.mark.parametrize("mode", ["rigid", "affine"])
def test_images_that_share_no_content_are_refused(small_head, mode):
    """Noise is refused before optimising (issue 29: after 77 s; 10 s at most asked for), by the
    information shared at the coarsest level compared with the second image's voxels shuffled."""
    mri, mri_affine = _load(small_head["mri"])
    noise = np.random.default_rng(0).random((40, 40, 30)).astype(np.float32)
    noise_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    noise_affine[:3, 3] = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3] - 58.5
    start = time.perf_counter()
    with pytest.raises(RegistrationError, match="share almost no information .* voxels shuffled"):
        register(mri, mri_affine, noise, noise_affine, mode)
    assert time.perf_counter() - start <= 10.0  # about 0.2 s alone; room for a busy CI machine
    with pytest.raises(RegistrationError, match="constant"):
        register(mri, mri_affine, np.ones_like(noise), noise_affine, mode)


def test_aligned_images_are_accepted_as_they_are(head):
    mri, mri_affine = _load(head["mri"])
    pet, pet_affine = _load(head["pet"])
    reg = register(mri, mri_affine, pet, pet_affine, "rigid")
    assert reg.rotation_deg < 0.5 and reg.translation_norm_mm < 1.0
    assert reg.metric_after <= reg.metric_before + 1e-3 and "already aligned" in reg.notes[0]


def test_modes_are_checked():
    assert check_registration("none") == "none"
    with pytest.raises(ValueError, match="unknown registration mode 'elastic'"):
        RegisterToMatchd(mode="elastic")


def test_fuse_registers_and_writes_the_transform(small_head, tmp_path, capsys):
    """The CLI end to end: a misaligned PET is registered, the transform is written as .tfm and in
    the report; the fused image equals fusing the correctly aligned PET."""
    import SimpleITK as sitk

    from monai_emma.cli import main

    mri, mri_affine = _load(small_head["mri"])
    pet_img = nib.load(str(small_head["pet"]))
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    moved = tmp_path / "pet_moved.nii.gz"
    nib.save(
        nib.Nifti1Image(
            pet_img.get_fdata().astype(np.float32), _misalign(pet_img.affine, centre, 10.0, np.array([8.0, 0, 0]))
        ),
        moved,
    )
    common = ["--modality", "pet", "--quiet", "--precision", "fp32"]
    out, ref = tmp_path / "reg" / "fused.nii.gz", tmp_path / "ref.nii.gz"
    report = tmp_path / "reg" / "report.json"
    assert (
        main(
            [
                "fuse",
                str(small_head["mri"]),
                str(moved),
                "-o",
                str(out),
                "--register",
                "rigid",
                "--report",
                str(report),
                *common,
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "rigid registration: rotation" in err
    tfm = tmp_path / "reg" / "fused_registration.tfm"
    t = sitk.ReadTransform(str(tfm))
    assert t.GetDimension() == 3
    rec = json.loads(report.read_text())["registration"]
    assert (
        rec["mode"] == "rigid" and abs(rec["rotation_deg"] - 10.0) < 0.5 and rec["metric_after"] < rec["metric_before"]
    )
    assert main(["fuse", str(small_head["mri"]), str(small_head["pet"]), "-o", str(ref), *common]) == 0
    fused, truth = nib.load(str(out)).get_fdata(), nib.load(str(ref)).get_fdata()
    unregistered = tmp_path / "unreg.nii.gz"
    assert main(["fuse", str(small_head["mri"]), str(moved), "-o", str(unregistered), *common]) == 0
    wrong = nib.load(str(unregistered)).get_fdata()
    # registered: close to the aligned fusion; without registration: clearly off
    assert np.abs(fused - truth).mean() < 0.25 * np.abs(wrong - truth).mean()


def test_failed_registration_writes_nothing(small_head, tmp_path, capsys):
    from monai_emma.cli import main

    noise = tmp_path / "noise.nii.gz"
    mri_img = nib.load(str(small_head["mri"]))
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(1).random((30, 30, 20)).astype(np.float32), mri_img.affine @ np.diag([2, 2, 2, 1])
        ),
        noise,
    )
    out = tmp_path / "out" / "fused.nii.gz"
    code = main(
        [
            "fuse",
            str(small_head["mri"]),
            str(noise),
            "-o",
            str(out),
            "--register",
            "rigid",
            "--modality",
            "pet",
            "--quiet",
        ]
    )
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "registration" in err[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_register_refuses_2d_images(phantom_root, tmp_path, capsys):
    from monai_emma.cli import main

    a, b = phantom_root / "MRI_CT" / "MRI" / "2.png", phantom_root / "MRI_CT" / "CT" / "2.png"
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--register", "rigid"]) != 0
    assert "--register is for volumes" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_fuse_folder_of_volumes_registers_each_pair(small_head, tmp_path, capsys):
    """fuse-folder on volume folders: one NIfTI per pair matched by name, each registered with its
    transform beside it; a broken pair stops the run in one line and the pairs before it stay."""
    import shutil

    from monai_emma.cli import main

    mri_dir, pet_dir, out = tmp_path / "MRI", tmp_path / "PET", tmp_path / "fused"
    mri_dir.mkdir(), pet_dir.mkdir()
    mri, mri_affine = _load(small_head["mri"])
    pet_img = nib.load(str(small_head["pet"]))
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    for stem, degrees in (("s1", 10.0), ("s2", -8.0)):
        shutil.copy(small_head["mri"], mri_dir / f"{stem}.nii.gz")
        moved = _misalign(pet_img.affine, centre, degrees, np.array([0.0, 6.0, 0.0]))
        nib.save(nib.Nifti1Image(pet_img.get_fdata().astype(np.float32), moved), pet_dir / f"{stem}.nii.gz")
    common = ["--modality", "pet", "--quiet", "--precision", "fp32", "--register", "rigid"]
    assert main(["fuse-folder", str(mri_dir), str(pet_dir), str(out), *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "s1.nii.gz",
        "s1_registration.tfm",
        "s2.nii.gz",
        "s2_registration.tfm",
    ]
    err = capsys.readouterr().err
    found = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"(s\d): rigid registration: rotation ([\d.]+) deg", err)
    }
    assert found.keys() == {"s1", "s2"} and abs(found["s1"] - 10) < 0.5 and abs(found["s2"] - 8) < 0.5
    # a third pair whose PET is not a volume file: one line naming it, the others stay
    shutil.copy(small_head["mri"], mri_dir / "s3.nii.gz")
    (pet_dir / "s3.nii.gz").write_bytes(b"broken")
    code = main(["fuse-folder", str(mri_dir), str(pet_dir), str(out), *common, "--overwrite"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("monai-emma: error: s3: ") and "s3.nii.gz" in lines[-1]
    assert (out / "s2.nii.gz").is_file() and not (out / "s3.nii.gz").exists()


def test_registration_is_reproducible(small_head):
    """The metric's random sample has a fixed seed (SimpleITK reads 0 as the wall clock)."""
    mri, mri_affine = _load(small_head["mri"])
    pet, pet_affine = _load(small_head["pet"])
    centre = (mri_affine @ np.array([*(np.array(mri.shape) - 1) / 2, 1.0]))[:3]
    moved = _misalign(pet_affine, centre, 7.0, np.array([4.0, 0.0, 0.0]))
    first, second = (register(mri, mri_affine, pet, moved, "rigid") for _ in range(2))
    np.testing.assert_allclose(first.matrix, second.matrix, atol=1e-6)  # threaded sums: last bits only
    assert first.metric_after == pytest.approx(second.metric_after, abs=1e-6)
