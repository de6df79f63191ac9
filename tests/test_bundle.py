"""The EMMA MONAI bundle, run through MONAI's own bundle API on small generated data."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "emma"
CONFIGS = BUNDLE / "configs"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(config: str | list[str], **override):
    from monai.bundle import run

    files = [str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)]
    return run(
        config_file=files if len(files) > 1 else files[0], logging_file=str(CONFIGS / "logging.conf"), **override
    )


def test_metadata_and_the_bundle_models():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "authors"):
        assert meta[key]
    assert meta["version"] in meta["changelog"] and "monai-emma" in meta["required_packages_version"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 2 and image["channel_def"]["0"].startswith("MRI")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    assert "sensor_data_format" in meta
    # MONAI's tools build their test input from spatial_shape (n = 1): it must be a size an exported graph takes
    from monai.bundle.scripts import _get_fake_spatial_shape

    from monai_emma.networks.export import MIN_SIZE

    for fmt in (image, meta["network_data_format"]["outputs"]["pred"]):
        assert min(_get_fake_spatial_shape(fmt["spatial_shape"])) >= MIN_SIZE
    assert "any H and W" in meta["spatial_shape_note"]
    # the bundle's models are the shipped default weights, and stay small
    assert sum(p.stat().st_size for p in (BUNDLE / "models").iterdir()) < 20 * 2**20
    assert (BUNDLE / "LICENSE").is_file() and "Intended use" in (BUNDLE / "docs" / "README.md").read_text()


def test_inference_on_volumes_keeps_the_grid(phantom_volume_files, tmp_path):
    data = Path(phantom_volume_files["nifti"]["mri"]).parent
    out = tmp_path / "out"
    _run("inference.json", dataset_dir=str(data), output_dir=str(out), device="cpu")
    mri = nib.load(str(data / "mri.nii.gz"))
    for name in ("nifti_ct", "nifti_pet", "nifti_spect"):
        fused = nib.load(str(out / f"{name}.nii.gz"))
        assert fused.shape == mri.shape
        np.testing.assert_allclose(fused.affine, mri.affine, atol=1e-6)
        values = fused.get_fdata()
        assert np.isfinite(values).all() and 0 <= values.min() and values.max() <= 1
        assert (out / f"{name}_preview.png").is_file()
    assert (out / "nifti_pet_colour.nii.gz").is_file() and not (out / "nifti_ct_colour.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert {r["name"] for r in summary} == {"nifti_ct", "nifti_pet", "nifti_spect"}


def test_monai_workflow_properties_of_all_three_configs(phantom_root, tmp_path):
    from monai.bundle import ConfigWorkflow

    for name, kind, where in (
        ("inference.json", "infer", {"output_dir": str(tmp_path / "infer"), "sample_spacing": 4.0}),
        ("train_sensors.json", "train", {"run_dir": str(tmp_path / "train"), "dataset_dir": str(phantom_root)}),
        ("train_fuser.json", "train", {"run_dir": str(tmp_path / "train"), "dataset_dir": str(phantom_root)}),
    ):
        workflow = ConfigWorkflow(
            config_file=str(CONFIGS / name), meta_file=str(CONFIGS / "metadata.json"), workflow_type=kind, **where
        )
        workflow.initialize()
        assert workflow.check_properties() in (None, []), name  # nothing missing, every reference right
        assert workflow.network_def is not None and workflow.device is not None
        if kind == "train":
            assert workflow.max_epochs == workflow.trainer.state.max_epochs and workflow.train_dataset is not None
            assert workflow.evaluator is not None and type(workflow.trainer).__name__ == "EMMATrainer"
        else:
            assert type(workflow.evaluator).__name__ == "SupervisedEvaluator" and len(workflow.dataset) == 6


def test_inference_pipeline_is_the_packages(tmp_path):
    """The bundle's visible Compose lists the same transforms that monai-emma fuse runs."""
    from monai.bundle import ConfigParser

    from monai_emma.fusion import fusion_postprocessing, fusion_preprocessing

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"output_dir": str(tmp_path)})
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    ours = fusion_preprocessing()
    assert [type(t).__name__ for t in pre.transforms] == [type(t).__name__ for t in ours.transforms]
    names = [type(t).__name__ for t in fusion_postprocessing(ours).transforms]
    assert [type(t).__name__ for t in post.transforms] == ["SqueezeDimd", *names, "SaveFusiond"]
    # registration is one id: off by default, rigid or affine when set
    register = [t for t in pre.transforms if type(t).__name__ == "RegisterToMatchd"][0]
    assert register.mode == "none"
    parser.update({"register": "rigid"})
    parser.parse(reset=True)
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    assert [t.mode for t in pre.transforms if type(t).__name__ == "RegisterToMatchd"] == ["rigid"]


