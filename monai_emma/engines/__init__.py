"""The training engine: configuration, stages and run layout, the two stage steps, MONAI trainers
and evaluators, and the two-stage run."""

from monai_emma.engines.config import RECIPES, StageConfig, TrainConfig, recipe
from monai_emma.engines.stages import FUSER, SENSORS, STAGES, RunLayout, Stage, get_stage
from monai_emma.engines.steps import FuserStep, SensorStep
from monai_emma.engines.trainer import EMMATrainer, build_stage_trainer, latest_checkpoint
from monai_emma.engines.two_stage import (
    fuser_trainer,
    modalities_of,
    run_training,
    sensor_trainer,
    train_fuser,
    train_sensors,
)
from monai_emma.engines.validation import fuser_validator, sensor_validator, validation_slices

__all__ = [
    "RECIPES",
    "StageConfig",
    "TrainConfig",
    "recipe",
    "Stage",
    "SENSORS",
    "FUSER",
    "STAGES",
    "RunLayout",
    "get_stage",
    "FuserStep",
    "SensorStep",
    "EMMATrainer",
    "build_stage_trainer",
    "latest_checkpoint",
    "run_training",
    "train_fuser",
    "train_sensors",
    "sensor_trainer",
    "fuser_trainer",
    "modalities_of",
    "sensor_validator",
    "fuser_validator",
    "validation_slices",
]
