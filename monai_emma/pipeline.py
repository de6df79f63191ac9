"""EMMA's two stages on Ray Train V2, tracked in MLflow and registered in its model registry.

The driver (:func:`run_pipeline`, CLI ``pipelines/train.py``) runs stage 1 (pseudo-sensors) and
stage 2 (U-Fuser) as two ``TorchTrainer.fit()`` calls named ``<name>-sensors`` and
``<name>-fuser``; stage 2 receives stage 1's final checkpoint. Every worker runs the package's
single training engine (:func:`monai_emma.engines.sensor_trainer` / ``fuser_trainer``) with DDP
through Ray's ``prepare_model`` and a distributed sampler, reports a checkpoint every epoch, and
resumes from ``ray.train.get_checkpoint()`` after a failure or a driver restart.

MLflow: the driver opens one parent run (reused when the same ``--name`` runs again) and one
child run per stage; world rank 0 logs parameters, per-epoch losses, learning rate, validation
metrics, system metrics and (stage 2) a PNG of fused validation slices. At the end the driver
logs the U-Fuser as an MLflow model (pickle format, signature with dynamic batch, height and
width, an input example), attaches the bundle files, registers it (``emma-ufuser``) and the
sensors (``emma-sensor-<modality>``), and sets the alias (``candidate``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PipelineOptions",
    "PipelineResult",
    "run_pipeline",
    "train_loop_per_worker",
    "local_defaults",
    "write_run_folder",
    "FAIL_ENV",
]

logger = logging.getLogger("monai_emma.pipeline")

#: Test hook: ``"<stage>:<epoch>"`` makes the last worker raise once when that epoch starts.
FAIL_ENV = "EMMA_PIPELINE_FAIL_AT"
STAGES = ("sensors", "fuser")
_STAGE_FILES = {"sensors": "sensors.pt", "fuser": "ufuser.pt"}


def _quiet_env() -> None:
    """Nothing leaves the machine: no MLflow telemetry, no Ray usage statistics."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")


@dataclass
class PipelineOptions:
    """What ``pipelines/train.py`` accepts (same names as its flags)."""

    data: str | list[str]  # one data root or several
    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    storage_path: str | None = None
    name: str = "emma"
    max_failures: int = 1
    tracking_uri: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    sensor_epochs: int | None = None
    fuser_epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    run_root: str = "emma-runs"
    experiment: str = "emma-pipeline"
    model_name: str = "emma-ufuser"
    alias: str = "candidate"
    address: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def train_config(self):
        from monai_emma.engines import recipe
        from monai_emma.engines.steps import IDENTITY_SENSORS

        name = self.recipe or ("paper" if self.use_gpu else "cpu")
        cfg = recipe(
            name,
            epochs=self.epochs,
            sensor_epochs=self.sensor_epochs,
            fuser_epochs=self.fuser_epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            **self.overrides,
        )
        if cfg.sensor_preset == IDENTITY_SENSORS:
            raise ValueError(
                "sensor_preset=identity (the no-pseudo-sensing ablation) has no stage 1 to distribute; "
                "run it with `monai-emma train --sensors identity`"
            )
        return cfg


@dataclass
class PipelineResult:
    """Where everything went."""

    parent_run_id: str
    stage_checkpoints: dict[str, str]
    model_uri: str
    model_version: str
    sensor_versions: dict[str, str]
    tracking_uri: str
    seconds: float


def local_defaults(run_root: str | os.PathLike) -> tuple[str, str, str]:
    """Embedded defaults under ``run_root``: (Ray storage path, SQLite tracking URI, artifact location)."""
    root = Path(run_root).resolve()
    return str(root / "ray"), f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


# ----------------------------------------------------------------------------- worker side


