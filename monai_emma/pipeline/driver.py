"""The driver of the pipeline (:func:`run_pipeline`, CLI ``pipelines/train.py``): stage 1 then stage
2 as two ``TorchTrainer.fit()`` calls named ``<name>-sensors`` and ``<name>-fuser`` (stage 2 receives
stage 1's final checkpoint), the MLflow parent and stage runs, registration, and the run folder."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_emma.engines.finetune import finetune_config
from monai_emma.engines.stages import FUSER, SENSORS, STAGES, RunLayout
from monai_emma.pipeline.worker import quiet_env, ray_checkpoint_dir, train_loop_per_worker
from monai_emma.registry import experiment_id, find_or_create_run, log_and_register

__all__ = [
    "PipelineOptions",
    "PipelineResult",
    "StreamedStudies",
    "streamed_studies",
    "run_pipeline",
    "local_defaults",
    "write_run_folder",
    "stage_timings",
    "format_timings",
    "STAGE_PHASES",
]

logger = logging.getLogger("monai_emma.pipeline")


@dataclass
class PipelineOptions:
    """What ``pipelines/train.py`` accepts (same names as its flags)."""

    data: str | list[str] | None = None  # one PNG data root or several (or ``datalist``)
    #: a MONAI datalist of volume studies, streamed to the workers by Ray Data (instead of ``data``)
    datalist: str | None = None
    #: where preprocessed studies are cached (a folder every node sees; default <run_root>/cache)
    cache_dir: str | None = None
    #: how studies are preprocessed: :meth:`monai_emma.studies.StudyOptions.to_dict`
    study_options: dict[str, Any] = field(default_factory=dict)
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
    precision: str | None = None  # "bf16": the training steps under bfloat16 autocast (default fp32)
    run_root: str = "emma-runs"
    experiment: str = "emma-pipeline"
    model_name: str = "emma-ufuser"
    alias: str = "candidate"
    address: str | None = None
    #: CPU threads of each worker (default: its CPU allocation, ``resources_per_worker["CPU"]`` or 1)
    threads_per_worker: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: fine-tuning: stage 2 starts from these U-Fuser weights (a shipped set, a file, a run or bundle
    #: folder, an MLflow model URI in ``tracking_uri``'s registry) against their sensors; no stage 1
    init: str | None = None
    init_sensors: str | None = None  # the sensors to fine-tune against instead of the init's own
    #: extra ignite handlers for the workers, by stage name (``{"sensors": [handler]}``); each must
    #: pickle (Ray ships it to every worker) and is attached before the epoch report
    worker_handlers: dict[str, list[Any]] = field(default_factory=dict)

    def train_config(self):
        from monai_emma.engines import recipe
        from monai_emma.networks.sensor_bank import IDENTITY_SENSORS

        name = self.recipe or ("paper" if self.use_gpu else "cpu")
        cfg = recipe(
            name,
            epochs=self.epochs,
            sensor_epochs=self.sensor_epochs,
            fuser_epochs=self.fuser_epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            precision=self.precision,
            **self.overrides,
        )
        if cfg.sensor_preset == IDENTITY_SENSORS:
            raise ValueError(
                "sensor_preset=identity (the no-pseudo-sensing ablation) has no stage 1 to distribute; "
                "run it with `monai-emma train --sensors identity`"
            )
        from monai_emma.engines.finetune import InitError, check_stage1

        explicit = self.sensor_epochs if self.sensor_epochs is not None else self.overrides.get("sensor_epochs")
        if self.init and explicit:
            raise InitError(
                "--init fine-tunes against the sensors that come with the weights (or --init-sensors); "
                f"--sensor-epochs {explicit} would train new ones: leave it out or give 0"
            )
        if self.init_sensors and not self.init:
            raise InitError("--init-sensors goes with --init (the sensors its weights are fine-tuned against)")
        if not self.init:
            check_stage1(cfg, None, identity="")
        return cfg


@dataclass(frozen=True)
class StreamedStudies:
    """A datalist's studies as the pipeline streams them (see :mod:`monai_emma.pipeline.data`)."""

    datalist: str
    train: list  # Study
    val: list
    validation_list: bool
    slices: int  # axial slices of the training studies (from the headers; sets patches per slice)
    options: dict[str, Any]
    cache_dir: str

    @property
    def modalities(self) -> list[str]:
        return sorted({m for s in self.train for m in (s.a_modality, s.b_modality)})

    def split_record(self) -> dict:
        from monai_emma.data.datalist import study_split_record

        record = study_split_record(self.datalist, self.train, self.val, self.validation_list)
        return {**record, "options": self.options, "streamed": "Ray Data (slices counted where preprocessed)"}


