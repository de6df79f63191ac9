"""EMMA's two stages: pseudo-sensors, then the U-Fuser.

:func:`sensor_trainer` and :func:`fuser_trainer` build a stage ready to run; ``monai-emma train``
(:func:`run_training`), the MONAI bundle and the Ray pipeline's workers all use them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_emma.data.pairs import (
    PairDataError,
    PairedPatchDataset,
    SlicePair,
    find_pairs,
    split_pairs,
    split_record,
    spread_subset,
)
from monai_emma.data.streaming import SliceStream, StreamedPatchDataset
from monai_emma.engines.config import TrainConfig
from monai_emma.engines.finetune import FuserInit, check_stage1, finetune_config, publish_init_sensors
from monai_emma.engines.stages import FUSER, SENSORS, RunLayout, Stage
from monai_emma.engines.steps import FuserStep, SensorStep
from monai_emma.engines.trainer import StageResult, build_stage_trainer
from monai_emma.engines.validation import fuser_validator, sensor_validator, validation_slices
from monai_emma.losses import EMMALoss
from monai_emma.networks import UFuser
from monai_emma.networks.sensor_bank import IDENTITY_SENSORS, SensorBank, load_sensor_bank, sensor_bank_state
from monai_emma.studies import Datalist
from monai_emma.transforms.equivariance import TransformGroup

__all__ = [
    "stage_dataset",
    "stage_network",
    "stage_validator",
    "stage_trainer_for",
    "sensor_trainer",
    "fuser_trainer",
    "train_sensors",
    "train_fuser",
    "run_training",
    "training_split",
    "modalities_of",
    "stage2_loss",
]

logger = logging.getLogger("monai_emma.train")


def stage_dataset(
    pairs: Sequence[SlicePair] | SliceStream, cfg: TrainConfig, stage: Stage
) -> PairedPatchDataset | StreamedPatchDataset:
    """The patch dataset of a stage: ``samples_per_epoch`` patches (at least one per pair) per epoch;
    a :class:`~monai_emma.data.streaming.SliceStream` (Ray Data) gives the streamed equivalent."""
    st = stage.settings(cfg)
    if isinstance(pairs, SliceStream):
        if stage is SENSORS and cfg.fused_dir is not None:
            raise PairDataError("fused_dir (stage-1 inputs from fused PNGs) is for PNG roots, not streamed studies")
        n = st.samples_per_epoch or pairs.slices
        return StreamedPatchDataset(
            pairs,
            st.patch_size,
            patches_per_slice=n / max(1, pairs.slices),
            seed=cfg.seed + (0 if stage is SENSORS else 1),
            min_items=st.batch_size,
        )
    n = st.samples_per_epoch or len(pairs)
    per_image = max(1, -(-n // len(pairs)))
    return PairedPatchDataset(
        pairs,
        st.patch_size,
        patches_per_image=per_image,
        seed=cfg.seed + (0 if stage is SENSORS else 1),
        fused_dir=cfg.fused_dir if stage is SENSORS else None,
    )


def modalities_of(pairs: Sequence[SlicePair] | SliceStream) -> list[str]:
    """The modality names of a set of pairs or a stream (one pseudo-sensor each)."""
    if isinstance(pairs, SliceStream):
        return sorted(pairs.modalities)
    return sorted({p.a_modality for p in pairs} | {p.b_modality for p in pairs})


def stage_network(
    stage: Stage, train_pairs: Sequence[SlicePair], cfg: TrainConfig, init_state: dict | None = None
) -> torch.nn.Module:
    """A new network for a stage, seeded: one pseudo-sensor per modality (stage 1) or a U-Fuser,
    with the weights of ``init_state`` when given (fine-tuning, see :mod:`~monai_emma.engines.finetune`)."""
    if stage is SENSORS:
        torch.manual_seed(cfg.seed)
        return SensorBank(modalities_of(train_pairs), preset=cfg.sensor_preset)
    torch.manual_seed(cfg.seed + 1)
    fuser = UFuser()
    if init_state is not None:
        fuser.load_state_dict(init_state)
    return fuser


def stage_validator(
    stage: Stage,
    val_pairs: Sequence[SlicePair],
    cfg: TrainConfig,
    device: torch.device,
    network: torch.nn.Module,
    sensors: SensorBank | None = None,
):
    """The MONAI evaluator of a stage on at most ``cfg.val_slices`` validation slices (stratified),
    or None without validation pairs."""
    slices = validation_slices(spread_subset(val_pairs, cfg.val_slices))
    if not slices:
        return None
    if stage is SENSORS:
        return sensor_validator(slices, device, lambda: network)
    return fuser_validator(slices, sensors, device, lambda: network)


def stage2_loss(cfg: TrainConfig) -> EMMALoss:
    """The stage-2 objective of ``cfg``: EMMA's loss with its equivariance weight and the optional
    max-fidelity prior (intensity, edge and structure terms, per-modality weights included)."""
    return EMMALoss(
        alpha=cfg.alpha,
        prior_weight=cfg.prior_weight,
        prior_gradient_weight=cfg.prior_gradient_weight,
        prior_gradient_weight_by_modality=cfg.prior_gradient_weight_by_modality,
        prior_ssim_weight=cfg.prior_ssim_weight,
        prior_ssim_weight_by_modality=cfg.prior_ssim_weight_by_modality,
        prior_ssim_data_range=cfg.prior_ssim_data_range,
        prior_ssim_min_std=cfg.prior_ssim_min_std,
    )


def _distributed(network: torch.nn.Module, device: torch.device, find_unused: bool, trainer_kwargs: dict) -> Any:
    """Wrap for data-parallel training when ``distributed`` was asked, and fill in the trainer's
    ``rank``/``world_size`` from the process group. ``distributed`` is ``True`` (plain
    DistributedDataParallel) or a callable ``wrap(network, find_unused_parameters)`` (e.g. Ray
    Train's ``prepare_model``)."""
    wrap = trainer_kwargs.pop("distributed", False)
    if not wrap:
        return network
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed training needs an initialised torch.distributed process group")
    trainer_kwargs.setdefault("rank", dist.get_rank())
    trainer_kwargs.setdefault("world_size", dist.get_world_size())
    if callable(wrap):
        return wrap(network, find_unused)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids, find_unused_parameters=find_unused)


