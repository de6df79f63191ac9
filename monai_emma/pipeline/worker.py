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

    Rank 0 logs ``engine.state.metrics`` to MLflow, packs the epoch checkpoint, history and current
    weights into a Ray checkpoint and, after the last epoch, ``at_end(engine)`` (the fused
    preview); every rank calls ``ray.train.report`` once per epoch. Rank 0's reports carry the
    worker's :class:`~monai_emma.engines.timing.PhaseTimer` figures (``time_<phase>``) for the
    driver's breakdown.
    """

    def __init__(self, stage: str, out_dir: Path, export, rank: int, timer, started_at: float, at_end=None):
        self.stage, self.out_dir, self.export, self.rank = get_stage(stage), out_dir, export, rank
        self.timer, self.started_at, self.at_end = timer, started_at, at_end

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
            with self.timer.phase("report"):
                ray.train.report(metrics)
            return
        import mlflow

        with self.timer.phase("mlflow"):
            if mlflow.active_run() is not None:
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            if self.at_end is not None and epoch == engine.state.max_epochs:
                self.at_end(engine)
        with tempfile.TemporaryDirectory(prefix="emma-ckpt-") as tmp:
            with self.timer.phase("checkpoint"):
                for f in self.out_dir.iterdir():
                    if f.is_file() and f.suffix in (".pt", ".csv", ".json"):
                        shutil.copy2(f, tmp)
                net = engine.network.module if hasattr(engine.network, "module") else engine.network
                save_state(self.export(net), Path(tmp) / self.stage.weights_file)
            metrics.update({f"time_{k}": v for k, v in self.timer.as_dict().items()})
            metrics["time_worker_started_at"] = self.started_at
            metrics["time_report_at"] = time.time()
            metrics["time_system_metrics_cpu"] = _thread_cpu_seconds("SystemMetricsMonitor")
            with self.timer.phase("report"):
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _thread_cpu_seconds(name: str) -> float:
    """CPU seconds used so far by this process's thread called ``name`` (Linux; 0 elsewhere or
    when there is none), e.g. MLflow's system-metrics sampler."""
    import threading

    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                return 0.0
    return 0.0


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


def _streamed_slices(streamed: dict[str, Any], rank: int):
    """This worker's training slices as a :class:`~monai_emma.data.streaming.SliceStream` over its
    Ray Data shard, and the validation slices (every worker gets them all, ordered by id so that
    the ranks agree on their shares)."""
    import ray.train

    from monai_emma.data.streaming import SliceStream
    from monai_emma.pipeline.data import TRAIN, VALIDATION
    from monai_emma.studies import slice_of_row

    shard = ray.train.get_dataset_shard(TRAIN)

    def rows():
        return (slice_of_row(row) for row in shard.iter_rows())

    stream = SliceStream(rows, streamed["modalities"], int(streamed["slices"]), rank=rank, where=streamed["datalist"])
    val = []
    if streamed.get("validation"):
        val = sorted((slice_of_row(r) for r in ray.train.get_dataset_shard(VALIDATION).iter_rows()), key=lambda s: s.id)
    return stream, val


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of one stage: the package's engine under DDP, reporting every epoch."""
    started_at = time.time()
    quiet_env()
    import ray.train
    import ray.train.torch

    from monai_emma.threads import apply_thread_policy

    # the worker's own CPU allocation (or --threads-per-worker), never the driver's OMP_NUM_THREADS
    apply_thread_policy(int(config.get("threads") or 1), source=config.get("threads_source", "worker allocation"))

    from monai_emma.data.pairs import find_pairs, split_pairs
    from monai_emma.engines import TrainConfig, fuser_trainer, sensor_trainer
    from monai_emma.engines.timing import PhaseTimer
    from monai_emma.networks.sensor_bank import load_sensor_bank, sensor_bank_from_state, sensor_bank_state

    timer = PhaseTimer()
    stage = get_stage(config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = TrainConfig.from_dict(config["train_config"])
    # the worker's own folder: checkpoints reach Ray's storage when reported, so nothing is kept here
    out_dir = Path(tempfile.mkdtemp(prefix=f"emma-{stage.name}-rank{rank}-"))
    try:
        with timer.phase("setup"):
            if config.get("streamed"):  # a datalist: Ray Data shards
                train_pairs, val_pairs = _streamed_slices(config["streamed"], rank)
            else:
                train_pairs, val_pairs = split_pairs(find_pairs(config["data"]), cfg.val_fraction, cfg.seed)
            start = _restore(out_dir)
        if config.get("attempts_file"):  # one line per rank and attempt: where it ran and resumed from
            import ray

            node = ray.get_runtime_context().get_node_id()
            line = {"stage": stage.name, "rank": rank, "node": node, "start_epoch": start, "time": time.time()}
            with open(config["attempts_file"], "a") as f:
                f.write(json.dumps(line) + "\n")

        def wrap(net: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
            return ray.train.torch.prepare_model(net, parallel_strategy_kwargs={"find_unused_parameters": find_unused})

        def preview(engine: Any) -> None:  # rank 0, after the last stage-2 epoch
            import mlflow

            net = engine.network.module if hasattr(engine.network, "module") else engine.network
            png = _fused_preview(net, val_pairs, device, out_dir / "fused_validation.png")
            if png is not None and mlflow.active_run() is not None:
                mlflow.log_artifact(str(png))

        export = sensor_bank_state if stage is SENSORS else (lambda net: net.state_dict())
        at_end = preview if stage is FUSER else None
        report = _RayEpochReport(stage, out_dir, export, rank, timer, started_at, at_end=at_end)
        # handlers the caller asked for (e.g. a test's failure injection), then the epoch report
        handlers = [*config.get("worker_handlers", {}).get(stage.name, []), report]
        kwargs = dict(
            resume=True,
            progress=False,
            rank=rank,
            world_size=world,
            distributed=wrap if world > 1 else False,
            extra_handlers=handlers,
            timer=timer,
        )
        with timer.phase("setup"):
            if stage is SENSORS:
                trainer, _ = sensor_trainer(train_pairs, val_pairs, cfg, out_dir, device, **kwargs)
            elif config.get("init_state"):  # fine-tuning: the init's weights against its sensors
                init = config["init_state"]
                sensors = sensor_bank_from_state(init["sensors"], "the init's sensors").to(device)
                trainer, _ = fuser_trainer(
                    train_pairs, val_pairs, sensors, cfg, out_dir, device, init_state=init["fuser"], **kwargs
                )
            else:
                with ray_checkpoint_dir(config["sensors_checkpoint"]) as d:
                    sensors = load_sensor_bank(Path(d) / SENSORS.weights_file, map_location=device)
                trainer, _ = fuser_trainer(train_pairs, val_pairs, sensors, cfg, out_dir, device, **kwargs)

        if rank != 0 or not config.get("mlflow_run_id"):
            trainer.run()
            return
        import mlflow

        with timer.phase("mlflow"):
            mlflow.set_tracking_uri(config["tracking_uri"])
            run = mlflow.start_run(run_id=config["mlflow_run_id"], log_system_metrics=True)
        with run:
            if start == 0:
                with timer.phase("mlflow"):
                    mlflow.log_params({"workers": world, "device": str(device), **_flat(cfg.to_dict(), stage)})
            trainer.run()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _flat(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    from monai_emma.engines.config import StageConfig
    from monai_emma.engines.trainer import _flat_params

    stage = get_stage(stage)
    return _flat_params(cfg, stage, StageConfig(**cfg[stage.settings_key]))
