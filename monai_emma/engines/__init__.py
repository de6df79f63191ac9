"""The training engine: configuration, the two stage steps, MONAI trainers and the two-stage run."""

from monai_emma.engines.config import RECIPES, StageConfig, TrainConfig, recipe
from monai_emma.engines.steps import FuserStep, SensorBank, SensorStep, route
from monai_emma.engines.trainer import build_stage_trainer, latest_checkpoint
from monai_emma.engines.two_stage import (
    fuser_trainer,
    load_sensor_bank,
    run_training,
    sensor_trainer,
    train_fuser,
    train_sensors,
)

__all__ = [
    "RECIPES",
    "StageConfig",
    "TrainConfig",
    "recipe",
    "FuserStep",
    "SensorBank",
    "SensorStep",
    "route",
    "build_stage_trainer",
    "latest_checkpoint",
    "load_sensor_bank",
    "run_training",
    "train_fuser",
    "train_sensors",
    "sensor_trainer",
    "fuser_trainer",
]
