"""EMMA's two stages run in-process: pseudo-sensors, then the U-Fuser.

Used by ``monai-emma train``; the Ray pipeline runs the same stage functions inside its workers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_emma.data.pairs import (
    PairedPatchDataset,
    SlicePair,
    find_pairs,
    load_pair,
    split_pairs,
    split_record,
    spread_subset,
)
from monai_emma.engines.config import TrainConfig
from monai_emma.engines.steps import IDENTITY_SENSORS, FuserStep, SensorBank, SensorStep
from monai_emma.engines.trainer import StageResult, build_stage_trainer
from monai_emma.losses import EMMALoss
from monai_emma.networks import UFuser
from monai_emma.transforms.empty import zero_where_empty
from monai_emma.transforms.equivariance import TransformGroup

__all__ = [
    "sensor_trainer",
    "fuser_trainer",
    "train_sensors",
    "train_fuser",
    "run_training",
    "load_sensor_bank",
    "validation_slices",
    "SENSORS_FILE",
    "FUSER_FILE",
]

logger = logging.getLogger("monai_emma.train")
SENSORS_FILE = "sensors.pt"
FUSER_FILE = "ufuser.pt"


def _dataset(pairs: Sequence[SlicePair], cfg: TrainConfig, stage: str) -> PairedPatchDataset:
    st = cfg.sensor if stage == "sensors" else cfg.fuser
    n = st.samples_per_epoch or len(pairs)
    per_image = max(1, -(-n // len(pairs)))
    ds = PairedPatchDataset(
        pairs,
        st.patch_size,
        patches_per_image=per_image,
        seed=cfg.seed + (0 if stage == "sensors" else 1),
        fused_dir=cfg.fused_dir if stage == "sensors" else None,
    )
    return ds


def validation_slices(pairs: Sequence[SlicePair], multiple: int = 16, max_size: int = 256) -> list[dict]:
    """Centre crops (sides a multiple of ``multiple``, at most ``max_size``) of the validation pairs."""
    out = []
    for p in pairs:
        item = load_pair(p)
        h, w = item["a"].shape[-2:]
        ch, cw = min(h - h % multiple, max_size), min(w - w % multiple, max_size)
        if ch < multiple or cw < multiple:
            continue
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = {k: item[k][..., y0 : y0 + ch, x0 : x0 + cw] for k in ("a", "b")}
        crop.update(a_modality=item["a_modality"], b_modality=item["b_modality"], id=item["id"])
        out.append(crop)
    return out


def _validator(slices: list[dict], device: torch.device, score, prepare=None):
    """``validate(net) -> {"val_loss": …, …}``: the mean of ``score`` over full validation slices,
    in eval mode; ``score`` returns the loss or a dict of named values."""

    @torch.no_grad()
    def validate(net: torch.nn.Module) -> dict[str, float]:
        if not slices:
            return {}
        was = net.training
        net.eval()
        if prepare is not None:
            prepare()
        totals: dict[str, float] = {}
        for s in slices:
            a, b = s["a"][None].to(device), s["b"][None].to(device)
            values = score(net, a, b, [s["a_modality"]], [s["b_modality"]])
            values = values if isinstance(values, dict) else {"loss": values}
            for key, value in values.items():
                totals[f"val_{key}"] = totals.get(f"val_{key}", 0.0) + float(value)
        net.train(was)
        return {k: v / len(slices) for k, v in totals.items()}

    return validate


def _sensor_validator(slices: list[dict], device: torch.device):
    """Stage-1 validation: sensing MSE from the mean-rule fusion of each full slice."""
    step = SensorStep(rules=("mean",))
    return _validator(slices, device, lambda bank, a, b, ma, mb: step.loss(bank, a, b, (a + b) / 2, ma, mb)["total"])


#: fusion metrics reported by stage-2 validation (``val_<name>``; see :mod:`monai_emma.metrics`)
VALIDATION_METRICS = ("MI", "VIF", "Qabf", "SSIM")


def _fuser_validator(slices: list[dict], sensors: SensorBank, device: torch.device):
    """Stage-2 validation: the sensing part of the EMMA loss (``val_loss``, the key metric) and
    fusion metrics of the 8-bit fused image on each full slice."""
    from monai_emma.metrics import batch_fusion_metrics

    loss = EMMALoss(alpha=0.0)

    def score(fuser, a, b, ma, mb):
        x = torch.cat([a, b], 1)
        f = fuser(x)
        values = {"loss": loss(sensors(f, ma), a, sensors(f, mb), b)}
        to8 = lambda t: (t.clamp(0, 1) * 255).round().double().cpu()  # noqa: E731
        # metrics of the image users get: empty background stays empty, as in deployment
        metrics = batch_fusion_metrics(to8(zero_where_empty(f, x)), to8(a), to8(b), VALIDATION_METRICS)
        values.update({name: float(v[0]) for name, v in metrics.items()})
        return values

    return _validator(slices, device, score, prepare=lambda: sensors.to(device))


def _bank_export(bank: torch.nn.Module) -> dict:
    return {
        "format": "monai-emma-sensors/1",
        "preset_features": list(next(iter(bank.sensors.values())).features),
        "sensors": {m: s.state_dict() for m, s in bank.sensors.items()},
    }


def load_sensor_bank(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SensorBank:
    """Rebuild a :class:`SensorBank` from a ``sensors.pt`` written by stage 1."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "monai-emma-sensors/1":
        raise ValueError(f"{path}: not a monai-emma sensors file")
    bank = SensorBank(list(state["sensors"]), features=state["preset_features"])
    for m, sd in state["sensors"].items():
        bank.sensors[m].load_state_dict(sd)
    return bank


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


