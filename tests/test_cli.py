import numpy as np
import pytest
from PIL import Image

from monai_emma.cli import main


def test_help_and_no_command(capsys):
    assert main([]) == 1
    assert "demo" in capsys.readouterr().out


def test_demo_writes_montage(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path), "--size", "64"]) == 0
    img = np.asarray(Image.open(tmp_path / "demo_montage.png"))
    assert img.shape[0] > 3 * 64 and img.shape[1] >= 3 * 64
    out = capsys.readouterr().out
    assert "ct:" in out and "spect:" in out


def test_fuse_folder_colour_and_grey(phantom_root, tmp_path, monkeypatch):
    import torch

    from monai_emma.networks import UFuser

    weights = tmp_path / "w.pt"
    torch.save(UFuser().state_dict(), weights)
    out = tmp_path / "out"
    for pair, colour in (("MRI_PET", True), ("MRI_CT", False)):
        mod = pair.split("_")[1]
        d = out / pair
        args = ["fuse-folder", str(phantom_root / pair / "MRI"), str(phantom_root / pair / mod), str(d)]
        assert main([*args, "--weights", str(weights), "--quiet"]) == 0
        files = sorted(p.name for p in d.iterdir())
        assert files == ["1.png", "2.png", "3.png", "4.png"]  # exactly one PNG per pair, nothing else
        img = np.asarray(Image.open(d / "1.png"))
        src = np.asarray(Image.open(phantom_root / pair / "MRI" / "1.png")).astype(int)
        src2 = np.asarray(Image.open(phantom_root / pair / mod / "1.png")).astype(int)
        src2 = src2 if src2.ndim == 3 else src2[..., None]
        empty = (src.max(-1) == 0) & (src2.max(-1) == 0)
        assert empty.any() and (img.reshape(*empty.shape, -1)[empty] == 0).all()  # no halo in the air
        raw = tmp_path / "raw" / pair
        assert main([*args[:3], str(raw), "--weights", str(weights), "--quiet", "--no-zero-empty"]) == 0
        assert (np.asarray(Image.open(raw / "1.png")).reshape(*empty.shape, -1)[empty] > 0).any()
        img = np.asarray(Image.open(d / "1.png"))
        assert img.dtype == np.uint8 and (img.ndim == 3) == colour
        # refusing to overwrite leaves the files untouched
        assert main([*args, "--weights", str(weights), "--quiet"]) == 2


def test_fuse_folder_bad_input(phantom_root, tmp_path, capsys):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "1.png").write_bytes((phantom_root / "MRI_CT" / "MRI" / "1.png").read_bytes())
    (b / "1.png").write_bytes(b"broken")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"nope")
    assert main(["fuse-folder", str(a), str(b), str(tmp_path / "o"), "--weights", str(weights)]) == 2
    assert "w.pt: not a PyTorch weights file" in capsys.readouterr().err
    assert main(["fuse-folder", str(a), str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    import torch

    from monai_emma.networks import UFuser

    torch.save(UFuser().state_dict(), weights)
    assert main(["fuse-folder", str(a), str(b), str(tmp_path / "o"), "--weights", str(weights), "--quiet"]) == 2
    assert "1.png: not a readable image" in capsys.readouterr().err
    assert list((tmp_path / "o").glob("*.png")) == []  # nothing half-written


def test_train_and_evaluate_report_bad_input_in_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no such data folder" in err
    assert not (tmp_path / "run").exists()  # nothing written
    assert main(["evaluate", str(tmp_path), "--methods", "mean"]) == 2
    assert "no image pairs found" in capsys.readouterr().err


def test_train_on_two_roots_then_evaluate_its_validation_pairs(phantom_root, second_root, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    tiny = ["sensor_samples_per_epoch=16", "fuser_samples_per_epoch=4", "sensor_patch_size=32"]
    tiny += ["fuser_patch_size=32", "sensor_batch_size=8", "fuser_batch_size=2", "val_slices=2"]
    args = ["train", "--data", str(phantom_root), "--data", str(second_root), "--output", str(run), "--epochs", "1"]
    args += ["--alpha", "0"] + [f"--override={t}" for t in tiny]
    assert main(args) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["data"] == [str(phantom_root), str(second_root)]
    assert (run / "stage2_fuser" / "ufuser.pt").is_file()
    capsys.readouterr()
    out = tmp_path / "eval"
    ev = ["evaluate", str(phantom_root), str(second_root), "--split", str(run / "split.json"), "--methods", "mean"]
    assert main([*ev, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == len(split["val"])
    assert "more/MRI_SPECT" in summary["summary"] and "more" in summary["summary"]
    # the roots must be the run's: one root alone cannot hold the listed pairs
    assert main(["evaluate", str(second_root), "--split", str(run / "split.json"), "--methods", "mean"]) == 2
    assert "not found under the given data roots" in capsys.readouterr().err
    assert main(["evaluate", str(second_root), "--split", str(tmp_path / "nope.json")]) == 2
    assert "no such split file" in capsys.readouterr().err


def test_train_refuses_bad_overrides_before_writing(phantom_root, tmp_path, capsys):
    base = ["train", "--data", str(phantom_root), "--output", str(tmp_path / "run")]
    assert main([*base, "--override", "warp_speed=9"]) == 2
    assert "unknown training setting 'warp_speed'" in capsys.readouterr().err
    assert main([*base, "--alpha", "0", "--override", "alpha=0.2"]) == 2
    assert "set twice" in capsys.readouterr().err
    assert main([*base, "--override", "fuser_schedule=linear"]) == 2
    assert "learning-rate schedule" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.shared_data
def test_fuse_folder_on_shared_mri_pet_writes_colour(harvard_root, tmp_path):
    a, b = harvard_root / "MRI_PET" / "MRI", harvard_root / "MRI_PET" / "PET"
    out = tmp_path / "out"
    assert main(["fuse-folder", str(a), str(b), str(out), "--quiet"]) == 0  # shipped weights, no flags
    stems = sorted(p.stem for p in a.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in stems)
    for p in out.iterdir():
        img = np.asarray(Image.open(p))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape == (256, 256, 3)
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() > 30  # really in colour


def test_phantom_command_writes_both_formats(tmp_path, capsys):
    out = tmp_path / "sample"
    assert main(["phantom", str(out), "--head-mm", "40"]) == 0
    assert sorted(p.name for p in (out / "nifti").iterdir()) == [
        "ct.nii.gz",
        "mri.nii.gz",
        "pet.nii.gz",
        "spect.nii.gz",
    ]
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["ct", "mri", "pet", "spect"]
    assert main(["phantom", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
