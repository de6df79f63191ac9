"""The two stages of EMMA training and the folder layout of a run: one definition for the engine,
``monai-emma train``, the bundle, the Ray pipeline and ``scripts/ship_weights.py``.

A run folder::

    <run>/config.json                    the TrainConfig
    <run>/split.json                     data roots (or the datalist), counts, training and validation ids
    <run>/cache/                         preprocessed datalist studies (default --cache-dir)
    <run>/stage1_sensors/sensors.pt      stage 1's pseudo-sensors (plus best_sensors.pt,
                                         history_sensors.csv, sensors_checkpoint_epoch=N.pt)
    <run>/stage2_fuser/ufuser.pt         stage 2's U-Fuser (plus best_fuser.pt, ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Stage", "SENSORS", "FUSER", "STAGES", "get_stage", "RunLayout"]


@dataclass(frozen=True)
class Stage:
    """One training stage: its name, number, settings and files."""

    name: str  # "sensors" or "fuser"
    number: int  # 1 or 2
    settings_key: str  # the TrainConfig field holding its StageConfig ("sensor" or "fuser")
    weights_file: str  # final weights in the stage folder

    @property
    def folder(self) -> str:
        return f"stage{self.number}_{self.name}"

    @property
    def history_file(self) -> str:
        return f"history_{self.name}.csv"

    @property
    def best_file(self) -> str:
        return f"best_{self.name}.pt"

    @property
    def best_record(self) -> str:
        return f"best_{self.name}.json"

    @property
    def checkpoint_prefix(self) -> str:
        """MONAI ``CheckpointSaver`` prefix: ``<prefix>_checkpoint_epoch=<n>.pt``."""
        return self.name

    @property
    def epochs_setting(self) -> str:
        """The override that sets this stage's epochs (``sensor_epochs`` / ``fuser_epochs``)."""
        return f"{self.settings_key}_epochs"

    def settings(self, cfg: Any):
        """This stage's :class:`~monai_emma.engines.config.StageConfig` in a TrainConfig."""
        return getattr(cfg, self.settings_key)


SENSORS = Stage("sensors", 1, "sensor", "sensors.pt")
FUSER = Stage("fuser", 2, "fuser", "ufuser.pt")
STAGES: tuple[Stage, ...] = (SENSORS, FUSER)


def get_stage(stage: str | Stage) -> Stage:
    """The :class:`Stage` named ``stage`` (or ``stage`` itself).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(stage, Stage):
        return stage
    for s in STAGES:
        if s.name == stage:
            return s
    raise ValueError(f"stage must be one of {[s.name for s in STAGES]}, not {stage!r}")


class RunLayout:
    """Paths of a run folder (see the module docstring) and its record files."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def split_file(self) -> Path:
        return self.root / "split.json"

    def stage_dir(self, stage: str | Stage) -> Path:
        return self.root / get_stage(stage).folder

    def weights(self, stage: str | Stage) -> Path:
        s = get_stage(stage)
        return self.stage_dir(s) / s.weights_file

    def history(self, stage: str | Stage) -> Path:
        s = get_stage(stage)
        return self.stage_dir(s) / s.history_file

    def write_record(
        self, cfg: Any, data: Any, train: Sequence[Any], val: Sequence[Any], split: dict | None = None
    ) -> None:
        """``config.json`` (``cfg.to_json()``) and ``split.json``: ``split`` when given (a datalist's
        record, :meth:`monai_emma.studies.Datalist.training_split`), else every root, counts, ids."""
        from monai_emma.data.pairs import split_record

        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(cfg.to_json())
        record = split if split is not None else split_record(data, train, val)
        self.split_file.write_text(json.dumps(record, indent=1))