def test_overriding_one_id_changes_one_thing(phantom_volume_files, tmp_path):
    data = Path(phantom_volume_files["dicom"]["mri"]).parent
    base, wide, dicom = tmp_path / "base", tmp_path / "wide", tmp_path / "dicom"
    _run("inference.json", dataset_dir=str(data), output_dir=str(base), device="cpu", preview=False)
    # another CT window: only the CT fusion changes
    _run(
        "inference.json",
        dataset_dir=str(data),
        output_dir=str(wide),
        device="cpu",
        preview=False,
        **{"intensity#ct#high": 1500.0},
    )
    assert not np.allclose(
        nib.load(str(base / "dicom_ct.nii.gz")).get_fdata(), nib.load(str(wide / "dicom_ct.nii.gz")).get_fdata()
    )
    np.testing.assert_array_equal(
        nib.load(str(base / "dicom_pet.nii.gz")).get_fdata(), nib.load(str(wide / "dicom_pet.nii.gz")).get_fdata()
    )
    # another output format: derived DICOM series instead of NIfTI
    _run("inference.json", dataset_dir=str(data), output_dir=str(dicom), device="cpu", output_format="dicom")
    import pydicom

    files = sorted((dicom / "dicom_ct").iterdir())
    ds = pydicom.dcmread(files[0])
    assert len(files) == len(list(Path(phantom_volume_files["dicom"]["mri"]).iterdir())) and "DERIVED" in ds.ImageType


