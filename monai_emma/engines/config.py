"""Training configuration: one dataclass for both stages, and the named recipes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StageConfig", "TrainConfig", "RECIPES", "SCHEDULES", "recipe", "parse_overrides"]

#: learning-rate schedules of a stage: ``step`` (StepLR, the paper's) or ``cosine`` (cosine decay to 0)
SCHEDULES = ("step", "cosine")


@dataclass
class StageConfig:
    """Optimisation settings of one stage."""

    epochs: int
    batch_size: int
    lr: float
    lr_step: int  # StepLR step size, in epochs
    lr_gamma: float
    patch_size: int
    samples_per_epoch: int | None = None  # None: one patch per training pair and epoch
    schedule: str = "step"  # "step" (StepLR(lr_step, lr_gamma)) or "cosine" (to 0 over all epochs)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; choose from {list(SCHEDULES)}")


@dataclass
class TrainConfig:
    """Everything that defines a two-stage EMMA training run.

    Stage 1 trains one :class:`~monai_emma.networks.PseudoSensor` per modality to map a fused
    image back to that modality (MSE); its inputs are classical fusions (``stage1_rules``, mixed
    per sample) or a folder of fused images (``fused_dir``). Stage 2 trains the U-Fuser with the
    sensors frozen (:class:`~monai_emma.losses.EMMALoss`).
    """

    recipe: str
    sensor: StageConfig
    fuser: StageConfig
    sensor_preset: str = "lite"
    stage1_rules: tuple[str, ...] = ("mean", "max", "laplacian")
    fused_dir: str | None = None
    alpha: float = 0.1
    prior_weight: float = 0.0  # MaxFidelityPrior weight in stage 2 (not in the paper)
    prior_gradient_weight: float = 1.0  # weight of the prior's edge term inside the prior
    # per modality of the second source, e.g. {"pet": 80, "spect": 80}; others keep the above (not in the paper)
    prior_gradient_weight_by_modality: dict[str, float] = field(default_factory=dict)
    prior_ssim_weight: float = 0.0  # weight of the prior's structure term, 2 - SSIM(f, a) - SSIM(f, b)
    prior_ssim_weight_by_modality: dict[str, float] = field(default_factory=dict)  # e.g. {"ct": 1}
    prior_ssim_data_range: float = 1.0  # SSIM's K1/K2 constants scale with it; 2 / 255: the metric's
    prior_ssim_min_std: float = 0.0  # structure term only where both sources' 7x7 std reach this
    shifts: int = 3
    rotations: int = 3
    reflections: int = 3
    seed: int = 0
    val_fraction: float = 0.2
    val_slices: int | None = 64  # validation slices scored per epoch (stratified subset); None: all
    amp: bool = False  # float16 mixed precision with a gradient scaler, CUDA only
    precision: str = "fp32"  # "bf16": the training step under bfloat16 autocast (CPU with AMX, GPUs)
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from monai_emma.precision import check_precision

        check_precision(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["sensor"] = StageConfig(**d["sensor"])
        d["fuser"] = StageConfig(**d["fuser"])
        d["stage1_rules"] = tuple(d.get("stage1_rules", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with top-level fields, or ``sensor_<field>`` / ``fuser_<field>`` stage fields, replaced.
        ``epochs`` and ``batch_size`` apply to both stages. ``None`` values are ignored."""
        cfg = TrainConfig.from_dict(self.to_dict())
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("epochs", "batch_size"):
                setattr(cfg.sensor, key, value)
                setattr(cfg.fuser, key, value)
            elif key.startswith(("sensor_", "fuser_")) and key != "sensor_preset":
                stage, name = key.split("_", 1)
                if not hasattr(StageConfig, "__dataclass_fields__") or name not in StageConfig.__dataclass_fields__:
                    raise ValueError(f"unknown stage setting {key!r}")
                setattr(getattr(cfg, stage), name, value)
            elif key in TrainConfig.__dataclass_fields__:
                setattr(cfg, key, value)
            else:
                raise ValueError(f"unknown training setting {key!r}")
        return TrainConfig.from_dict(cfg.to_dict())  # normalised (tuples) and checked again


RECIPES: dict[str, TrainConfig] = {
    # the paper's recipe (official train_AiAv.py / train_Fusion.py); for GPUs
    "paper": TrainConfig(
        recipe="paper",
        sensor=StageConfig(epochs=40, batch_size=64, lr=1e-4, lr_step=10, lr_gamma=0.5, patch_size=128),
        fuser=StageConfig(epochs=120, batch_size=4, lr=1e-4, lr_step=20, lr_gamma=0.5, patch_size=128),
        sensor_preset="paper",
    ),
    # a CPU budget: lite sensors, 64-pixel patches, one element of each kind in the group and a
    # bounded number of steps per epoch; both stages in well under an hour on 2 cores
    "cpu": TrainConfig(
        recipe="cpu",
        sensor=StageConfig(
            epochs=20, batch_size=16, lr=2e-3, lr_step=8, lr_gamma=0.5, patch_size=64, samples_per_epoch=960
        ),
        fuser=StageConfig(
            epochs=16, batch_size=4, lr=3e-4, lr_step=6, lr_gamma=0.5, patch_size=64, samples_per_epoch=320
        ),
        sensor_preset="lite",
        shifts=1,
        rotations=1,
        reflections=1,
    ),
}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["fuser_lr=1e-3", "stage1_rules=[\"max\"]"]`` -> ``{"fuser_lr": 0.001, "stage1_rules": ["max"]}``:
    values are JSON where they parse as JSON, strings otherwise.

    Raises:
        ValueError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. fuser_lr=0.001")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The named recipe (``"paper"`` or ``"cpu"``) with optional overrides (see
    :meth:`TrainConfig.with_overrides`)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name].with_overrides(**overrides)