def _stage_trainer(
    stage: str,
    network: torch.nn.Module,
    step,
    train_pairs: Sequence[SlicePair],
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    validate,
    export,
    final_file: str,
    trainer_kwargs: dict,
):
    network = _distributed(network, device, stage == "sensors", trainer_kwargs)
    return build_stage_trainer(
        stage,
        network,
        step,
        _dataset(train_pairs, cfg, stage),
        cfg.sensor if stage == "sensors" else cfg.fuser,
        cfg,
        out_dir,
        device,
        validate=validate,
        export=lambda net: export(net.module if hasattr(net, "module") else net),
        final_file=final_file,
        **trainer_kwargs,
    )


def _modalities(pairs: Sequence[SlicePair]) -> list[str]:
    """The modality names of a set of pairs (one pseudo-sensor each)."""
    return sorted({p.a_modality for p in pairs} | {p.b_modality for p in pairs})


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
    modalities = _modalities(train_pairs)
    torch.manual_seed(cfg.seed)
    bank = SensorBank(modalities, preset=cfg.sensor_preset).to(device)
    validate = _sensor_validator(validation_slices(spread_subset(val_pairs, cfg.val_slices)), device)
    step = SensorStep(cfg.stage1_rules, seed=cfg.seed)
    return _stage_trainer(
        "sensors",
        bank,
        step,
        train_pairs,
        cfg,
        Path(out_dir),
        device,
        validate,
        _bank_export,
        SENSORS_FILE,
        trainer_kwargs,
    )


def fuser_trainer(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    sensors: SensorBank,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    **trainer_kwargs: Any,
):
    """Stage 2, ready to run: the U-Fuser against frozen ``sensors``; ``trainer.run()`` writes
    ``ufuser.pt`` in ``out_dir``. Arguments as :func:`sensor_trainer`."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed + 1)
    fuser = UFuser().to(device)
    sensors = sensors.to(device).freeze()
    group = TransformGroup(cfg.shifts, cfg.rotations, cfg.reflections)
    loss = EMMALoss(alpha=cfg.alpha, prior_weight=cfg.prior_weight, prior_gradient_weight=cfg.prior_gradient_weight)
    step = FuserStep(sensors, loss, group, cfg.seed)
    validate = _fuser_validator(validation_slices(spread_subset(val_pairs, cfg.val_slices)), sensors, device)
    return _stage_trainer(
        "fuser",
        fuser,
        step,
        train_pairs,
        cfg,
        Path(out_dir),
        device,
        validate,
        lambda net: net.state_dict(),
        FUSER_FILE,
        trainer_kwargs,
    )


def _run(stage: str, out_dir: str | os.PathLike, final_file: str, prepared) -> StageResult:
    t0 = time.perf_counter()
    trainer, epoch_end = prepared
    trainer.run()
    return StageResult(stage, Path(out_dir) / final_file, epoch_end.history, time.perf_counter() - t0)


def train_sensors(
    train_pairs: Sequence[SlicePair],
    val_pairs: Sequence[SlicePair],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    device: torch.device,
    **trainer_kwargs: Any,
) -> StageResult:
    """Stage 1 run to the end (see :func:`sensor_trainer`)."""
    prepared = sensor_trainer(train_pairs, val_pairs, cfg, out_dir, device, **trainer_kwargs)
    return _run("sensors", out_dir, SENSORS_FILE, prepared)


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
    return _run("fuser", out_dir, FUSER_FILE, prepared)


def run_training(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
) -> dict[str, StageResult]:
    """Both stages in this process (``monai-emma train``) on one data root or several. A finished
    stage is not repeated when ``resume`` is set; an interrupted one continues from its last epoch
    checkpoint. ``split.json`` lists every root and the validation ids."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    pairs = find_pairs(data)  # fails before anything is written
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(cfg.to_json())
    (out_dir / "split.json").write_text(json.dumps(split_record(data, train_pairs, val_pairs), indent=1))
    results: dict[str, StageResult] = {}
    sensors_path = out_dir / "stage1_sensors" / SENSORS_FILE
    if cfg.sensor_preset == IDENTITY_SENSORS:
        logger.info("identity sensors: no stage 1")
        sensors = SensorBank(_modalities(train_pairs), preset=IDENTITY_SENSORS)
    else:
        if resume and sensors_path.exists():
            logger.info("stage 1 already finished: %s", sensors_path)
            results["sensors"] = StageResult("sensors", sensors_path)
        else:
            results["sensors"] = train_sensors(
                train_pairs, val_pairs, cfg, out_dir / "stage1_sensors", device, resume=resume, progress=progress
            )
        sensors = load_sensor_bank(results["sensors"].weights)
    fuser_path = out_dir / "stage2_fuser" / FUSER_FILE
    if resume and fuser_path.exists():
        logger.info("stage 2 already finished: %s", fuser_path)
        results["fuser"] = StageResult("fuser", fuser_path)
    else:
        results["fuser"] = train_fuser(
            train_pairs, val_pairs, sensors, cfg, out_dir / "stage2_fuser", device, resume=resume, progress=progress
        )
    return results
