"""Shipped weights: the package's default U-Fuser and lite pseudo-sensors, with their record.

``weights.json`` beside the files says how each set was trained (data, recipe, epochs,
hardware, wall time, seed, losses). Load them with :func:`load_ufuser` /
:meth:`monai_emma.networks.UFuser.pretrained` and :func:`load_sensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["WEIGHTS_DIR", "weights_info", "weights_path", "load_ufuser", "load_ufuser_file", "load_sensors"]

WEIGHTS_DIR = Path(__file__).resolve().parent


def weights_info() -> dict[str, Any]:
    """The record of the shipped weights (``weights.json``)."""
    path = WEIGHTS_DIR / "weights.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights record; this installation ships no trained weights")
    return json.loads(path.read_text())


def weights_path(name: str = "default", kind: str = "ufuser") -> Path:
    """File of the named weight set (``kind``: ``"ufuser"`` or ``"sensors"``)."""
    info = weights_info()
    sets = info["sets"]
    if name not in sets:
        raise KeyError(f"unknown weight set {name!r}; available: {sorted(sets)}")
    path = WEIGHTS_DIR / sets[name][kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file missing from the installation")
    return path


def load_ufuser_file(path, map_location: str | torch.device = "cpu"):
    """A :class:`~monai_emma.networks.UFuser` from a state-dict, checkpoint or official file, in eval mode
    (see :func:`monai_emma.model_source.load_state_dict_file`)."""
    from monai_emma.model_source import load_state_dict_file

    return load_state_dict_file(path, map_location)


def load_ufuser(name: str = "default", map_location: str | torch.device = "cpu"):
    """A :class:`~monai_emma.networks.UFuser` with the named shipped weights, in eval mode."""
    return load_ufuser_file(weights_path(name, "ufuser"), map_location)


def load_sensors(name: str = "default", map_location: str | torch.device = "cpu"):
    """The :class:`~monai_emma.engines.SensorBank` (lite pseudo-sensors) shipped with a weight set."""
    from monai_emma.engines.two_stage import load_sensor_bank

    return load_sensor_bank(weights_path(name, "sensors"), map_location=map_location).eval()