def streamed_studies(opts: PipelineOptions, cfg) -> StreamedStudies:
    """``opts.datalist`` split by study and checked from the headers (nothing preprocessed).

    Raises:
        DatalistError: one line naming the entry and the file.
    """
    from monai_emma.studies import Datalist, StudyOptions, axial_slices

    datalist = Datalist(opts.datalist, StudyOptions.from_dict(opts.study_options))
    train, val, has_list = datalist.study_split(cfg.val_fraction, cfg.seed)
    cache = opts.cache_dir or str(Path(opts.run_root) / "cache")
    return StreamedStudies(
        str(Path(opts.datalist).resolve()),
        train,
        val,
        has_list,
        axial_slices(train),
        datalist.resolved_options().to_dict(),
        cache if "://" in cache else str(Path(cache).resolve()),
    )


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
    #: where the time went: ``{"driver": {phase: s}, "stages": {stage: stage_timings(...)}, "total": s}``
    timings: dict[str, Any] = field(default_factory=dict)


def local_defaults(run_root: str | os.PathLike) -> tuple[str, str, str]:
    """Embedded defaults under ``run_root``: (Ray storage path, SQLite tracking URI, artifact location)."""
    root = Path(run_root).resolve()
    return str(root / "ray"), f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def _init_ray(address: str | None, reserved_cpus: float = 0.0) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start the embedded local runtime with at
    least ``reserved_cpus`` + 1 logical CPUs: Ray Data's preprocessing tasks need a CPU that the
    Train workers have not reserved, or they never run."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"])
        return
    # embedded default: a new local runtime on loopback, no dashboard (address "local": never a
    # cluster another process left running on this machine)
    cpus = max(os.cpu_count() or 1, math.ceil(reserved_cpus) + 1 if reserved_cpus else 0)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1")


def run_pipeline(opts: PipelineOptions) -> PipelineResult:
    """Run (or resume) both stages on Ray, tracked in MLflow; register the U-Fuser.

    Rerunning with the same ``name`` and storage resumes: finished stages are skipped (their
    checkpoints are recorded on the parent MLflow run), an interrupted stage continues from its
    last checkpoint, and the MLflow runs are reused rather than duplicated.

    Where the time went (:attr:`PipelineResult.timings`, see :func:`stage_timings`) is logged to
    the parent run (``time/...`` metrics) and written to ``<run_root>/<name>/timings.json``.
    """
    quiet_env()
    from monai_emma.engines.timing import PhaseTimer
    from monai_emma.extras import require, scoped_tracking_uri

    t0 = time.perf_counter()
    timer = PhaseTimer()
    with timer.phase("startup"):
        require("ray.train", "the Ray Train pipeline")
        require("mlflow", "the Ray Train pipeline")
        from monai_emma.data.pairs import find_pairs, split_pairs

        cfg = opts.train_config()
        if bool(opts.data) == bool(opts.datalist):
            raise ValueError("give the data as PNG roots (data) or a datalist of studies (datalist), one of them")
        # fail early, with a clear message, before anything starts: missing data, or a split that
        # leaves a pair type without training pairs (a datalist: every entry checked from headers)
        streamed = streamed_studies(opts, cfg) if opts.datalist else None
        if streamed is None:
            pairs = find_pairs(opts.data)
            split_pairs(pairs, cfg.val_fraction, cfg.seed)
        init = _resolve_init(opts, streamed.train if streamed is not None else pairs)
        cfg = finetune_config(cfg, init)
    storage_default, uri_default, artifacts_default = local_defaults(opts.run_root)
    storage = opts.storage_path or storage_default
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    tracking_uri = opts.tracking_uri or uri_default
    Path(opts.run_root).mkdir(parents=True, exist_ok=True)
    with scoped_tracking_uri(tracking_uri):  # the process-wide MLflow URI is restored afterwards
        return _run_stages(opts, cfg, storage, tracking_uri, artifacts_default, timer, t0, init, streamed)


def _resolve_init(opts: PipelineOptions, pairs):
    """``opts.init`` resolved and checked against the data's modalities (None without one)."""
    from monai_emma.engines.finetune import resolve_init
    from monai_emma.engines.two_stage import modalities_of

    if not opts.init:
        return None
    init = resolve_init(opts.init, opts.init_sensors, opts.tracking_uri or local_defaults(opts.run_root)[1])
    init.check_modalities(modalities_of(pairs))
    return init


