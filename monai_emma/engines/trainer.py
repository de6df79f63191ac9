"""One training engine for both EMMA stages, on MONAI's ``Trainer`` (ignite).

:class:`EMMATrainer` runs a step of :mod:`monai_emma.engines.steps` (which computes EMMA's own
losses: there is no loss function to pass). :func:`build_stage_trainer` wires it with Adam, the
learning-rate schedule, per-epoch checkpoints (resumable), validation by a MONAI evaluator through
MONAI's ``ValidationHandler`` with best-model saving, a CSV history and a progress bar.
``monai-emma train``, the MONAI bundle and the Ray Train workers all build their trainers here;
distributed runs pass ``rank``/``world_size`` (and a DDP-wrapped network).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.engines import Trainer
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from monai_emma.data.pairs import PairedPatchDataset
from monai_emma.engines.config import StageConfig, TrainConfig
from monai_emma.engines.stages import Stage, get_stage
from monai_emma.engines.timing import PhaseTimer
from monai_emma.io.atomic import atomic_path
from monai_emma.precision import check_precision
from monai_emma.threads import apply_thread_policy, current_policy, refresh_threads

__all__ = [
    "EMMATrainer",
    "StageResult",
    "build_stage_trainer",
    "make_loader",
    "ShardSampler",
    "latest_checkpoint",
    "save_state",
    "EpochEnd",
]

logger = logging.getLogger("monai_emma.train")


@dataclass
class StageResult:
    """What a finished stage leaves behind."""

    stage: str
    weights: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # PhaseTimer.as_dict() of the run


class EMMATrainer(Trainer):
    """A MONAI ``Trainer`` whose iteration is an EMMA step.

    The step (``step(engine, batch) -> dict``) computes the stage's losses, back-propagates and
    steps ``engine.optimizer``; it reads ``engine.network``, ``engine.optimizer``, ``engine.amp``,
    ``engine.scaler`` and ``engine.precision``. The output is one dict of scalar tensors (not
    decollated).

    Args:
        device: where the step runs.
        max_epochs: epochs to train.
        train_data_loader: batches of patches.
        network: the network being trained (possibly DDP-wrapped).
        optimizer: its optimiser.
        step: the iteration (:class:`~monai_emma.engines.steps.SensorStep` or ``FuserStep``).
        amp: mixed precision on CUDA.
        inferer: how the step calls the network (``inferer(inputs, network)``; default: directly).
        precision: ``"fp32"`` or ``"bf16"`` (the step under bfloat16 autocast; see
            :mod:`monai_emma.precision`).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        step: Callable[[Any, Any], dict],
        amp: bool = False,
        inferer: Callable | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            iteration_update=step,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.inferer = inferer
        self.precision = check_precision(precision)
        self.timings = PhaseTimer()  # see build_stage_trainer