class _RayEpochReport:
    """Per-epoch hand-off to Ray and MLflow (attached after the engine's checkpoint and bookkeeping).

    Rank 0 packs the epoch checkpoint, history and current weights into a Ray checkpoint and logs
    ``engine.state.metrics`` to MLflow; every rank calls ``ray.train.report`` once per epoch.
    """

    def __init__(self, stage: str, out_dir: Path, export, rank: int, fail_at: int | None, marker: Path | None):
        self.stage, self.out_dir, self.export, self.rank = stage, out_dir, export, rank
        self.fail_at, self.marker = fail_at, marker

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.maybe_fail)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def maybe_fail(self, engine: Any) -> None:
        if self.fail_at is None or self.marker is None or engine.state.epoch != self.fail_at:
            return
        import ray.train

        if self.rank == ray.train.get_context().get_world_size() - 1 and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"failed once at {self.stage} epoch {self.fail_at}\n")
            # a real crash comes mid-epoch: give the controller time to register the previous
            # epoch's checkpoint first (raising at once races with that registration)
            time.sleep(5)
            raise RuntimeError(f"injected failure ({FAIL_ENV}) at {self.stage} epoch {self.fail_at}")

    def report(self, engine: Any) -> None:
        import ray.train

        from monai_emma.engines.trainer import save_state

        epoch = int(engine.state.epoch)
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, int | float)}
        metrics["epoch"] = epoch
        if self.rank != 0:
            ray.train.report(metrics)
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        with tempfile.TemporaryDirectory(prefix="emma-ckpt-") as tmp:
            for f in self.out_dir.iterdir():
                if f.is_file() and f.suffix in (".pt", ".csv", ".json"):
                    shutil.copy2(f, tmp)
            net = engine.network.module if hasattr(engine.network, "module") else engine.network
            save_state(self.export(net), Path(tmp) / _STAGE_FILES[self.stage])
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(out_dir: Path) -> int:
    """Copy Ray's latest checkpoint (if any) into ``out_dir``; returns its epoch (0 when none)."""
    import ray.train

    from monai_emma.engines.trainer import latest_checkpoint

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        for f in Path(d).iterdir():
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
    for stage in STAGES:
        latest = latest_checkpoint(out_dir, stage)
        if latest is not None:
            return int(latest.stem.split("epoch=")[1])
    return 0