def test_train_fuser_runs_on_a_fresh_clone_with_the_shipped_sensors(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    small = {"fuser_samples_per_epoch": 4, "fuser_patch_size": 32, "fuser_batch_size": 2}
    _run(
        "train_fuser.json", dataset_dir=str(phantom_root), run_dir=str(run_dir), epochs=1, overrides=small, device="cpu"
    )
    assert not (run_dir / "models" / "sensors.pt").exists()  # no stage 1: the shipped sensors were used
    assert (run_dir / "models" / "model.pt").is_file()
    history = (run_dir / "models" / "stage2_fuser" / "history_fuser.csv").read_text()
    assert "val_VIF" in history.splitlines()[0]


def test_inference_on_2d_pair_folders(phantom_root, tmp_path):
    out = tmp_path / "out"
    _run("inference.json", dataset_dir=str(phantom_root), output_dir=str(out), device="cpu")
    stems = ["1", "2", "3", "4"]
    # by default PET/SPECT pairs also get their viewer-style overlay; CT pairs do not
    expected = sorted(f"{s}{suffix}" for s in stems for suffix in (".png", "_overlay.png"))
    assert sorted(p.name for p in (out / "MRI_PET").iterdir()) == expected
    assert sorted(p.name for p in (out / "MRI_CT").iterdir()) == [f"{s}.png" for s in stems]
    assert (out / "MRI_CT_preview.png").is_file() and (out / "MRI_PET_preview.png").is_file()
    # one id each: no overlay, a fidelity report per pair
    out2 = tmp_path / "report"
    _run(
        "inference.json", dataset_dir=str(phantom_root), output_dir=str(out2), device="cpu", overlay=False, report=True
    )
    expected = sorted(f"{s}{suffix}" for s in stems for suffix in (".png", "_report.json"))
    assert sorted(p.name for p in (out2 / "MRI_PET").iterdir()) == expected
    assert json.loads((out2 / "MRI_PET" / "1_report.json").read_text())["modalities"] == ["mri", "pet"]


def test_inference_default_sample_from_another_working_directory(tmp_path):
    """No dataset: the bundle writes its phantom sample; paths resolve relative to the bundle."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json")]
    cmd += ["--output_dir", str(out), "--sample_spacing", "4.0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"nifti_pet.nii.gz", "dicom_ct.nii.gz", "dicom_spect_preview.png", "sample"} <= names


def test_two_stage_training_with_mlflow_and_resume(phantom_root, second_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = {"sensor_samples_per_epoch": 32, "fuser_samples_per_epoch": 8}
    roots = [str(phantom_root), str(second_root)]  # a list of roots, as a config may give
    common = dict(dataset_dir=roots, run_dir=str(run_dir), epochs=1, overrides=small, device="cpu")
    _run("train_sensors.json", tracking="mlflow", tracking_uri=uri, **common)
    assert (run_dir / "models" / "sensors.pt").is_file()
    split = json.loads((run_dir / "models" / "split.json").read_text())
    assert split["data"] == roots and any(i.startswith("more/") for i in split["val"])
    _run("train_fuser.json", tracking="mlflow", tracking_uri=uri, **common)
    model = run_dir / "models" / "model.pt"
    from monai_emma.networks import UFuser

    UFuser().load_state_dict(torch.load(model, weights_only=True))  # a U-Fuser state dict
    from monai_emma.extras import scoped_tracking_uri

    with scoped_tracking_uri(uri):  # the process's MLflow URI is left as it was
        runs = mlflow.search_runs(experiment_names=["emma-bundle"])
    assert sorted(runs["tags.mlflow.runName"]) == ["fuser", "sensors"] and set(runs["status"]) == {"FINISHED"}
    fuser = runs[runs["tags.mlflow.runName"] == "fuser"].iloc[0]
    for key in ("metrics.val_loss", "metrics.val_VIF", "metrics.val_Qabf", "metrics.train_total", "metrics.lr"):
        assert np.isfinite(fuser[key]), key
    assert fuser["params.recipe"] == "cpu" and fuser["params.stage"] == "fuser"
    artifacts = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(fuser["run_id"])]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)  # the executed config
    # a second run with more epochs resumes from the epoch-1 checkpoint
    _run("train_sensors.json", **{**common, "epochs": 2})
    history = (run_dir / "models" / "stage1_sensors" / "history_sensors.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1.0", "2.0"]


def test_multi_gpu_overlay_on_two_cpu_processes(one_type_root, tmp_path):
    """torchrun with two gloo ranks on one pair type of 7 pairs: a single validation slice."""
    from monai_emma.data.pairs import find_pairs, split_pairs
    from monai_emma.engines import recipe
    from monai_emma.engines.stages import FUSER
    from monai_emma.engines.two_stage import stage_validator
    from monai_emma.networks import UFuser, load_sensor_bank

    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    configs = f"['{CONFIGS / 'train_sensors.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    cmd += ["--config_file", configs, "--dataset_dir", str(one_type_root), "--run_dir", str(run_dir)]
    cmd += ["--epochs", "1", "--overrides", "{'sensor_samples_per_epoch': 32}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "models" / "sensors.pt").is_file()
    assert len(list((run_dir / "models" / "stage1_sensors").glob("sensors_checkpoint_epoch=*.pt"))) == 1
    # stage 2 on both ranks: one rank scores the validation slice, the other a weight-0 copy
    configs = f"['{CONFIGS / 'train_fuser.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    small = "{'fuser_samples_per_epoch': 8, 'fuser_patch_size': 32, 'fuser_batch_size': 2}"
    cmd[cmd.index("--config_file") + 1] = configs
    cmd[cmd.index("--overrides") + 1] = small
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, row = (run_dir / "models" / "stage2_fuser" / "history_fuser.csv").read_text().splitlines()
    values = dict(zip(header.split(","), map(float, row.split(","))))
    assert values["val_loss"] > 0 and 0 < values["val_SSIM"] <= 2 and (run_dir / "models" / "model.pt").is_file()
    # the scores equal one process validating the final weights on the same slice
    _, val = split_pairs(find_pairs(one_type_root))
    assert len(val) == 1
    fuser = UFuser()
    fuser.load_state_dict(torch.load(run_dir / "models" / "model.pt", weights_only=True))
    sensors = load_sensor_bank(run_dir / "models" / "sensors.pt").freeze()
    evaluator = stage_validator(FUSER, val, recipe("cpu"), torch.device("cpu"), fuser, sensors)
    evaluator.run()
    for key in ("val_loss", "val_MI", "val_VIF", "val_Qabf", "val_SSIM"):
        metric = "val_loss" if key == "val_loss" else key[4:]
        assert values[key] == pytest.approx(evaluator.state.metrics[metric], rel=1e-5), key


def test_verify_net_in_out_and_pt2_export(tmp_path):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        device="cpu",
    )
    path = tmp_path / "model.pt2"
    _run("export.json", export_path=str(path))
    program = torch.export.load(str(path)).module()
    from monai_emma.networks import ufuser
    from monai_emma.weights import UFuserWeights

    net = ufuser(weights=UFuserWeights.DEFAULT)
    x = torch.rand(2, 2, 40, 64)  # another batch and size than the export example
    with torch.no_grad():
        assert (program(x) - net(x)).abs().max() < 1e-4


@pytest.mark.parametrize("config", ["inference.json", "train_fuser.json"])
def test_wrong_dataset_dir_is_one_line(config, tmp_path):
    """Under `python -m monai.bundle` a missing --dataset_dir is one line and status 2, not a
    traceback ending in "Failed to evaluate ConfigExpression"; from Python it is an exception."""
    missing = tmp_path / "nope"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / config)]
    cmd += ["--dataset_dir", str(missing), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"monai-emma bundle: error: {missing}: no such dataset folder (--dataset_dir)"
    )
    assert "Traceback" not in proc.stderr and "ConfigExpression" not in proc.stderr
    from monai_emma.bundle import BundleInputError, sample_dataset

    with pytest.raises(BundleInputError, match="no such dataset folder"):
        sample_dataset(str(missing), str(tmp_path))


def test_monai_onnx_export_has_dynamic_sizes(tmp_path):
    """MONAI's own `python -m monai.bundle onnx_export` with the bundle's args file: one ONNX graph
    for any batch and size, equal to PyTorch with the shipped weights."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from monai_emma.networks import ufuser
    from monai_emma.networks.export import check_onnx
    from monai_emma.weights import UFuserWeights

    path = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "--args_file", "configs/onnx_export.json"]
    proc = subprocess.run([*cmd, "--filepath", str(path)], cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    net = ufuser(weights=UFuserWeights.DEFAULT)
    assert check_onnx(path, net, [(1, 256, 256), (2, 97, 131), (1, 16, 16)]) < 1e-5


def test_monai_verify_net_in_out_from_the_metadata_alone():
    """`python -m monai.bundle verify_net_in_out` with the bundle's own metadata, no args file and no --n."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified with no error" in proc.stdout + proc.stderr


def test_monai_onnx_export_from_the_metadata_alone(tmp_path):
    """`python -m monai.bundle onnx_export` without an args file or --input_shape: the example input comes
    from metadata.json's spatial_shape (16 x 16 for n = 1; 8 x 8 made the export fail)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def"]
    cmd += ["--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json"]
    cmd += ["--ckpt_file", "models/model.pt", "--filepath", str(path)]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert path.is_file() and path.stat().st_size > 1_000_000
    model = onnx.load(str(path))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 2, 16, 16]  # a fixed-size graph: configs/onnx_export.json gives dynamic axes
    ort = pytest.importorskip("onnxruntime")
    from monai_emma.networks import ufuser
    from monai_emma.weights import UFuserWeights

    x = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        expected = ufuser(weights=UFuserWeights.DEFAULT)(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {model.graph.input[0].name: x.numpy()})
    assert np.abs(got - expected).max() < 1e-4