def stage_trainer_for(
    stage: Stage,
    network: torch.nn.Module,
    dataset: PairedPatchDataset,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    sensors: SensorBank | None = None,
    validator: Any | None = None,
    **trainer_kwargs: Any,
):
    """A stage ready to run, from its parts (the bundle builds them in its config): the step of
    the stage (:class:`SensorStep`, or :class:`FuserStep` against the frozen ``sensors``), the
    network on ``device`` (DDP-wrapped with ``distributed``), and
    :func:`~monai_emma.engines.trainer.build_stage_trainer`, which writes
    ``<out_dir>/<stage weights file>`` when training completes.

    Returns:
        ``(trainer, epoch_end)``.
    """
    device = torch.device(device)
    network = network.to(device)
    if stage is SENSORS:
        step = SensorStep(cfg.stage1_rules, seed=cfg.seed)
        export = sensor_bank_state
    else:
        if sensors is None:
            raise ValueError("stage 2 needs the frozen pseudo-sensors")
        sensors = sensors.to(device).freeze()
        group = TransformGroup(cfg.shifts, cfg.rotations, cfg.reflections)
        loss = stage2_loss(cfg)
        step = FuserStep(sensors, loss, group, cfg.seed)
        export = lambda net: net.state_dict()  # noqa: E731
    wrapped = _distributed(network, device, stage is SENSORS, trainer_kwargs)
    return build_stage_trainer(
        stage,
        wrapped,
        step,
        dataset,
        stage.settings(cfg),
        cfg,
        out_dir,
        device,
        validator=validator,
        export=lambda net: export(net.module if hasattr(net, "module") else net),
        final_file=stage.weights_file,
        **trainer_kwargs,
    )


def sensor_trainer(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    **trainer_kwargs: Any,
):
    """Stage 1, ready to run: one pseudo-sensor per modality; ``trainer.run()`` writes
    ``sensors.pt`` in ``out_dir`` (plus checkpoints, best weights and history).

    ``trainer_kwargs`` go to :func:`~monai_emma.engines.trainer.build_stage_trainer` (``resume``,
    ``progress``, ``extra_handlers``, ``rank``, ``world_size``); ``distributed=True`` wraps the
    bank in DistributedDataParallel on the current process group.

    Returns:
        ``(trainer, epoch_end)`` as :func:`~monai_emma.engines.trainer.build_stage_trainer`.
    """
    device = torch.device(device)
    bank = stage_network(SENSORS, train_pairs, cfg).to(device)
    validator = stage_validator(SENSORS, val_pairs, cfg, device, bank)
    dataset = stage_dataset(train_pairs, cfg, SENSORS)
    return stage_trainer_for(SENSORS, bank, dataset, cfg, out_dir, device, validator=validator, **trainer_kwargs)


def fuser_trainer(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    sensors: SensorBank,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    init_state: dict | None = None,
    **trainer_kwargs: Any,
):
    """Stage 2, ready to run: the U-Fuser (from ``init_state`` when given: fine-tuning, with a fresh
    optimiser) against frozen ``sensors``; ``trainer.run()`` writes ``ufuser.pt`` in ``out_dir``.
    Arguments as :func:`sensor_trainer`."""
    device = torch.device(device)
    fuser = stage_network(FUSER, train_pairs, cfg, init_state).to(device)
    sensors = sensors.to(device).freeze()
    validator = stage_validator(FUSER, val_pairs, cfg, device, fuser, sensors)
    dataset = stage_dataset(train_pairs, cfg, FUSER)
    return stage_trainer_for(
        FUSER, fuser, dataset, cfg, out_dir, device, sensors=sensors, validator=validator, **trainer_kwargs
    )