def save_state(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name, then rename (no half-written checkpoints)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def latest_checkpoint(folder: str | os.PathLike, prefix: str) -> Path | None:
    """The newest ``<prefix>_checkpoint_epoch=<n>.pt`` in ``folder`` (MONAI CheckpointSaver names)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best, best_epoch = None, -1
    for p in folder.glob(f"{prefix}_checkpoint_epoch=*.pt"):
        m = re.search(r"epoch=(\d+)\.pt$", p.name)
        if m and int(m.group(1)) > best_epoch:
            best, best_epoch = p, int(m.group(1))
    return best


class ShardSampler(DistributedSampler):
    """An epoch-seeded shuffle split between ranks that gives every rank at least ``min_per_rank``
    samples (one full batch), however small the dataset.

    With ``len(dataset) >= world_size * min_per_rank`` it is ``DistributedSampler(shuffle=True,
    drop_last=True)``: the same indices in the same order. Otherwise the epoch's permutation is
    repeated until every rank has ``min_per_rank`` samples, so a dataset with fewer batches than
    ranks still trains (every rank runs the same number of steps, as DDP needs).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, min_per_rank: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if len(dataset) == 0:
            raise ValueError("no samples to train on")
        if self.num_samples < min_per_rank:
            self.num_samples = int(min_per_rank)
            self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        if self.total_size > len(order):
            order = order.repeat(-(-self.total_size // len(order)))
        return iter(order[: self.total_size][self.rank : self.total_size : self.num_replicas].tolist())


def make_loader(
    dataset: PairedPatchDataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Shuffled, epoch-seeded loader; with ``world_size > 1`` every rank gets its own shard
    (:class:`ShardSampler`: at least one full batch per rank). An iterable dataset (a
    :class:`~monai_emma.data.streaming.StreamedPatchDataset`) is already this rank's and shuffled:
    it is batched as it comes, in this process."""
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, num_workers=0, drop_last=True, pin_memory=False)
    sampler = ShardSampler(dataset, num_replicas=world_size, rank=rank, seed=seed, min_per_rank=batch_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True, pin_memory=False
    )


class EpochEnd:
    """Per-epoch bookkeeping after validation: training averages (over every rank's steps),
    best-model saving, history CSV.

    Args:
        stage: the :class:`~monai_emma.engines.stages.Stage` (file names).
        out_dir: the stage's folder.
        validator: the MONAI evaluator run by the ``ValidationHandler`` (its ``state.metrics``
            hold ``val_loss``, lower is better, and any fusion metrics), or None.
        export: ``fn(network) -> dict`` state to save as the best/final weights.
        is_main: only the main rank writes files.
    """

    key_metric = "val_loss"

    def __init__(
        self,
        stage: Stage,
        out_dir: Path,
        validator: Any | None,
        export: Callable[[torch.nn.Module], dict],
        is_main: bool = True,
    ) -> None:
        self.stage, self.out_dir = stage, out_dir
        self.validator, self.export = validator, export
        self.is_main = is_main
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._t0 = time.perf_counter()
        self.best = float("inf")
        best_file = out_dir / stage.best_record
        if best_file.exists():
            self.best = json.loads(best_file.read_text())["value"]
        hist = out_dir / stage.history_file
        if hist.exists():
            with hist.open() as f:
                self.history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Any) -> None:
        self._sums, self._count, self._t0 = {}, 0, time.perf_counter()
        dataset = engine.data_loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(engine.state.epoch)

    def iteration_completed(self, engine: Any) -> None:
        for key, value in engine.state.output.items():
            if isinstance(value, torch.Tensor) and value.ndim == 0 and isinstance(key, str) and key != "loss":
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def _validation(self, epoch: int) -> dict[str, float]:
        if self.validator is None or self.validator.state.epoch != epoch:  # not validated this epoch
            return {}
        out = {}
        for name, value in self.validator.state.metrics.items():
            if isinstance(value, int | float) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                out[name if name.startswith("val_") else f"val_{name}"] = float(value)
        return out

    def _training_means(self) -> dict[str, float]:
        """The epoch's mean of every step output over all ranks (every rank runs this)."""
        import ignite.distributed as idist

        keys = sorted(self._sums)
        totals = torch.tensor([self._sums[k] for k in keys] + [float(self._count)], dtype=torch.float64)
        if idist.get_world_size() > 1:
            totals = idist.all_reduce(totals)
        count = max(float(totals[-1]), 1.0)
        return {k: float(v) / count for k, v in zip(keys, totals[:-1])}

    def epoch_completed(self, engine: Any) -> None:
        row: dict[str, float] = {"epoch": float(engine.state.epoch)}
        row.update({f"train_{k}": v for k, v in self._training_means().items()})
        row["lr"] = float(engine.optimizer.param_groups[0]["lr"])
        row["seconds"] = time.perf_counter() - self._t0
        row.update(self._validation(engine.state.epoch))
        # trackers (MONAI's MLFlowHandler, attached after this handler) log engine.state.metrics
        engine.state.metrics.update({k: v for k, v in row.items() if k not in ("epoch", "seconds")})
        self.history.append(row)
        if not self.is_main:
            return
        network = engine.network.module if hasattr(engine.network, "module") else engine.network
        value = row.get(self.key_metric, row.get("train_total", float("inf")))
        if value < self.best:
            self.best = value
            save_state(self.export(network), self.out_dir / self.stage.best_file)
            (self.out_dir / self.stage.best_record).write_text(
                json.dumps({"epoch": row["epoch"], "metric": self.key_metric, "value": value})
            )
        with atomic_path(self.out_dir / self.stage.history_file) as tmp:
            keys = list(dict.fromkeys(k for r in self.history for k in r))
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)
        logger.info("%s epoch %d: %s", self.stage.name, engine.state.epoch, {k: round(v, 5) for k, v in row.items()})


def _as_decollated(transform: Callable) -> Callable:
    return lambda output: transform([output] if isinstance(output, dict) else output)


def _flat_params(cfg: dict[str, Any], stage: str | Stage, stage_cfg: StageConfig) -> dict[str, Any]:
    """The run configuration as flat MLflow parameters (this stage's settings without a prefix)."""
    stage = get_stage(stage)
    flat: dict[str, Any] = {"stage": stage.name}
    for key, value in cfg.items():
        if key in ("sensor", "fuser"):
            if key == stage.settings_key:
                flat.update({k: v for k, v in value.items()})
        elif key != "extra":
            flat[key] = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
    init = (cfg.get("extra") or {}).get("init")  # fine-tuning: what was given, what it resolved to, hashes
    if init:
        flat.update({"init" if k == "given" else f"init_{k}": v for k, v in init.items()})
    return flat


def _scheduler(optimizer: torch.optim.Optimizer, stage_cfg: StageConfig):
    if stage_cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(stage_cfg.epochs, 1))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=stage_cfg.lr_step, gamma=stage_cfg.lr_gamma)


def build_stage_trainer(
    stage: str | Stage,
    network: torch.nn.Module,
    step: Callable,
    dataset: PairedPatchDataset,
    stage_cfg: StageConfig,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    validator: Any | None = None,
    export: Callable[[torch.nn.Module], dict] | None = None,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    extra_handlers: Sequence[Any] = (),
    final_file: str | None = None,
    inferer: Callable | None = None,
    val_interval: int = 1,
    timer: PhaseTimer | None = None,
):
    """An :class:`EMMATrainer` running ``step`` for ``stage_cfg.epochs`` epochs.

    Handlers, in order: the learning-rate schedule (StepLR, or cosine decay); a per-epoch
    checkpoint of network, optimiser, scheduler and trainer state
    (``<stage>_checkpoint_epoch=<n>.pt``; resumed automatically when ``resume``); MONAI's
    ``ValidationHandler`` running ``validator`` (a MONAI evaluator; on every rank, each scoring
    its share) every ``val_interval`` epochs;
    best-model saving and a CSV history (:class:`EpochEnd`); ``extra_handlers``; a progress bar.

    ``extra_handlers`` (e.g. MONAI's ``MLFlowHandler``, which a bundle's ``--tracking mlflow``
    adds) see each epoch's training averages, learning rate and validation values in
    ``engine.state.metrics``; an ``MLFlowHandler`` without ``experiment_param`` gets the run's
    configuration as parameters. With ``final_file``, the main rank saves the exported network
    there when training completes.

    ``trainer.timings`` (``timer`` when given, else a new
    :class:`~monai_emma.engines.timing.PhaseTimer`) adds up the seconds of batch loading
    (``data``), optimisation steps (``steps``), checkpoints and best-model saving (``checkpoint``)
    and validation (``validation``).

    Returns:
        (trainer, epoch_end): run with ``trainer.run()``; ``epoch_end.history`` holds the rows.
    """
    from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler, ValidationHandler

    stage = get_stage(stage)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Denormal floats (tiny gradients, Adam's second moments) slow CPU arithmetic by an order of
    # magnitude in stage 2 (measured 59 s vs 1.5 s per step); flush them to zero.
    torch.set_flush_denormal(True)
    is_main = rank == 0
    loader = make_loader(dataset, stage_cfg.batch_size, config.seed, config.num_workers, rank, world_size)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=stage_cfg.lr)
    scheduler = _scheduler(optimizer, stage_cfg)
    amp = config.amp and device.type == "cuda"
    trainer = EMMATrainer(
        device, stage_cfg.epochs, loader, network, optimizer, step, amp, inferer, precision=config.precision
    )
    from ignite.engine import Events

    # the process's threads (the CLI or a Ray worker may have decided them already; the bundle has
    # not), then followed between steps (monai_emma.threads; fixed under explicit settings)
    if device.type == "cpu" and current_policy() is None:
        apply_thread_policy()
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: refresh_threads())
    if timer is not None:
        trainer.timings = timer
    timer = trainer.timings
    timer.attach(trainer)
    LrScheduleHandler(scheduler, print_lr=False, epoch_level=True).attach(trainer)
    save_dict = {"network": network, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    latest = latest_checkpoint(out_dir, stage.checkpoint_prefix) if resume else None
    if latest is not None:
        CheckpointLoader(str(latest), save_dict, map_location=device).attach(trainer)
        logger.info("resuming %s from %s", stage.name, latest)
    # every rank builds the saver (ignite synchronises ranks while constructing it); rank 0 writes
    saver = CheckpointSaver(
        str(out_dir), save_dict, file_prefix=stage.checkpoint_prefix, save_interval=1, n_saved=1, epoch_level=True
    )
    with timer.around(trainer, Events.EPOCH_COMPLETED, "checkpoint"):
        saver.attach(trainer)
    export = export or (lambda net: net.state_dict())
    # with several ranks each validates its share of the slices (see engines.validation)
    if validator is not None:
        with timer.around(trainer, Events.EPOCH_COMPLETED, "validation"):
            ValidationHandler(interval=val_interval, validator=validator, epoch_level=True).attach(trainer)
    epoch_end = EpochEnd(stage, out_dir, validator, export, is_main=is_main)
    with timer.around(trainer, Events.EPOCH_COMPLETED, "checkpoint"):  # best weights and history
        epoch_end.attach(trainer)
    if final_file is not None and is_main:

        def save_final(engine: Any) -> None:
            net = engine.network.module if hasattr(engine.network, "module") else engine.network
            save_state(export(net), out_dir / final_file)

        trainer.add_event_handler(Events.COMPLETED, save_final)
    for handler in extra_handlers:
        if type(handler).__name__ == "MLFlowHandler" and not getattr(handler, "experiment_param", None):
            handler.experiment_param = _flat_params(config.to_dict(), stage, stage_cfg)
        monai_handler = type(handler).__module__.startswith("monai.handlers")
        if monai_handler and callable(getattr(handler, "output_transform", None)):
            # MONAI's engines emit a decollated list of dicts, our steps one dict of scalars: adapt
            # so MONAI's default transforms (e.g. from_engine(["loss"], first=True)) work unchanged
            handler.output_transform = _as_decollated(handler.output_transform)
        handler.attach(trainer)
    if progress and is_main:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc=stage.name).attach(
            trainer, output_transform=lambda out: {"loss": float(out["loss"])}
        )
    return trainer, epoch_end