def _fused_preview(fuser: torch.nn.Module, val_pairs, device: torch.device, path: Path, count: int = 4) -> Path | None:
    from monai_emma.engines.two_stage import validation_slices
    from monai_emma.io.png import save_montage

    slices = validation_slices(list(val_pairs)[:count])
    if not slices:
        return None
    rows = []
    fuser = fuser.eval()
    with torch.inference_mode():
        for s in slices:
            x = torch.cat([s["a"], s["b"]])[None].to(device)
            rows.append([s["a"][0].numpy(), s["b"][0].numpy(), fuser(x)[0, 0].float().cpu().numpy()])
    return save_montage(rows, path, titles=["anatomical", "other", "EMMA fused"])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of one stage: the package's engine under DDP, reporting every epoch."""
    _quiet_env()
    import ray.train
    import ray.train.torch

    from monai_emma.data.pairs import find_pairs, split_pairs
    from monai_emma.engines import TrainConfig, fuser_trainer, load_sensor_bank, sensor_trainer
    from monai_emma.engines.two_stage import _bank_export

    stage = config["stage"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = TrainConfig.from_dict(config["train_config"])
    train_pairs, val_pairs = split_pairs(find_pairs(config["data"]), cfg.val_fraction, cfg.seed)
    out_dir = Path(tempfile.mkdtemp(prefix=f"emma-{stage}-rank{rank}-"))
    start = _restore(out_dir)
    if config.get("attempts_file"):  # one line per rank and attempt: where it ran and resumed from
        import ray

        node = ray.get_runtime_context().get_node_id()
        line = {"stage": stage, "rank": rank, "node": node, "start_epoch": start, "time": time.time()}
        with open(config["attempts_file"], "a") as f:
            f.write(json.dumps(line) + "\n")

    def wrap(net: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        return ray.train.torch.prepare_model(net, parallel_strategy_kwargs={"find_unused_parameters": find_unused})

    fail = config.get("fail_at") or {}
    fail_at = fail.get("epoch") if fail.get("stage") == stage else None
    export = _bank_export if stage == "sensors" else (lambda net: net.state_dict())
    report = _RayEpochReport(stage, out_dir, export, rank, fail_at, Path(fail["marker"]) if fail else None)
    kwargs = dict(
        resume=True,
        progress=False,
        rank=rank,
        world_size=world,
        distributed=wrap if world > 1 else False,
        extra_handlers=[report],
    )
    if stage == "sensors":
        trainer, _ = sensor_trainer(train_pairs, val_pairs, cfg, out_dir, device, **kwargs)
    else:
        with ray_checkpoint_dir(config["sensors_checkpoint"]) as d:
            sensors = load_sensor_bank(Path(d) / _STAGE_FILES["sensors"], map_location=device)
        trainer, _ = fuser_trainer(train_pairs, val_pairs, sensors, cfg, out_dir, device, **kwargs)

    if rank != 0 or not config.get("mlflow_run_id"):
        trainer.run()
        return
    import mlflow

    mlflow.set_tracking_uri(config["tracking_uri"])
    with mlflow.start_run(run_id=config["mlflow_run_id"], log_system_metrics=True):
        if start == 0:
            mlflow.log_params({"workers": world, "device": str(device), **_flat(cfg.to_dict(), stage)})
        trainer.run()
        if stage == "fuser":
            net = trainer.network.module if hasattr(trainer.network, "module") else trainer.network
            png = _fused_preview(net, val_pairs, device, out_dir / "fused_validation.png")
            if png is not None:
                mlflow.log_artifact(str(png))


def _flat(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    from monai_emma.engines.config import StageConfig
    from monai_emma.engines.trainer import _flat_params

    return _flat_params(cfg, stage, StageConfig(**cfg["sensor" if stage == "sensors" else "fuser"]))


# ----------------------------------------------------------------------------- driver side


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"])
        return
    # embedded default: a local runtime on loopback, no dashboard
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")


def _find_or_create_run(client, experiment_id: str, tags: dict[str, str], name: str, parent: str | None = None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    order = ["attributes.start_time DESC"]
    found = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=order)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = dict(tags)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def _experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _log_and_register(client, opts: PipelineOptions, parent_id: str, fuser_ckpt: str, sensors_ckpt: str):
    """Log the final U-Fuser and sensors as MLflow models in the parent run and register them."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from monai_emma.engines import load_sensor_bank
    from monai_emma.networks import UFuser

    requirements = [f"torch=={torch.__version__.split('+')[0]}", "monai-emma"]
    net = UFuser()
    with ray_checkpoint_dir(fuser_ckpt) as d:
        net.load_state_dict(torch.load(Path(d) / _STAGE_FILES["fuser"], map_location="cpu", weights_only=True))
    net = net.eval()
    example = np.random.default_rng(0).random((1, 2, 64, 64), dtype=np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),
    )
    while mlflow.active_run() is not None:
        mlflow.end_run()
    with mlflow.start_run(run_id=parent_id):
        info = mlflow.pytorch.log_model(
            net,
            name="ufuser",
            serialization_format="pickle",
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=opts.model_name,
        )
        bundle = Path(__file__).resolve().parents[1] / "bundles" / "emma"
        for sub in ("configs", "docs"):
            if (bundle / sub).is_dir():
                client.log_artifacts(parent_id, str(bundle / sub), artifact_path=f"bundle/{sub}")
        sensor_versions = {}
        with ray_checkpoint_dir(sensors_ckpt) as d:
            bank = load_sensor_bank(Path(d) / _STAGE_FILES["sensors"])
        for modality, sensor in bank.sensors.items():
            sinfo = mlflow.pytorch.log_model(
                sensor.eval(),
                name=f"sensor-{modality}",
                serialization_format="pickle",
                pip_requirements=requirements,
                registered_model_name=f"emma-sensor-{modality}",
            )
            sensor_versions[modality] = str(sinfo.registered_model_version)
            client.set_registered_model_alias(f"emma-sensor-{modality}", opts.alias, sinfo.registered_model_version)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(opts.model_name, opts.alias, version)
    return f"models:/{opts.model_name}/{version}", version, sensor_versions


def ray_checkpoint_dir(path: str):
    """``with ray_checkpoint_dir(path) as d``: a local folder with a (possibly remote) checkpoint's files."""
    import ray.train

    return ray.train.Checkpoint(path).as_directory()


def run_pipeline(opts: PipelineOptions) -> PipelineResult:
    """Run (or resume) both stages on Ray, tracked in MLflow; register the U-Fuser.

    Rerunning with the same ``name`` and storage resumes: finished stages are skipped (their
    checkpoints are recorded on the parent MLflow run), an interrupted stage continues from its
    last checkpoint, and the MLflow runs are reused rather than duplicated.
    """
    _quiet_env()
    import mlflow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from monai_emma.data.pairs import data_roots, find_pairs

    t0 = time.perf_counter()
    find_pairs(opts.data)  # fail early, with a clear message, before anything starts
    cfg = opts.train_config()
    storage_default, uri_default, artifacts_default = local_defaults(opts.run_root)
    storage = opts.storage_path or storage_default
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    tracking_uri = opts.tracking_uri or uri_default
    Path(opts.run_root).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exp_id = _experiment(client, opts.experiment, artifacts_default if not opts.tracking_uri else None)
    parent_id = _find_or_create_run(client, exp_id, {"emma.pipeline": opts.name, "emma.role": "parent"}, opts.name)
    if "data" not in client.get_run(parent_id).data.params:
        client.log_param(parent_id, "data", ", ".join(data_roots(opts.data)))
        client.log_param(parent_id, "recipe", cfg.recipe)
    _init_ray(opts.address)

    fail_at = None
    if os.environ.get(FAIL_ENV):
        stage, epoch = os.environ[FAIL_ENV].split(":")
        marker = Path(opts.run_root).resolve() / f".{opts.name}-failed"
        fail_at = {"stage": stage, "epoch": int(epoch), "marker": str(marker)}
    checkpoints: dict[str, str] = {}
    for stage in STAGES:
        tag = f"emma.checkpoint.{stage}"
        done = client.get_run(parent_id).data.tags.get(tag)
        if done and _exists(done):
            logger.info("stage %s already finished: %s", stage, done)
            checkpoints[stage] = done
            continue
        child_id = _find_or_create_run(
            client,
            exp_id,
            {"emma.pipeline": opts.name, "emma.role": "stage", "emma.stage": stage},
            f"{opts.name}-{stage}",
            parent=parent_id,
        )
        loop_config = {
            "stage": stage,
            "data": [r if "://" in r else str(Path(r).resolve()) for r in data_roots(opts.data)],
            "train_config": cfg.to_dict(),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": child_id,
            "sensors_checkpoint": checkpoints.get("sensors"),
            "attempts_file": str(Path(opts.run_root).resolve() / f"{opts.name}-attempts.jsonl"),
            "fail_at": fail_at,
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=opts.num_workers, use_gpu=opts.use_gpu, resources_per_worker=opts.resources_per_worker
            ),
            run_config=RunConfig(
                name=f"{opts.name}-{stage}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"stage {stage} finished without a checkpoint")
        checkpoints[stage] = result.checkpoint.path
        client.set_tag(parent_id, tag, checkpoints[stage])
        client.set_terminated(child_id, "FINISHED")
    tags = client.get_run(parent_id).data.tags
    if "emma.model_uri" in tags:  # a finished pipeline run again: nothing new to register
        model_uri, version = tags["emma.model_uri"], tags["emma.model_version"]
        sensor_versions = json.loads(tags.get("emma.sensor_versions", "{}"))
    else:
        model_uri, version, sensor_versions = _log_and_register(
            client, opts, parent_id, checkpoints["fuser"], checkpoints["sensors"]
        )
        client.set_tag(parent_id, "emma.model_version", version)
        client.set_tag(parent_id, "emma.sensor_versions", json.dumps(sensor_versions))
        client.set_tag(parent_id, "emma.model_uri", model_uri)
    write_run_folder(opts.run_root, opts.name, opts.data, cfg, checkpoints)
    client.set_terminated(parent_id, "FINISHED")
    return PipelineResult(
        parent_id, checkpoints, model_uri, version, sensor_versions, tracking_uri, time.perf_counter() - t0
    )


def write_run_folder(
    run_root: str | os.PathLike, name: str, data: str | list[str], cfg, checkpoints: dict[str, str]
) -> Path:
    """Mirror a finished pipeline run as ``<run_root>/<name>/`` in the layout of ``monai-emma
    train`` (``config.json``, ``split.json``, ``stage1_sensors/``, ``stage2_fuser/``), so the
    same tools (e.g. ``scripts/ship_weights.py``) work on both."""
    from monai_emma.data.pairs import find_pairs, split_pairs, split_record

    folder = Path(run_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    train, val = split_pairs(find_pairs(data), cfg.val_fraction, cfg.seed)
    (folder / "config.json").write_text(cfg.to_json())
    (folder / "split.json").write_text(json.dumps(split_record(data, train, val), indent=1))
    for stage, sub in (("sensors", "stage1_sensors"), ("fuser", "stage2_fuser")):
        if stage in checkpoints:
            with ray_checkpoint_dir(checkpoints[stage]) as d:
                shutil.copytree(d, folder / sub, dirs_exist_ok=True)
    return folder


def _exists(path: str) -> bool:
    return "://" in path or Path(path).exists()
