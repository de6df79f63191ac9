"""The pipeline as a Ray *job* on a real multi-process cluster, tracked by an MLflow server.

Everything runs on 127.0.0.1 with the commands of docs/cluster.md ("Several nodes on one
machine"): a head node and a second node as separate ``ray start`` processes (one CPU each, own
temp dirs and ports), ``mlflow server`` with a SQLite store, ``ray job submit --working-dir``.
The first test runs both stages and checks what a team would look at afterwards; the second
kills the second node during stage 2, restarts it, and checks that the job finishes from the
last checkpoint with nothing registered or logged twice. Every process a test started is
killed by its pid at the end, also when the test fails.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray.dashboard.optional_deps", reason="needs the [distributed] extra (ray[default])")
pytest.importorskip("mlflow", reason="needs the [tracking] extra")
if not sys.platform.startswith("linux"):
    pytest.skip("the loopback cluster finds its processes through /proc", allow_module_level=True)

from tests.loopback_cluster import LoopbackCluster  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.xdist_group("ray-cluster"),
]

REPO = Path(__file__).resolve().parents[1]
TINY = ["--override", "sensor_samples_per_epoch=32", "--override", "fuser_samples_per_epoch=8"]


@pytest.fixture(scope="module")
def cluster():
    # Ray's socket paths must stay short: a short folder under /tmp, not pytest's deep tmp path
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="emma-lc-", dir="/tmp"))
    c = LoopbackCluster(root)
    try:
        c.start_head()
        c.start_worker("node2")
        c.start_mlflow()
        yield c
    finally:
        killed = c.stop()
        left = [pid for p in c.processes for pid in p.pids]
        shutil.rmtree(root, ignore_errors=True)
        assert killed and not left, f"processes left running: {left}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, phantom_root, one_type_root):
    """A folder 'both nodes see' (one machine: any local folder), with the data and Ray storage:
    ``data`` (MRI-CT and MRI-PET) and ``ct7`` (one pair type of 7 pairs, one validation slice)."""
    root = tmp_path_factory.mktemp("cluster_shared")
    shutil.copytree(phantom_root, root / "data")
    shutil.copytree(one_type_root, root / "ct7")
    return root


def _entrypoint(shared: Path, name: str, tracking_uri: str, *extra: str, data: str = "data") -> list[str]:
    return [
        "python", "pipelines/train.py", "--data", str(shared / data),
        "--num-workers", "2", "--resources-per-worker", '{"CPU": 1}',
        "--tracking-uri", tracking_uri, "--storage-path", str(shared / "ray"),
        "--run-root", str(shared / "runs"), "--name", name, *TINY, *extra,
    ]  # fmt: skip


def _attempts(shared: Path, name: str) -> list[dict]:
    path = shared / "runs" / f"{name}-attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _runs(client, name: str):
    exp = client.get_experiment_by_name("emma-pipeline")
    return client.search_runs([exp.experiment_id], f"tags.`emma.pipeline` = '{name}'")


def _assert_job(cluster: LoopbackCluster, job_id: str, timeout: float) -> None:
    status = cluster.wait_for_job(job_id, timeout)
    assert status == "SUCCEEDED", f"job {job_id}: {status}\n{cluster.job_logs(job_id)[-6000:]}"


def _fuse_like_checkpoint(client, model_uri: str, weights: Path) -> None:
    """The registered U-Fuser, loaded back from the server, fuses a pair as the final checkpoint does."""
    import mlflow

    from monai_emma.extras import scoped_tracking_uri
    from monai_emma.networks import UFuser

    with scoped_tracking_uri(client.tracking_uri):  # the process's MLflow URI is left as it was
        served = mlflow.pyfunc.load_model(model_uri)
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    net = UFuser()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    got = np.asarray(served.predict(x.numpy()))
    assert got.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pipeline_job_on_a_two_node_cluster(cluster, shared):
    from mlflow import MlflowClient

    name = "lc-job"
    t = time.monotonic()
    cluster.submit(REPO, _entrypoint(shared, name, cluster.tracking_uri, "--epochs", "1"), name)
    _assert_job(cluster, name, timeout=900)
    seconds = time.monotonic() - t
    print(f"\n[cluster] job {name} succeeded in {seconds:.0f} s")

    client = MlflowClient(cluster.tracking_uri)
    runs = _runs(client, name)
    roles = sorted(r.data.tags["emma.role"] for r in runs)
    assert roles == ["parent", "stage", "stage"]
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = next(r for r in runs if r.data.tags["emma.role"] == "parent")
    stages = {r.data.tags["emma.stage"]: r for r in runs if r.data.tags["emma.role"] == "stage"}
    assert set(stages) == {"sensors", "fuser"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    assert stages["fuser"].data.metrics and stages["sensors"].data.metrics  # logged by rank 0 through the server

    # registered on the server, with the alias, and the artifacts served by it
    version = client.get_model_version_by_alias("emma-ufuser", "candidate")
    assert version.version == parent.data.tags["emma.model_version"] == "1"
    sensor_versions = json.loads(parent.data.tags["emma.sensor_versions"])
    assert len(sensor_versions) == 3  # MRI, CT and PET pseudo-sensors
    for modality, v in sensor_versions.items():
        assert client.get_model_version_by_alias(f"emma-sensor-{modality}", "candidate").version == v == "1"
    assert not (shared / "runs" / "mlflow.db").exists()  # the server holds everything, no SQLite file
    from monai_emma.engines.stages import FUSER, RunLayout

    weights = RunLayout(shared / "runs" / name).weights(FUSER)  # the final stage-2 checkpoint's weights
    _fuse_like_checkpoint(client, "models:/emma-ufuser@candidate", weights)

    # the workers of both stages ran on both nodes
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    attempts = _attempts(shared, name)
    for stage in ("sensors", "fuser"):
        ran_on = {a["node"] for a in attempts if a["stage"] == stage}
        assert len(ran_on) == 2 and ran_on <= nodes, (stage, ran_on, nodes)


def _registered_checkpoints(run_storage: Path) -> list[dict]:
    """The checkpoints Ray Train's controller has registered for a run (its snapshot in storage)."""
    try:
        snapshot = json.loads((run_storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return list(snapshot.get("checkpoint_results", []))


def _wait_for(predicate, timeout: float, what: str, cluster: LoopbackCluster, job_id: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        status = cluster.job_status(job_id)
        assert status not in ("SUCCEEDED", "FAILED", "STOPPED"), f"job {status} before {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.job_logs(job_id)[-4000:]}")


def test_lost_node_during_stage_two_is_survived(cluster, shared):
    """Two workers on one pair type of 7 pairs (one validation slice for two ranks); the second
    node is lost during stage 2."""
    from mlflow import MlflowClient

    name, model = "lc-lost", "emma-ufuser-lost"
    epochs = 4
    submitted = time.time()
    args = ["--sensor-epochs", "1", "--fuser-epochs", str(epochs), "--max-failures", "3", "--model-name", model]
    cluster.submit(REPO, _entrypoint(shared, name, cluster.tracking_uri, *args, data="ct7"), name)
    fuser_storage = shared / "ray" / f"{name}-fuser"

    # stage 2 has a registered checkpoint: kill every process of the second node. (A checkpoint
    # folder alone is not enough: Ray registers it only once every rank has reported that epoch;
    # a node lost before that resumes from the checkpoint before, here epoch 0.)
    _wait_for(lambda: _registered_checkpoints(fuser_storage), 900, "a registered stage-2 checkpoint", cluster, name)
    node2 = next(p for p in cluster.processes if p.name == "node2")
    killed_at = time.time()
    assert node2.kill()
    assert not node2.pids
    before = _attempts(shared, name)
    assert {a["stage"] for a in before} == {"sensors", "fuser"}

    # the node comes back (a new node process, as an operator would restart it)
    cluster.start_worker("node2-restarted")
    _assert_job(cluster, name, timeout=900)
    finished = time.time()

    attempts = _attempts(shared, name)
    retried = [a for a in attempts if a["stage"] == "fuser" and a["time"] > killed_at]
    assert sorted(a["rank"] for a in retried) == [0, 1], retried
    resumed = {a["start_epoch"] for a in retried}
    assert len(resumed) == 1 and 1 <= resumed.pop() < epochs, retried  # the last checkpoint, not epoch 0
    recovery = min(a["time"] for a in retried) - killed_at
    new_nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert {a["node"] for a in retried} <= new_nodes
    print(
        f"\n[cluster] lost node: killed {killed_at - submitted:.0f} s into the job; both workers back "
        f"{recovery:.0f} s later, resumed at epoch {retried[0]['start_epoch']}; job done "
        f"{finished - killed_at:.0f} s after the kill ({finished - submitted:.0f} s in all)"
    )

    client = MlflowClient(cluster.tracking_uri)
    runs = _runs(client, name)
    assert sorted(r.data.tags["emma.role"] for r in runs) == ["parent", "stage", "stage"]  # no duplicates
    assert all(r.info.status == "FINISHED" for r in runs)
    versions = client.search_model_versions(f"name = '{model}'")
    assert [v.version for v in versions] == ["1"]
    fuser_run = next(r for r in runs if r.data.tags.get("emma.stage") == "fuser")
    history = client.get_metric_history(fuser_run.info.run_id, "train_total")
    assert {m.step for m in history} == set(range(1, epochs + 1))  # every epoch was logged
    validation = client.get_metric_history(fuser_run.info.run_id, "val_VIF")
    assert {m.step for m in validation} == set(range(1, epochs + 1)) and all(m.value > 0 for m in validation)