def _run(stage: Stage, out_dir: str | os.PathLike, prepared) -> StageResult:
    t0 = time.perf_counter()
    trainer, epoch_end = prepared
    trainer.run()
    seconds = time.perf_counter() - t0
    weights = Path(out_dir) / stage.weights_file
    return StageResult(stage.name, weights, epoch_end.history, seconds, trainer.timings.as_dict())


def train_sensors(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    **trainer_kwargs: Any,
) -> StageResult:
    """Stage 1 run to the end (see :func:`sensor_trainer`)."""
    return _run(SENSORS, out_dir, sensor_trainer(train_pairs, val_pairs, cfg, out_dir, device, **trainer_kwargs))


def train_fuser(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    sensors: SensorBank,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    **trainer_kwargs: Any,
) -> StageResult:
    """Stage 2 run to the end (see :func:`fuser_trainer`)."""
    prepared = fuser_trainer(train_pairs, val_pairs, sensors, cfg, out_dir, device, **trainer_kwargs)
    return _run(FUSER, out_dir, prepared)


def training_split(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Datalist,
    cfg: TrainConfig,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[list, list, dict]:
    """The training and validation items of a run and its ``split.json`` record: PNG roots split by
    slice (:func:`~monai_emma.data.pairs.split_pairs`), or a datalist's studies split by study
    (:meth:`~monai_emma.studies.Datalist.training_split`, cached in the datalist's ``cache_dir``,
    else ``cache_dir``), with the seed and validation fraction of ``cfg``."""
    if isinstance(data, Datalist):
        cache = data.cache_dir if data.cache_dir is not None else cache_dir
        return data.training_split(cfg.val_fraction, cfg.seed, cache, progress)
    train, val = split_pairs(find_pairs(data), cfg.val_fraction, cfg.seed)
    return train, val, split_record(data, train, val)


def run_training(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Datalist,
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    init: FuserInit | None = None,
) -> dict[str, StageResult]:
    """Both stages in this process (``monai-emma train``) on one data root or several, or the
    studies of a :class:`~monai_emma.studies.Datalist` (preprocessed studies cached in
    ``<out_dir>/cache`` unless the datalist names a cache folder), in the
    :class:`~monai_emma.engines.stages.RunLayout` of ``out_dir``. A finished stage is not repeated
    when ``resume`` is set; an interrupted one continues from its last epoch checkpoint.

    With ``init`` (:func:`~monai_emma.engines.finetune.resolve_init`) there is no stage 1: stage 2
    starts from the init's weights (a fresh optimiser; the run's own stage-2 checkpoints, if any,
    still come first) against the init's sensors, which become the run's stage-1 sensors file."""
    device = torch.device(device)
    layout = RunLayout(out_dir)
    check_stage1(cfg, init)
    # fails before anything is written (a datalist: before any study is preprocessed)
    train_pairs, val_pairs, split = training_split(data, cfg, layout.root / "cache", progress)
    pairs = [*train_pairs, *val_pairs]
    identity = cfg.sensor_preset == IDENTITY_SENSORS
    if init is not None:  # checked, and the sensors published, before anything else is written
        cfg = finetune_config(cfg, init)
        if not identity:
            init.check_modalities(modalities_of(pairs))
            publish_init_sensors(init, layout.weights(SENSORS), overwrite=not resume)
        logger.info("stage 2 starts from %s (sha256 %s); no stage 1", init.weights, init.sha256[:12])
    layout.write_record(cfg, data, train_pairs, val_pairs, split)
    results: dict[str, StageResult] = {}
    kwargs = dict(resume=resume, progress=progress)
    if identity:
        logger.info("identity sensors: no stage 1")
        sensors = SensorBank(modalities_of(train_pairs), preset=IDENTITY_SENSORS)
    elif init is not None:
        logger.info("pseudo-sensors: %s", init.sensors_source)
        sensors = init.sensors
    else:
        if resume and layout.weights(SENSORS).exists():
            logger.info("stage 1 already finished: %s", layout.weights(SENSORS))
            results[SENSORS.name] = StageResult(SENSORS.name, layout.weights(SENSORS))
        else:
            results[SENSORS.name] = train_sensors(
                train_pairs, val_pairs, cfg, layout.stage_dir(SENSORS), device, **kwargs
            )
        sensors = load_sensor_bank(results[SENSORS.name].weights)
    if resume and layout.weights(FUSER).exists():
        logger.info("stage 2 already finished: %s", layout.weights(FUSER))
        results[FUSER.name] = StageResult(FUSER.name, layout.weights(FUSER))
    else:
        init_state = init.state if init is not None else None
        results[FUSER.name] = train_fuser(
            train_pairs, val_pairs, sensors, cfg, layout.stage_dir(FUSER), device, init_state=init_state, **kwargs
        )
    return results
