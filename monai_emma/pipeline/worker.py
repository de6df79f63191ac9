"""The Ray Train side of the pipeline: one worker of one stage runs the package's training engine
under DDP, reports a checkpoint every epoch, and resumes from Ray's latest checkpoint after a
failure or a driver restart. World rank 0 logs to the stage's MLflow run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from monai_emma.engines.stages import FUSER, SENSORS, STAGES, get_stage

__all__ = ["train_loop_per_worker", "quiet_env", "ray_checkpoint_dir"]


def quiet_env() -> None:
    """Nothing leaves the machine: no MLflow telemetry, no Ray usage statistics."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")


def ray_checkpoint_dir(path: str):
    """``with ray_checkpoint_dir(path) as d``: a local folder with a (possibly remote) checkpoint's files."""
    import ray.train

    return ray.train.Checkpoint(path).as_directory()


class _RayEpochReport:
    """Per-epoch hand-off to Ray and MLflow (attached after the engine's checkpoint and bookkeeping).

    Rank 0 packs the epoch checkpoint, history and current weights into a Ray checkpoint and logs
    ``engine.state.metrics`` to MLflow; every rank calls ``ray.train.report`` once per epoch.
    """

    def __init__(self, stage: str, out_dir: Path, export, rank: int):
        self.stage, self.out_dir, self.export, self.rank = get_stage(stage), out_dir, export, rank

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

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
            save_state(self.export(net), Path(tmp) / self.stage.weights_file)
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
        latest = latest_checkpoint(out_dir, stage.checkpoint_prefix)
        if latest is not None:
            return int(latest.stem.split("epoch=")[1])
    return 0


def _fused_preview(fuser: torch.nn.Module, val_pairs, device: torch.device, path: Path, count: int = 4) -> Path | None:
    from monai_emma.engines.validation import validation_slices
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
    quiet_env()
    import ray.train
    import ray.train.torch

    from monai_emma.data.pairs import find_pairs, split_pairs
    from monai_emma.engines import TrainConfig, fuser_trainer, sensor_trainer
    from monai_emma.networks.sensor_bank import load_sensor_bank, sensor_bank_state

    stage = get_stage(config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = TrainConfig.from_dict(config["train_config"])
    train_pairs, val_pairs = split_pairs(find_pairs(config["data"]), cfg.val_fraction, cfg.seed)
    out_dir = Path(tempfile.mkdtemp(prefix=f"emma-{stage.name}-rank{rank}-"))
    start = _restore(out_dir)
    if config.get("attempts_file"):  # one line per rank and attempt: where it ran and resumed from
        import ray

        node = ray.get_runtime_context().get_node_id()
        line = {"stage": stage.name, "rank": rank, "node": node, "start_epoch": start, "time": time.time()}
        with open(config["attempts_file"], "a") as f:
            f.write(json.dumps(line) + "\n")

    def wrap(net: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        return ray.train.torch.prepare_model(net, parallel_strategy_kwargs={"find_unused_parameters": find_unused})

    export = sensor_bank_state if stage is SENSORS else (lambda net: net.state_dict())
    # handlers the caller asked for (e.g. a test's failure injection), then the epoch report
    handlers = [*config.get("worker_handlers", {}).get(stage.name, []), _RayEpochReport(stage, out_dir, export, rank)]
    kwargs = dict(
        resume=True,
        progress=False,
        rank=rank,
        world_size=world,
        distributed=wrap if world > 1 else False,
        extra_handlers=handlers,
    )
    if stage is SENSORS:
        trainer, _ = sensor_trainer(train_pairs, val_pairs, cfg, out_dir, device, **kwargs)
    else:
        with ray_checkpoint_dir(config["sensors_checkpoint"]) as d:
            sensors = load_sensor_bank(Path(d) / SENSORS.weights_file, map_location=device)
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
        if stage is FUSER:
            net = trainer.network.module if hasattr(trainer.network, "module") else trainer.network
            png = _fused_preview(net, val_pairs, device, out_dir / "fused_validation.png")
            if png is not None:
                mlflow.log_artifact(str(png))


def _flat(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    from monai_emma.engines.config import StageConfig
    from monai_emma.engines.trainer import _flat_params

    stage = get_stage(stage)
    return _flat_params(cfg, stage, StageConfig(**cfg[stage.settings_key]))
