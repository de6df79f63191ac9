"""``monai-emma fuse``: formats, geometry of the outputs, model sources and bad input (in-process)."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from monai_emma.cli import main
from monai_emma.io.volumes import read_volume
from monai_emma.model_source import scoped_tracking_uri
from monai_emma.networks import UFuser
from monai_emma.precision import native_bf16


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_nifti_in_nifti_out_keeps_geometry(phantom_volume_files, weights, tmp_path, capsys):
    files = phantom_volume_files["nifti"]
    out = tmp_path / "fused.nii.gz"
    preview = tmp_path / "preview.png"
    args = ["fuse", str(files["mri"]), str(files["pet"]), "-o", str(out), "--weights", str(weights), "--quiet"]
    assert main([*args, "--colormap", "hot", "--preview", str(preview), "--overlay", "--overlay-opacity", "0.6"]) == 0
    assert "wrote fused" in capsys.readouterr().out
    overlay = nib.load(str(tmp_path / "fused_overlay.nii.gz"))  # viewer-style: grey plus thresholded colour
    assert overlay.shape == nib.load(str(files["mri"])).shape and overlay.get_data_dtype().names == ("R", "G", "B")
    src, res = nib.load(str(files["mri"])), nib.load(str(out))
    assert res.shape == src.shape and res.get_data_dtype() == np.float32
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-6)
    assert int(res.header["sform_code"]) == int(src.header["sform_code"])
    assert int(res.header["qform_code"]) == int(src.header["qform_code"])
    np.testing.assert_allclose(res.header.get_zooms(), src.header.get_zooms(), atol=1e-6)
    data = res.get_fdata()
    assert np.isfinite(data).all() and 0 <= data.min() and data.max() <= 1
    colour = nib.load(str(tmp_path / "fused_colour.nii.gz"))
    assert colour.shape == src.shape and colour.get_data_dtype().names == ("R", "G", "B")
    np.testing.assert_allclose(colour.affine, src.affine, atol=1e-6)
    img = np.asarray(Image.open(preview))
    assert img.ndim == 3 and img.shape[1] > 3 * src.shape[0]
    # an existing output is refused unless --overwrite, and left untouched
    before = out.read_bytes()
    assert main(args) == 2
    assert "fused.nii.gz: output exists (use --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*args, "--overwrite", "--stretch"]) == 0
    assert _leftovers(tmp_path) == []


def test_dicom_in_dicom_out(phantom_volume_files, weights, tmp_path):
    mri_dir, ct_dir = phantom_volume_files["dicom"]["mri"], phantom_volume_files["dicom"]["ct"]
    out = tmp_path / "fused_series"
    args = ["fuse", str(mri_dir), str(ct_dir), "-o", str(out), "--output-format", "dicom"]
    assert main([*args, "--weights", str(weights), "--quiet"]) == 0
    sources = sorted(mri_dir.iterdir())
    written = sorted(out.iterdir())
    assert len(written) == len(sources)
    src_by_pos = {tuple(pydicom.dcmread(f).ImagePositionPatient): pydicom.dcmread(f) for f in sources}
    series_uids, sop_uids = set(), set()
    for f in written:
        ds = pydicom.dcmread(f)
        src = src_by_pos[tuple(ds.ImagePositionPatient)]
        assert list(ds.ImageOrientationPatient) == list(src.ImageOrientationPatient)
        assert list(ds.PixelSpacing) == list(src.PixelSpacing)
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "EMMA" in ds.DerivationDescription and "CT" in ds.DerivationDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert values.shape == src.pixel_array.shape and 0 <= values.min() and values.max() <= 1
        series_uids.add(ds.SeriesInstanceUID)
        sop_uids.add(ds.SOPInstanceUID)
    assert len(series_uids) == 1 and len(sop_uids) == len(written)
    # the series reads back on the anatomical grid with the same values as a NIfTI output
    nii = tmp_path / "same.nii.gz"
    assert main(["fuse", str(mri_dir), str(ct_dir), "-o", str(nii), "--weights", str(weights), "--quiet"]) == 0
    back, anat = read_volume(out), read_volume(mri_dir)
    np.testing.assert_allclose(back.affine, anat.affine, atol=1e-4)
    np.testing.assert_allclose(back.array, nib.load(str(nii)).get_fdata(), atol=1 / 4095)


def test_png_pair_and_colour_rendering(phantom_root, weights, tmp_path, capsys):
    a, b = phantom_root / "MRI_CT" / "MRI" / "2.png", phantom_root / "MRI_CT" / "CT" / "2.png"
    out = tmp_path / "f.png"
    args = ["--weights", str(weights), "--colormap", "jet"]
    assert main(["fuse", str(a), str(b), "-o", str(out), *args, "--precision", "fp32"]) == 0
    grey, colour = np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "f_colour.png"))
    assert grey.dtype == np.uint8 and grey.ndim == 2 and colour.shape == (*grey.shape, 3)
    # bfloat16: the same picture to a few grey levels
    low = tmp_path / "bf16.png"
    assert main(["fuse", str(a), str(b), "-o", str(low), *args, "--precision", "bf16"]) == 0
    low_grey = np.asarray(Image.open(low))
    diff = np.abs(low_grey.astype(int) - grey.astype(int))
    assert diff.max() <= 8 and diff.mean() < 1.0
    # the default, auto, is bfloat16 exactly where this machine computes it natively, and says so
    capsys.readouterr()
    auto = tmp_path / "auto.png"
    assert main(["fuse", str(a), str(b), "-o", str(auto), *args]) == 0
    native = native_bf16("cpu")
    np.testing.assert_array_equal(np.asarray(Image.open(auto)), low_grey if native else grey)
    assert ("precision auto" in capsys.readouterr().err) == native


@pytest.mark.parametrize(
    "case,expect",
    [
        ("missing", "missing.nii.gz: no such file"),
        ("corrupt", "corrupt.nii.gz: not a readable NIfTI file"),
        ("nan", "nan.nii.gz: no finite voxel"),
        ("mixed", "a 2D image cannot be fused with a 3D volume"),
        ("sizes", "sizes differ"),
        ("png_for_volume", "PNG output is for 2D inputs"),
        ("dicom_from_nifti", "DICOM output needs a DICOM anatomical series"),
        ("no_suffix", "cannot tell the output format"),
        ("bad_window", "--window '5': expected a window preset"),
        ("bad_weights", "not a PyTorch weights file"),
        ("no_overlap", "fields of view do not overlap"),
    ],
)
def test_bad_input_one_line_no_output(case, expect, phantom_volume_files, phantom_root, weights, tmp_path, capsys):
    files = phantom_volume_files["nifti"]
    mri, pet = str(files["mri"]), str(files["pet"])
    out = tmp_path / "out" / "fused.nii.gz"
    extra = ["--weights", str(weights)]
    if case == "missing":
        argv = [mri, str(tmp_path / "missing.nii.gz")]
    elif case == "corrupt":
        (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08garbage" * 30)
        argv = [mri, str(tmp_path / "corrupt.nii.gz")]
    elif case == "nan":
        img = nib.load(pet)
        data = np.full(img.shape, np.nan, np.float32)  # NaN in places is "no data"; all NaN is an error
        nib.save(nib.Nifti1Image(data, img.affine), str(tmp_path / "nan.nii.gz"))
        argv = [mri, str(tmp_path / "nan.nii.gz")]
    elif case == "mixed":
        argv = [str(phantom_root / "MRI_CT" / "MRI" / "1.png"), pet]
        out = tmp_path / "out" / "fused.png"
    elif case == "sizes":
        Image.open(phantom_root / "MRI_CT" / "CT" / "1.png").resize((40, 40)).save(tmp_path / "small.png")
        argv = [str(phantom_root / "MRI_CT" / "MRI" / "1.png"), str(tmp_path / "small.png")]
        out = tmp_path / "out" / "fused.png"
    elif case == "png_for_volume":
        argv = [mri, pet]
        out = tmp_path / "out" / "fused.png"
    elif case == "dicom_from_nifti":
        argv = [mri, pet, "--output-format", "dicom"]
        out = tmp_path / "out" / "series"
    elif case == "no_suffix":
        argv = [mri, pet]
        out = tmp_path / "out" / "fused"
    elif case == "bad_window":
        argv = [mri, pet, "--window", "5"]
    elif case == "bad_weights":
        (tmp_path / "w.pt").write_bytes(b"nope")
        argv, extra = [mri, pet], ["--weights", str(tmp_path / "w.pt")]
    else:  # no_overlap
        img = nib.load(pet)
        moved = img.affine.copy()
        moved[:3, 3] += 500
        nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), moved), str(tmp_path / "far.nii.gz"))
        argv = [mri, str(tmp_path / "far.nii.gz")]
    assert main(["fuse", *argv, "-o", str(out), *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    if out.parent.exists():
        assert list(out.parent.iterdir()) == []  # no temporary files either


def test_model_sources_agree(phantom_root, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    a, b = str(phantom_root / "MRI_PET" / "MRI" / "1.png"), str(phantom_root / "MRI_PET" / "PET" / "1.png")
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(weights.read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with scoped_tracking_uri(uri):  # no process-wide tracking URI left behind for later tests
        exp = mlflow.create_experiment("fuse-test", artifact_location=(tmp_path / "artifacts").as_uri())
        net = UFuser()
        net.load_state_dict(torch.load(weights, weights_only=True))
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pytorch.log_model(
                net,
                name="ufuser",
                serialization_format="pickle",
                pip_requirements=["torch"],
                registered_model_name="emma-t",
            )
    mlflow.MlflowClient(uri).set_registered_model_alias("emma-t", "candidate", info.registered_model_version)
    outs = {}
    for name, flags in {
        "weights": ["--weights", str(weights)],
        "bundle": ["--bundle", str(bundle)],
        "mlflow": ["--model-uri", "models:/emma-t@candidate", "--tracking-uri", uri],
    }.items():
        outs[name] = tmp_path / f"{name}.png"
        assert main(["fuse", a, b, "-o", str(outs[name]), *flags]) == 0
    ref = np.asarray(Image.open(outs["weights"]))
    for name in ("bundle", "mlflow"):
        np.testing.assert_array_equal(np.asarray(Image.open(outs[name])), ref)
    assert main(["fuse", a, b, "-o", str(tmp_path / "x.png"), "--bundle", str(tmp_path)]) == 2


def test_subprocess_smoke(phantom_volume_files, tmp_path):
    files = phantom_volume_files["nifti"]
    out = tmp_path / "fused.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai_emma.cli", "fuse", str(files["mri"]), str(files["ct"]), "-o", str(out)]
    proc = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "note: modality ct" in proc.stderr and out.is_file()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "output exists" in proc.stderr


def test_one_study_folder_with_both_series(phantom_volume_files, weights, tmp_path, capsys):
    """A PACS export: MR and CT series in one folder, chosen by two --series-uid (anatomical first)."""
    import shutil

    from monai_emma.io.volumes import list_dicom_series

    dicom = phantom_volume_files["dicom"]
    study = tmp_path / "study"
    study.mkdir()
    for mod in ("mri", "ct"):
        for f in Path(dicom[mod]).iterdir():
            shutil.copy(f, study / f"{mod}_{f.name}")
    uids = {s.modality: uid for uid, s in list_dicom_series(study).items()}
    common = ["--weights", str(weights), "--quiet", "--precision", "fp32"]
    out, ref = tmp_path / "study.nii.gz", tmp_path / "ref.nii.gz"
    argv = ["fuse", str(study), str(study), "-o", str(out), "--series-uid", uids["MR"], "--series-uid", uids["CT"]]
    assert main([*argv, *common]) == 0
    assert main(["fuse", str(dicom["mri"]), str(dicom["ct"]), "-o", str(ref), *common]) == 0
    np.testing.assert_array_equal(nib.load(str(out)).get_fdata(), nib.load(str(ref)).get_fdata())
    capsys.readouterr()
    assert main(["fuse", str(study), str(study), "-o", str(tmp_path / "x.nii.gz"), *common]) == 2
    assert "give two --series-uid, the anatomical series first" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--colormap", "foo"], "--colormap 'foo': unknown colour map"),
        (["--overlay-colormap", "bar"], "--overlay-colormap 'bar': unknown colour map"),
        (["--output-format", "dicom"], "DICOM output needs a DICOM anatomical series"),
    ],
)
def test_impossible_options_are_refused_before_loading(phantom_volume_files, tmp_path, capsys, extra, expect):
    """Checked before anything is read: the weights file does not exist and the PET is not even
    a readable file, yet the error is about the option."""
    nifti = phantom_volume_files["nifti"]
    broken = tmp_path / "pet.nii.gz"
    broken.write_bytes(b"not a nifti")
    out = tmp_path / "out" / "fused.nii.gz"
    argv = ["fuse", str(nifti["mri"]), str(broken), "-o", str(out), "--weights", str(tmp_path / "none.pt"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and "none.pt" not in err and not out.parent.exists()
    png = tmp_path / "fused.png"
    assert main(["fuse", str(nifti["mri"]), str(broken), "-o", str(png), "--weights", str(tmp_path / "none.pt")]) == 2
    assert "PNG output is for 2D inputs" in capsys.readouterr().err


def test_model_uri_without_a_registry_creates_nothing(phantom_root, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = phantom_root / "MRI_CT" / "MRI" / "2.png", phantom_root / "MRI_CT" / "CT" / "2.png"
    argv = ["fuse", str(a), str(b), "-o", "f.png", "--model-uri", "models:/emma-ufuser@candidate"]
    assert main(argv) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    assert main([*argv, "--tracking-uri", "sqlite:///nowhere/mlflow.db"]) == 2
    assert "no MLflow database at nowhere/mlflow.db" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