def _run_stages(
    opts: PipelineOptions,
    cfg,
    storage: str,
    tracking_uri: str,
    artifacts_default: str,
    timer,
    t0,
    init=None,
    streamed: StreamedStudies | None = None,
):
    import mlflow
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from monai_emma.data.pairs import data_roots
    from monai_emma.pipeline.data import TRAIN

    data_label = streamed.datalist if streamed is not None else ", ".join(data_roots(opts.data))

    with timer.phase("mlflow_setup"):
        client = mlflow.MlflowClient(tracking_uri)
        exp_id = experiment_id(client, opts.experiment, artifacts_default if not opts.tracking_uri else None)
        parent_id = find_or_create_run(client, exp_id, {"emma.pipeline": opts.name, "emma.role": "parent"}, opts.name)
        params = client.get_run(parent_id).data.params
        if "data" not in params:
            client.log_param(parent_id, "data", data_label)
            client.log_param(parent_id, "recipe", cfg.recipe)
            for key, value in _init_params(cfg).items():  # fine-tuning: given, resolved, hashes
                client.log_param(parent_id, key, value)
        elif params.get("init", "") != (opts.init or ""):
            was = f"--init {params['init']}" if params.get("init") else "no --init"
            raise ValueError(f"pipeline run {opts.name!r} was started with {was}: resume it so, or use another --name")
    with timer.phase("ray_init"):
        per_worker = (opts.resources_per_worker or {}).get("CPU", 1.0)
        _init_ray(opts.address, opts.num_workers * per_worker if streamed is not None else 0.0)
    datasets: dict[str, Any] = {}
    if streamed is not None:
        import ray.data

        from monai_emma.pipeline.data import pipeline_datasets

        ray.data.DataContext.get_current().enable_progress_bars = False  # the workers' logs stay readable
        # Ray Data runs a task only on a CPU the Train workers leave free: with none left (an
        # existing runtime or cluster sized for the workers alone) the tasks reserve no CPU and run
        # one at a time beside the workers rather than never
        cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
        spare = cluster_cpus - opts.num_workers * per_worker
        if spare < 1:
            logger.warning(
                "Ray Data: no CPU beside the %d Train workers' (%g CPUs in the cluster); studies are "
                "preprocessed one at a time on the workers' CPUs",
                opts.num_workers,
                cluster_cpus,
            )
        datasets = pipeline_datasets(
            streamed.train,
            streamed.val,
            streamed.options,
            streamed.cache_dir,
            cfg.val_slices,
            task_cpus=1.0 if spare >= 1 else 0.0,
        )

    checkpoints: dict[str, str] = {}
    per_stage: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        if stage is SENSORS and init is not None:
            logger.info("fine-tuning from %s: no stage 1, sensors: %s", init.weights, init.sensors_source)
            continue
        tag = f"emma.checkpoint.{stage.name}"
        done = client.get_run(parent_id).data.tags.get(tag)
        if done and _exists(done):
            logger.info("stage %s already finished: %s", stage.name, done)
            checkpoints[stage.name] = done
            continue
        with timer.phase("mlflow_setup"):
            child_id = find_or_create_run(
                client,
                exp_id,
                {"emma.pipeline": opts.name, "emma.role": "stage", "emma.stage": stage.name},
                f"{opts.name}-{stage.name}",
                parent=parent_id,
            )
        loop_config = {
            "stage": stage.name,
            "data": [r if "://" in r else str(Path(r).resolve()) for r in data_roots(opts.data)] if opts.data else [],
            # a datalist: the slices come as Ray Data shards ("train", "validation")
            "streamed": None
            if streamed is None
            else {
                "datalist": streamed.datalist,
                "modalities": streamed.modalities,
                "slices": streamed.slices,
                "validation": bool(streamed.val),
            },
            "train_config": cfg.to_dict(),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": child_id,
            "sensors_checkpoint": checkpoints.get(SENSORS.name),
            "attempts_file": str(Path(opts.run_root).resolve() / f"{opts.name}-attempts.jsonl"),
            # each worker's threads: its own allocation, whatever the driver's shell exported
            "threads": opts.threads_per_worker or max(1, int((opts.resources_per_worker or {}).get("CPU", 1))),
            "threads_source": "--threads-per-worker" if opts.threads_per_worker else "worker allocation",
            "worker_handlers": opts.worker_handlers,
            # fine-tuning: the weights stage 2 starts from and the sensors it trains against
            "init_state": _init_state(init) if stage is FUSER else None,
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=opts.num_workers, use_gpu=opts.use_gpu, resources_per_worker=opts.resources_per_worker
            ),
            run_config=RunConfig(
                name=f"{opts.name}-{stage.name}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
            datasets=datasets or None,
            dataset_config=DataConfig(datasets_to_split=[TRAIN]) if datasets else None,
        )
        fit_started = time.time()
        result = trainer.fit()
        fit_ended = time.time()
        if result.checkpoint is None:
            raise RuntimeError(f"stage {stage.name} finished without a checkpoint")
        per_stage[stage.name] = stage_timings(result.metrics, fit_started, fit_ended)
        checkpoints[stage.name] = result.checkpoint.path
        client.set_tag(parent_id, tag, checkpoints[stage.name])
        client.set_terminated(child_id, "FINISHED")
    tags = client.get_run(parent_id).data.tags
    if "emma.model_uri" in tags:  # a finished pipeline run again: nothing new to register
        model_uri, version = tags["emma.model_uri"], tags["emma.model_version"]
        sensor_versions = json.loads(tags.get("emma.sensor_versions", "{}"))
    else:
        with timer.phase("registration"):
            fuser, sensors = _trained_networks(checkpoints, init.sensors if init is not None else None)
            model_uri, version, sensor_versions = log_and_register(
                client, parent_id, fuser, sensors, opts.model_name, opts.alias
            )
            client.set_tag(parent_id, "emma.model_version", version)
            client.set_tag(parent_id, "emma.sensor_versions", json.dumps(sensor_versions))
            client.set_tag(parent_id, "emma.model_uri", model_uri)
    with timer.phase("run_folder"):
        folder = write_run_folder(
            opts.run_root,
            opts.name,
            opts.data or streamed.datalist,
            cfg,
            checkpoints,
            init.sensors if init is not None else None,
            split=streamed.split_record() if streamed is not None else None,
        )
    timings = {"driver": timer.as_dict(), "stages": per_stage, "total": round(time.perf_counter() - t0, 3)}
    (folder / "timings.json").write_text(json.dumps(timings, indent=1))
    _log_timings(client, parent_id, timings)
    client.set_terminated(parent_id, "FINISHED")
    return PipelineResult(
        parent_id,
        checkpoints,
        model_uri,
        version,
        sensor_versions,
        tracking_uri,
        time.perf_counter() - t0,
        timings,
    )


