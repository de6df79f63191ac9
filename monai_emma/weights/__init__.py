"""Shipped weights: named sets of a U-Fuser and its lite pseudo-sensors, with their record.

``weights.json`` beside the files says how each set was trained (data, recipe, epochs,
hardware, wall time, seed, losses, validation pairs) and which set is the ``default``. Sets keep
their names once shipped (``v1``: Harvard only; ``v2``: Harvard + AANLIB), so results stay
reproducible when the default moves on. Load them with :func:`load_ufuser` /
:meth:`monai_emma.networks.UFuser.pretrained` and :func:`load_sensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "WEIGHTS_DIR",
    "DEFAULT",
    "weights_info",
    "weight_sets",
    "resolve_set",
    "set_record",
    "weights_path",
    "load_ufuser",
    "load_ufuser_file",
    "load_sensors",
]

WEIGHTS_DIR = Path(__file__).resolve().parent
#: the name that always means "the set ``weights.json`` marks as default"
DEFAULT = "default"


def weights_info() -> dict[str, Any]:
    """The record of the shipped weights (``weights.json``)."""
    path = WEIGHTS_DIR / "weights.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights record; this installation ships no trained weights")
    return json.loads(path.read_text())


def weight_sets() -> list[str]:
    """Names of the shipped sets (``default`` is an alias of one of them)."""
    return sorted(weights_info()["sets"])


def resolve_set(name: str = DEFAULT) -> str:
    """The real set name behind ``name`` (``"default"`` -> e.g. ``"v2"``).

    Raises:
        KeyError: no such set (the message lists the shipped ones).
    """
    info = weights_info()
    real = info.get("default", "") if name == DEFAULT else name
    if real not in info["sets"]:
        shipped = ", ".join(f"{n} (default)" if n == info.get("default") else n for n in sorted(info["sets"]))
        raise KeyError(f"unknown weight set {name!r}; shipped: {shipped}")
    return real


def set_record(name: str = DEFAULT) -> dict[str, Any]:
    """How the named set was trained (its ``weights.json`` entry)."""
    return weights_info()["sets"][resolve_set(name)]


def weights_path(name: str = DEFAULT, kind: str = "ufuser") -> Path:
    """File of the named weight set (``kind``: ``"ufuser"`` or ``"sensors"``)."""
    path = WEIGHTS_DIR / set_record(name)[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file missing from the installation")
    return path


def load_ufuser_file(path, map_location: str | torch.device = "cpu"):
    """A :class:`~monai_emma.networks.UFuser` from a state-dict, checkpoint or official file, in eval mode
    (see :func:`monai_emma.model_source.load_state_dict_file`)."""
    from monai_emma.model_source import load_state_dict_file

    return load_state_dict_file(path, map_location)


def load_ufuser(name: str = DEFAULT, map_location: str | torch.device = "cpu"):
    """A :class:`~monai_emma.networks.UFuser` with the named shipped weights, in eval mode.

    Example:
        >>> from monai_emma.weights import load_ufuser
        >>> net = load_ufuser()      # the default set  # doctest: +SKIP
        >>> old = load_ufuser("v1")  # an earlier set, by name  # doctest: +SKIP
    """
    return load_ufuser_file(weights_path(name, "ufuser"), map_location)


def load_sensors(name: str = DEFAULT, map_location: str | torch.device = "cpu"):
    """The :class:`~monai_emma.engines.SensorBank` (lite pseudo-sensors) shipped with a weight set."""
    from monai_emma.engines.two_stage import load_sensor_bank

    return load_sensor_bank(weights_path(name, "sensors"), map_location=map_location).eval()