def test_train_fuser_fine_tunes_from_init(phantom_root, tmp_path):
    """``--init v3``: stage 2 starts from v3 against v3's sensors (learning rate 0: the result is
    v3 itself), the init is recorded, and a missing init is one error naming it."""
    from monai_emma.bundle import BundleInputError, training_init
    from monai_emma.engines.finetune import state_sha256
    from monai_emma.weights import get_weights

    run_dir = tmp_path / "run"
    small = {"fuser_samples_per_epoch": 4, "fuser_patch_size": 32, "fuser_batch_size": 2, "val_slices": 2, "alpha": 0}
    common = dict(dataset_dir=str(phantom_root), run_dir=str(run_dir), epochs=1, device="cpu")
    _run("train_fuser.json", init="v3", overrides={**small, "fuser_lr": 0}, **common)
    models = run_dir / "models"
    model = torch.load(models / "model.pt", weights_only=True)
    v3 = get_weights("v3").get_state_dict()
    assert all(torch.equal(model[k], v3[k]) for k in v3)
    sensors = torch.load(models / "sensors.pt", weights_only=True)  # beside the model, as in a bundle
    assert state_sha256(sensors) == state_sha256(get_weights("v3", "sensors").get_state_dict())
    init = json.loads((models / "config.json").read_text())["extra"]["init"]
    assert init["given"] == "v3" and init["sha256"] == state_sha256(v3)
    with pytest.raises(BundleInputError, match="missing.pt: no such weights file or folder"):
        training_init("missing.pt")  # under python -m monai.bundle: one line, status 2 (input_error)
    assert training_init("") is None  # the default: no fine-tuning