#: the phases of a stage's fit, in the order they happen (see :func:`stage_timings`)
STAGE_PHASES = (
    "worker_start",
    "setup",
    "data",
    "steps",
    "validation",
    "checkpoint",
    "mlflow",
    "report",
    "shutdown",
)


def stage_timings(metrics: dict[str, Any], fit_started: float, fit_ended: float) -> dict[str, float]:
    """Where a stage's ``fit()`` went, in seconds, from rank 0's last report (``time_*`` figures of
    its :class:`~monai_emma.engines.timing.PhaseTimer`) and the driver's clock:

    ``worker_start`` (``fit()`` called to the worker function running: placement, actors,
    process group), ``setup`` (data, networks, restoring a checkpoint), ``data`` (batches),
    ``steps`` (optimisation steps; ``steps_count``), ``validation``, ``checkpoint`` (engine
    checkpoints, best weights, packing Ray's checkpoint), ``mlflow`` (starting the run, metrics,
    the preview), ``report`` (``ray.train.report``: persisting the checkpoint, waiting for the
    other ranks), ``shutdown`` (after the last report until ``fit()`` returns), ``fit`` (all), and
    ``system_metrics_cpu`` (CPU seconds of MLflow's sampler thread, not wall time).
    """
    out = {"fit": round(fit_ended - fit_started, 3)}
    if "time_worker_started_at" in metrics:
        out["worker_start"] = round(metrics["time_worker_started_at"] - fit_started, 3)
    if "time_report_at" in metrics:
        out["shutdown"] = round(fit_ended - metrics["time_report_at"] - metrics.get("time_report", 0.0), 3)
    for key, value in metrics.items():
        if key.startswith("time_") and not key.endswith("_at"):
            out[key[len("time_") :]] = value
    return out


_PHASE_LABELS = {
    "worker_start": "worker-group start",
    "setup": "setup (data, networks)",
    "data": "batches",
    "steps": "training steps",
    "validation": "validation",
    "checkpoint": "checkpoints",
    "mlflow": "MLflow (run, metrics, preview)",
    "report": "Ray report",
    "shutdown": "shutdown",
    "fit": "fit() in all",
}


