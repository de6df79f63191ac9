"""Ray Train pipeline: real Ray (local, and a two-node cluster on loopback), real MLflow on SQLite."""

import json
import os

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.xdist_group("ray-local")]

SMALL = {"sensor_samples_per_epoch": 32, "fuser_samples_per_epoch": 8}


@pytest.fixture(scope="module")
def ray_env():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    import ray

    yield
    ray.shutdown()


def _attempts(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _fail_once(marker, epoch: int):
    """An ignite handler for the workers: the last rank raises once when ``epoch`` starts.

    Defined inside a function so that Ray (cloudpickle) ships the class by value to its workers."""

    class FailOnce:
        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.EPOCH_STARTED, self)

        def __call__(self, engine):
            import time

            import ray.train

            last = ray.train.get_context().get_world_size() - 1
            if engine.state.epoch != epoch or ray.train.get_context().get_world_rank() != last or marker.exists():
                return
            marker.write_text(f"failed once at epoch {epoch}\n")
            # a real crash comes mid-epoch: give the controller time to register the previous
            # epoch's checkpoint first (raising at once races with that registration)
            time.sleep(5)
            raise RuntimeError(f"injected failure at epoch {epoch}")

    return FailOnce()


def test_two_workers_both_stages_failure_resume_register_and_rerun(ray_env, phantom_root, second_root, tmp_path):
    import mlflow

    from monai_emma.cli import main as cli
    from monai_emma.pipeline import PipelineOptions, run_pipeline
    from pipelines.train import main as pipeline_main

    run_root = tmp_path / "runs"
    marker = tmp_path / "failed-once"
    roots = [str(phantom_root), str(second_root)]  # two data roots trained together
    opts = PipelineOptions(
        data=roots,
        num_workers=2,
        sensor_epochs=2,
        fuser_epochs=1,
        run_root=str(run_root),
        name="t1",
        overrides=SMALL,
        worker_handlers={"sensors": [_fail_once(marker, epoch=2)]},  # the last worker raises once
    )
    first = run_pipeline(opts)
    # where the time went: every phase of the fit is accounted for
    from monai_emma.pipeline.driver import STAGE_PHASES

    stages = first.timings["stages"]
    assert set(stages) == {"sensors", "fuser"}
    fuser_times = stages["fuser"]
    assert fuser_times["worker_start"] > 0 and fuser_times["steps"] > 0 and fuser_times["steps_count"] >= 1
    accounted = sum(fuser_times.get(k, 0.0) for k in STAGE_PHASES)
    assert accounted == pytest.approx(fuser_times["fit"], rel=0.1, abs=1.0), fuser_times
    assert first.timings["driver"]["ray_init"] > 0 and first.timings["driver"]["registration"] > 0
    assert json.loads((run_root / "t1" / "timings.json").read_text()) == first.timings
    attempts = _attempts(run_root / "t1-attempts.jsonl")
    sensors0 = [a["start_epoch"] for a in attempts if a["stage"] == "sensors" and a["rank"] == 0]
    assert sensors0 == [0, 1]  # restarted by Ray and resumed from the epoch-1 checkpoint, not from 0
    assert marker.is_file()

    uri = f"sqlite:///{run_root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("emma-pipeline")
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["t1", "t1-fuser", "t1-sensors"] and {r.info.status for r in runs} == {"FINISHED"}
    parent = by_name["t1"].info.run_id
    fuser = by_name["t1-fuser"]
    assert fuser.data.tags["mlflow.parentRunId"] == parent
    assert {"val_loss", "val_VIF", "train_total", "lr"} <= set(fuser.data.metrics)
    assert any(k.startswith("system/") for k in fuser.data.metrics)  # system metrics (psutil)
    assert fuser.data.params["recipe"] == "cpu" and fuser.data.params["workers"] == "2"
    assert "fused_validation.png" in [a.path for a in client.list_artifacts(fuser.info.run_id)]
    assert "bundle/configs" in [a.path for a in client.list_artifacts(parent, "bundle")]
    parent_metrics = by_name["t1"].data.metrics
    assert parent_metrics["time/fuser/steps"] == pytest.approx(fuser_times["steps"])
    assert parent_metrics["time/total"] > 0
    history = client.get_metric_history(by_name["t1-sensors"].info.run_id, "train_total")
    assert sorted(m.step for m in history) == [1, 2]
    version = client.get_model_version_by_alias("emma-ufuser", "candidate")
    modalities = ("mri", "ct", "pet", "spect")  # the second root brings SPECT
    assert {m: client.get_model_version_by_alias(f"emma-sensor-{m}", "candidate").version for m in modalities}

    # the registered model fuses like the checkpoint, for slice sizes it never saw
    ckpt = by_name["t1"].data.tags["emma.checkpoint.fuser"]
    from monai_emma.networks import UFuser

    net = UFuser()
    net.load_state_dict(torch.load(os.path.join(ckpt, "ufuser.pt"), weights_only=True))
    net.eval()
    x = np.random.default_rng(0).random((2, 2, 44, 70), dtype=np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    from monai_emma.extras import scoped_tracking_uri

    with scoped_tracking_uri(uri):  # the process's MLflow URI is left as it was (later tests share it)
        got = mlflow.pyfunc.load_model(f"models:/emma-ufuser/{version.version}").predict(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    a, b = phantom_root / "MRI_PET" / "MRI" / "1.png", phantom_root / "MRI_PET" / "PET" / "1.png"
    out_uri, out_ckpt = tmp_path / "uri.png", tmp_path / "ckpt.png"
    assert (
        cli(
            [
                "fuse",
                str(a),
                str(b),
                "-o",
                str(out_uri),
                "--model-uri",
                "models:/emma-ufuser@candidate",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    assert cli(["fuse", str(a), str(b), "-o", str(out_ckpt), "--weights", os.path.join(ckpt, "ufuser.pt")]) == 0
    assert out_uri.read_bytes() == out_ckpt.read_bytes()

    # the same name again, from the command line: nothing retrained, no duplicated runs, no new version
    args = ["--data", roots[0], "--data", roots[1], "--num-workers", "2", "--sensor-epochs", "2", "--fuser-epochs", "1"]
    args += ["--run-root", str(run_root), "--name", "t1"] + [f"--override={k}={v}" for k, v in SMALL.items()]
    assert pipeline_main(args) == 0
    assert first.model_version == str(version.version)
    assert len(client.search_model_versions("name='emma-ufuser'")) == 1
    assert len(client.search_runs([exp.experiment_id])) == 3
    assert len(_attempts(run_root / "t1-attempts.jsonl")) == len(attempts)
    folder = run_root / "t1"  # mirrored in monai-emma train's layout
    assert (folder / "stage2_fuser" / "ufuser.pt").is_file() and (
        folder / "stage1_sensors" / "history_sensors.csv"
    ).is_file()
    split = json.loads((folder / "split.json").read_text())
    assert split["data"] == roots and any(i.startswith("more/") for i in split["val"])
    assert by_name["t1"].data.params["data"] == ", ".join(roots)


def test_two_node_cluster_one_worker_per_node(ray_env, one_type_root, tmp_path):
    """Two workers on two nodes, on one pair type of 7 pairs: a single validation slice."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from monai_emma.engines import recipe
    from monai_emma.pipeline import train_loop_per_worker

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        attempts = tmp_path / "attempts.jsonl"
        config = {
            "stage": "sensors",
            "data": str(one_type_root),
            "train_config": recipe("cpu", sensor_epochs=1, **SMALL).to_dict(),
            "attempts_file": str(attempts),
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="two-nodes", storage_path=str(tmp_path / "ray")),
        )
        result = trainer.fit()
        assert result.checkpoint is not None and result.metrics["epoch"] == 1
        assert result.metrics["val_loss"] > 0  # one slice, scored by one of the two ranks
        nodes = {a["rank"]: a["node"] for a in _attempts(attempts)}
        assert sorted(nodes) == [0, 1] and nodes[0] != nodes[1]  # one worker on each node
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_bad_data_is_refused_before_ray_starts(tmp_path, capsys):
    from pipelines.train import main as pipeline_main

    assert pipeline_main(["--data", str(tmp_path / "missing"), "--run-root", str(tmp_path / "r")]) == 2
    assert "missing: no such data folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_split_without_training_pairs_is_refused_before_ray_starts(tmp_path, capsys):
    from pipelines.train import main as pipeline_main
    from tests.conftest import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "one", n=1, modalities=("CT",))
    argv = ["--data", str(root), "--run-root", str(tmp_path / "r"), "--override", "val_fraction=0.6"]
    assert pipeline_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{root / 'MRI_CT'}: the split leaves no training pair for MRI_CT" in err
    assert not (tmp_path / "r").exists()


def test_identity_sensor_ablation_is_refused_before_ray_starts(phantom_root, tmp_path, capsys):
    from pipelines.train import main as pipeline_main

    argv = ["--data", str(phantom_root), "--run-root", str(tmp_path / "r"), "--override", "sensor_preset=identity"]
    assert pipeline_main(argv) == 2
    assert "monai-emma train --sensors identity" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_init_is_refused_before_ray_starts(phantom_root, tmp_path, capsys):
    from pipelines.train import main as pipeline_main

    base = ["--data", str(phantom_root), "--run-root", str(tmp_path / "r")]
    cases = [
        (["--init", "missing.pt"], "missing.pt: no such weights file or folder"),
        (["--sensor-epochs", "0"], "--sensor-epochs 0 skips stage 1"),
        (["--init", "v3", "--sensor-epochs", "2"], "--sensor-epochs 2 would train new ones"),
        (["--init-sensors", "v3"], "--init-sensors goes with --init"),
    ]
    for extra, message in cases:
        assert pipeline_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_fine_tuning_v3_records_the_init_and_registers_like_any_run(ray_env, phantom_root, tmp_path, capsys):
    """``--init v3`` with learning rate 0: no stage 1, the registered U-Fuser and sensors are v3's."""
    import mlflow

    from monai_emma.engines.finetune import resolve_init, state_sha256
    from pipelines.train import main as pipeline_main

    run_root = tmp_path / "runs"
    tiny = {**SMALL, "fuser_patch_size": 32, "fuser_batch_size": 2, "val_slices": 2, "alpha": 0, "fuser_lr": 0}
    args = ["--data", str(phantom_root), "--num-workers", "1", "--fuser-epochs", "1", "--run-root", str(run_root)]
    args += ["--name", "ft", "--init", "v3"] + [f"--override={k}={v}" for k, v in tiny.items()]
    assert pipeline_main(args) == 0
    v3 = resolve_init("v3")
    uri = f"sqlite:///{run_root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    runs = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("emma-pipeline").experiment_id])
    }
    assert sorted(runs) == ["ft", "ft-fuser"]  # no stage-1 run
    for name in ("ft", "ft-fuser"):
        params = runs[name].data.params
        assert params["init"] == "v3" and params["init_weights"] == "shipped weights 'v3'", name
        assert params["init_sha256"] == v3.sha256 and params["init_sensors_sha256"] == v3.sensors_sha256, name
    registered = resolve_init("models:/emma-ufuser@candidate", tracking_uri=uri)  # with its registered sensors
    assert registered.sha256 == v3.sha256 and registered.sensors_sha256 == v3.sensors_sha256
    folder = run_root / "ft"
    assert json.loads((folder / "config.json").read_text())["extra"]["init"] == v3.record
    sensors = torch.load(folder / "stage1_sensors" / "sensors.pt", weights_only=True)
    assert state_sha256(sensors) == v3.sensors_sha256 and (folder / "stage2_fuser" / "ufuser.pt").is_file()
    # the same name without --init is another run, refused before Ray starts
    capsys.readouterr()
    assert pipeline_main([a for a in args if a not in ("--init", "v3")]) == 2
    assert "was started with --init v3" in capsys.readouterr().err


def _slice_log(path):
    """A worker handler: after each epoch every rank appends what its data loader received."""

    class SliceLog:
        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

        def __call__(self, engine):
            import resource

            import ray.train

            ds = engine.data_loader.dataset
            line = {
                "rank": ray.train.get_context().get_world_rank(),
                "type": type(ds).__name__,
                "slices": ds.slices_seen,
                "studies": sorted(ds.studies_seen),
                "iterations": engine.state.iteration,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "threads": __import__("torch").get_num_threads(),
                "policy": __import__("monai_emma.threads").threads.current_policy().source,
            }
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")

    return SliceLog()


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    root = tmp_path_factory.mktemp("pipeline-studies")
    write_phantom_nifti(root / "nifti", head_mm=48.0, mri_spacing=3.0)
    write_phantom_dicom(root / "dicom", seed=1, head_mm=48.0, mri_spacing=3.0, modalities=("mri", "ct"))
    return root


def test_a_datalist_streams_through_ray_data_to_two_workers(ray_env, study_root, tmp_path, caplog):
    """One training study read by URI (fewer studies than workers: Ray Data splits its slices), a
    DICOM validation study; both stages, 2 workers fed by ``get_dataset_shard``, on a runtime whose
    2 CPUs the workers hold (the preprocessing tasks must still run)."""
    import logging

    import mlflow
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    caplog.set_level(logging.WARNING, logger="monai_emma.pipeline")

    from monai_emma.data.datalist import load_datalist
    from monai_emma.pipeline import PipelineOptions, run_pipeline
    from monai_emma.studies import preprocess_study

    mri, ct = study_root / "nifti" / "mri.nii.gz", study_root / "nifti" / "ct.nii.gz"
    datalist = tmp_path / "dataset.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [{"mri": mri.as_uri(), "ct": ct.as_uri(), "name": "remote"}],
                "validation": [{"mri": str(study_root / "dicom" / "mri"), "ct": str(study_root / "dicom" / "ct")}],
            }
        )
    )
    log = tmp_path / "slices.jsonl"
    tiny = {**SMALL, "sensor_patch_size": 32, "fuser_patch_size": 32, "fuser_batch_size": 2, "val_slices": 4}
    opts = PipelineOptions(
        datalist=str(datalist),
        num_workers=2,
        epochs=1,
        batch_size=4,
        run_root=str(tmp_path / "runs"),
        overrides=tiny,
        worker_handlers={"sensors": [_slice_log(log)], "fuser": [_slice_log(log)]},
    )
    result = run_pipeline(opts)
    assert result.model_uri == "models:/emma-ufuser/1" and set(result.stage_checkpoints) == {"sensors", "fuser"}
    assert "no CPU beside the 2 Train workers'" in caplog.text

    expected = len(preprocess_study(load_datalist(datalist)[0])["z"])  # the study's slices with foreground
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 4  # 2 stages x 2 ranks
    for stage in (lines[:2], lines[2:]):
        assert {x["rank"] for x in stage} == {0, 1}
        assert all(x["type"] == "StreamedPatchDataset" and x["studies"] == ["MRI_CT/remote"] for x in stage)
        a, b = (x["slices"] for x in stage)
        assert a == b > 0 and expected - 1 <= a + b <= expected  # equal shares, at most one left over
        assert stage[0]["iterations"] == stage[1]["iterations"] > 0  # the ranks stepped together
        assert all(x["threads"] == 1 and x["policy"] == "worker allocation" for x in stage)  # 1 CPU each
    # the Ray Data tasks preprocessed each study once per pass into the cache
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "runs" / "cache").glob("*.npy"))
    assert cached == ["MRI_CT_dicom", "MRI_CT_remote"]
    split = json.loads((tmp_path / "runs" / "emma" / "split.json").read_text())
    assert split["train"] == ["MRI_CT/remote"] and split["val"] == ["MRI_CT/dicom"] and "Ray Data" in split["streamed"]
    client = mlflow.MlflowClient(result.tracking_uri)
    assert client.get_run(result.parent_run_id).data.params["data"] == str(datalist.resolve())
    fuser = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id], "tags.`emma.stage` = 'fuser'")
    assert fuser[0].data.metrics["val_loss"] > 0  # validated on the streamed DICOM study


def test_a_datalist_naming_a_missing_file_is_refused_before_ray_starts(study_root, tmp_path, capsys):
    import time

    from pipelines.train import main as pipeline_main

    datalist = tmp_path / "dataset.json"
    entries = [{"mri": str(study_root / "nifti" / "mri.nii.gz"), "ct": "gone/ct.nii.gz"}]
    datalist.write_text(json.dumps({"training": entries}))
    t0 = time.perf_counter()
    assert pipeline_main(["--datalist", str(datalist), "--run-root", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training[0]" in err and str(tmp_path / "gone" / "ct.nii.gz") in err
    assert not (tmp_path / "r").exists()
    # the datalist options need a datalist
    assert pipeline_main(["--data", str(study_root), "--register", "rigid", "--run-root", str(tmp_path / "r")]) == 2
    assert "--register goes with --datalist" in capsys.readouterr().err
