"""``monai-emma fuse``: options that cannot apply are refused (exit 2, one line, nothing written),
before anything is read where the command line alone says so; the notes say how each image was
scaled."""

import pytest

from monai_emma.cli import main


def _refused(argv, capsys, expect, out):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1, err
    assert not out.exists() and not any(p.name.startswith(".") for p in out.parent.iterdir())
    return err


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--anatomical-window", "brain", "--anatomical-modality", "mri"], "--anatomical-window brain: for a CT base"),
        (
            ["--window", "lung", "--modality", "pet"],
            "--window lung: a CT window preset in HU, but the second image is PET",
        ),
        (["--window", "bone", "--modality", "spect"], "--window bone: a CT window preset in HU"),
    ],
)
def test_impossible_windows_are_refused_before_reading(phantom_volume_files, tmp_path, capsys, extra, expect):
    broken = tmp_path / "pet.nii.gz"
    broken.write_bytes(b"not a nifti")  # an error about it would mean it was read
    out = tmp_path / "fused.nii.gz"
    argv = ["fuse", str(phantom_volume_files["nifti"]["mri"]), str(broken), "-o", str(out), *extra]
    err = _refused(argv, capsys, expect, out)
    assert "not a nifti" not in err and "pet.nii.gz" not in err


@pytest.mark.parametrize(
    "modality,extra,expect",
    [
        (
            "pet",
            ["--anatomical-window", "brain"],
            "--anatomical-window brain: a CT window in HU, but mri.nii.gz is MRI",
        ),
        ("pet", ["--anatomical-window", "0,80"], "--anatomical-window 0,80: a CT window in HU, but mri.nii.gz is MRI"),
        ("pet", ["--window", "lung"], "--window lung: a CT window in HU, but pet.nii.gz is PET"),
        ("spect", ["--window", "soft-tissue"], "--window soft-tissue: a CT window in HU, but spect.nii.gz is SPECT"),
    ],
)
def test_impossible_windows_on_guessed_modalities(
    phantom_volume_files, weights, tmp_path, capsys, modality, extra, expect
):
    """The modalities come from the images: refused once read, before fusing or writing."""
    files = phantom_volume_files["nifti"]
    out = tmp_path / "fused.nii.gz"
    argv = ["fuse", str(files["mri"]), str(files[modality]), "-o", str(out), "--weights", str(weights), *extra]
    _refused([*argv, "--html", str(tmp_path / "v.html")], capsys, expect, out)
    assert not (tmp_path / "v.html").exists()


def test_numeric_windows_stay_valid_and_notes_say_the_scaling(phantom_volume_files, weights, tmp_path, capsys):
    files = phantom_volume_files["nifti"]

    def fuse(other: str, window: str) -> str:
        argv = ["fuse", str(files["mri"]), str(files[other]), "-o", str(tmp_path / f"{other}.nii.gz")]
        assert main([*argv, "--window", window, "--weights", str(weights), "--quiet", "--precision", "fp32"]) == 0
        return capsys.readouterr().err

    err = fuse("pet", "0,5000")
    notes = [line for line in err.splitlines() if line.startswith("note: scaling: ")]
    assert len(notes) == 1, err
    assert "MRI: percentiles [0.5, 99.5] of the foreground (" in notes[0] and "PET: window [0, 5000]" in notes[0]
    assert "CT: window [0, 80] HU" in fuse("ct", "brain")


@pytest.mark.parametrize("order", ["2d_first", "3d_first"])
def test_2d_with_3d_gives_one_message_in_either_order(phantom_volume_files, phantom_root, tmp_path, capsys, order):
    png = phantom_root / "MRI_PET" / "PET" / "1.png"
    nifti = phantom_volume_files["nifti"]["mri"]
    a, b = (png, nifti) if order == "2d_first" else (nifti, png)
    for out in (tmp_path / "x.nii.gz", tmp_path / "x.png"):
        _refused(
            ["fuse", str(a), str(b), "-o", str(out)], capsys, f"{png}: a 2D image cannot be fused with a 3D volume", out
        )


@pytest.mark.parametrize(
    "flag", [["--window", "0,100"], ["--anatomical-window", "brain"], ["--register", "rigid"], ["--suv"]]
)
def test_volume_options_are_refused_for_2d_images(phantom_root, tmp_path, capsys, flag):
    a, b = phantom_root / "MRI_PET" / "MRI" / "1.png", phantom_root / "MRI_PET" / "PET" / "1.png"
    out = tmp_path / "x.png"
    if flag[0] == "--register":
        pytest.importorskip("SimpleITK")
    _refused(["fuse", str(a), str(b), "-o", str(out), *flag], capsys, f"{flag[0]} is for volumes", out)


def test_resize_is_refused_for_volumes(phantom_volume_files, tmp_path, capsys):
    files = phantom_volume_files["nifti"]
    out = tmp_path / "x.nii.gz"
    _refused(
        ["fuse", str(files["mri"]), str(files["pet"]), "-o", str(out), "--resize"], capsys, "--resize is for 2D", out
    )


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    for module in ("monai_emma", "monai_emma.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("monai-emma "), proc.stderr