def format_timings(timings: dict[str, Any]) -> str:
    """A small table of :attr:`PipelineResult.timings` for the terminal."""
    stages = timings.get("stages", {})
    lines = []
    if stages:
        names = list(stages)
        lines.append(f"{'seconds':<32}" + "".join(f"{n:>10}" for n in names))
        for key in (*STAGE_PHASES, "fit"):
            if any(key in stages[n] for n in names):
                cells = "".join(f"{stages[n].get(key, float('nan')):>10.1f}" for n in names)
                lines.append(f"  {_PHASE_LABELS[key]:<30}{cells}")
        counts = [int(stages[n].get("steps_count", 0)) for n in names]
        per_step = "".join(f"{stages[n]['steps'] / c:>10.3f}" if c else f"{'-':>10}" for n, c in zip(names, counts))
        lines.append(f"  {'seconds per step':<30}{per_step}")
    driver = timings.get("driver", {})
    parts = [f"{k.replace('_', ' ')} {v:.1f}" for k, v in driver.items() if not k.endswith("_count")]
    lines.append(f"driver: {', '.join(parts)}; total {timings.get('total', float('nan')):.1f} s")
    return "\n".join(lines)


def _log_timings(client, run_id: str, timings: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = {f"time/{k}": v for k, v in timings["driver"].items()}
    values["time/total"] = timings["total"]
    for stage, phases in timings["stages"].items():
        values.update({f"time/{stage}/{k}": v for k, v in phases.items()})
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])


def _init_params(cfg) -> dict[str, str]:
    """The ``init*`` MLflow parameters of a fine-tuning run (none otherwise)."""
    from monai_emma.engines.trainer import _flat_params

    return {k: v for k, v in _flat_params(cfg.to_dict(), FUSER, cfg.fuser).items() if k.startswith("init")}


def _init_state(init) -> dict[str, Any] | None:
    """What the stage-2 workers need of an init (sent with the loop configuration)."""
    if init is None:
        return None
    from monai_emma.networks.sensor_bank import sensor_bank_state

    return {"fuser": init.state, "sensors": sensor_bank_state(init.sensors)}


def _trained_networks(checkpoints: dict[str, str], sensors=None):
    """The U-Fuser and the sensor bank of the final stage checkpoints (``sensors`` when given:
    a fine-tuning run has no stage-1 checkpoint)."""
    import torch

    from monai_emma.networks import UFuser
    from monai_emma.networks.sensor_bank import load_sensor_bank

    net = UFuser()
    with ray_checkpoint_dir(checkpoints[FUSER.name]) as d:
        net.load_state_dict(torch.load(Path(d) / FUSER.weights_file, map_location="cpu", weights_only=True))
    if sensors is not None:
        return net.eval(), sensors
    with ray_checkpoint_dir(checkpoints[SENSORS.name]) as d:
        bank = load_sensor_bank(Path(d) / SENSORS.weights_file)
    return net.eval(), bank


def write_run_folder(
    run_root: str | os.PathLike,
    name: str,
    data: str | list[str],
    cfg,
    checkpoints: dict[str, str],
    sensors=None,
    split: dict | None = None,
) -> Path:
    """Mirror a finished pipeline run as ``<run_root>/<name>/`` in the layout of ``monai-emma
    train`` (:class:`~monai_emma.engines.stages.RunLayout`), so the same tools (e.g.
    ``scripts/ship_weights.py``, ``--init``) work on both. ``sensors`` (a fine-tuning run's,
    which has no stage-1 checkpoint) become its stage-1 sensors file. ``split``: the run's
    ``split.json`` when given (a datalist's studies), else the split of the PNG roots ``data``."""
    from monai_emma.data.pairs import find_pairs, split_pairs

    layout = RunLayout(Path(run_root) / name)
    if split is not None:
        layout.write_record(cfg, data, [], [], split=split)
    else:
        train, val = split_pairs(find_pairs(data), cfg.val_fraction, cfg.seed)
        layout.write_record(cfg, data, train, val)
    for stage in STAGES:
        if stage.name in checkpoints:
            with ray_checkpoint_dir(checkpoints[stage.name]) as d:
                shutil.copytree(d, layout.stage_dir(stage), dirs_exist_ok=True)
    if sensors is not None:
        from monai_emma.engines.trainer import save_state
        from monai_emma.networks.sensor_bank import sensor_bank_state

        layout.stage_dir(SENSORS).mkdir(parents=True, exist_ok=True)
        save_state(sensor_bank_state(sensors), layout.weights(SENSORS))
    return layout.root


def _exists(path: str) -> bool:
    return "://" in path or Path(path).exists()
