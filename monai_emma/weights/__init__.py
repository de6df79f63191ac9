"""Shipped weights, typed in the torchvision manner: :class:`UFuserWeights` and :class:`SensorWeights`.

Each member is one shipped set (``V1``: Harvard only; ``V2``: Harvard + AANLIB, 12 stage-2 epochs;
``V2_1``, named ``"v2.1"``: the same schedule finished, 20 epochs; ``V3``: v2.1 continued for 6
epochs with a stronger edge prior for MRI-PET/SPECT) and ``DEFAULT`` is an alias of the current
one. A set may share another set's file (``"set:v3"`` in ``weights.json``: v2.1's sensors are
v3's). Members carry ``.meta`` (version, parameter count,
training recipe and data, validation scores, how and where they were trained) and
``.transforms`` (the intensity preprocessing the weights expect, per modality)::

    from monai_emma.networks import ufuser
    from monai_emma.weights import UFuserWeights

    net = ufuser(weights=UFuserWeights.DEFAULT)   # eval mode
    UFuserWeights.V1.meta["data"], UFuserWeights.DEFAULT.meta["validation"]
    scale_ct = UFuserWeights.DEFAULT.transforms["ct"]

Where the files are: the default set is the EMMA bundle's ``models/model.pt`` and
``models/sensors.pt`` (one copy in the repository; a wheel carries it under
``monai_emma/weights/bundle_models``); earlier sets stay in this package folder. ``weights.json``
records every set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "WEIGHTS_DIR",
    "Weights",
    "UFuserWeights",
    "SensorWeights",
    "weights_info",
    "bundle_models_dir",
    "get_weights",
    "load_ufuser",
    "load_sensors",
]

WEIGHTS_DIR = Path(__file__).resolve().parent
_BUNDLE_PREFIX = "bundle:"
_SET_PREFIX = "set:"


def weights_info() -> dict[str, Any]:
    """The record of the shipped weights (``weights.json``)."""
    path = WEIGHTS_DIR / "weights.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights record; this installation ships no trained weights")
    return json.loads(path.read_text())


def bundle_models_dir() -> Path:
    """Where the default set's files are: the copy inside an installed wheel, else the source
    checkout's ``bundles/emma/models``."""
    installed = WEIGHTS_DIR / "bundle_models"
    if installed.is_dir():
        return installed
    return WEIGHTS_DIR.parents[1] / "bundles" / "emma" / "models"


@dataclass(frozen=True)
class Weights:
    """One shipped file: the set it belongs to and what it holds (``"ufuser"`` or ``"sensors"``)."""

    set_name: str
    kind: str

    @property
    def record(self) -> dict[str, Any]:
        return weights_info()["sets"][self.set_name]

    @property
    def path(self) -> Path:
        entry = self.record[self.kind]
        if entry.startswith(_SET_PREFIX):  # the same file as another set's (e.g. sensors kept by a fine-tune)
            return Weights(entry[len(_SET_PREFIX) :], self.kind).path
        if entry.startswith(_BUNDLE_PREFIX):
            path = bundle_models_dir() / entry[len(_BUNDLE_PREFIX) :]
        else:
            path = WEIGHTS_DIR / entry
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weight file of set {self.set_name!r} missing from the installation")
        return path

    def get_state_dict(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The tensors (``torch.load(weights_only=True)``)."""
        return torch.load(self.path, map_location=map_location, weights_only=True)


class _WeightsEnum(Enum):
    """Members hold :class:`Weights`; ``DEFAULT`` is an alias of the current set."""

    @property
    def set_name(self) -> str:
        return self.value.set_name

    @property
    def path(self) -> Path:
        return self.value.path

    def get_state_dict(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return self.value.get_state_dict(map_location)

    @property
    def meta(self) -> dict[str, Any]:
        """Version, parameter count, recipe and data, validation scores, hardware, command."""
        return _meta(self.value)

    @property
    def transforms(self) -> dict[str, Any]:
        """The intensity preprocessing these weights expect, per modality: MONAI transforms mapping
        a volume of that modality to [0, 1] as the training slices looked (2D 8-bit images are
        divided by 255 and fused on luminance instead)."""
        from monai_emma.transforms.intensity import DEFAULT_INTENSITY, ModalityScale

        return {m: ModalityScale(m) for m in DEFAULT_INTENSITY}


@cache
def _num_params(set_name: str, kind: str) -> int:
    state = Weights(set_name, kind).get_state_dict()
    if kind == "sensors":
        return sum(t.numel() for sd in state["sensors"].values() for t in sd.values())
    return sum(t.numel() for t in state.values())


def _meta(w: Weights) -> dict[str, Any]:
    rec = w.record
    return {
        "version": w.set_name,
        "num_params": _num_params(w.set_name, w.kind),
        "recipe": rec.get("recipe"),
        "config": rec.get("config", {}),
        "data": rec.get("data"),
        "train_pairs": rec.get("train_pairs"),
        "val_pairs": rec.get("val_pairs", []),
        "validation": rec.get("validation", {}),
        "stages": rec.get("stages", {}),
        "hardware": rec.get("hardware"),
        "command": rec.get("command"),
        "registry": rec.get("registry"),
        "results": rec.get("results", ""),
    }


def _member_name(set_name: str) -> str:
    """The enumeration member of a set: ``v2`` -> ``V2``, ``v2.1`` -> ``V2_1``."""
    return set_name.upper().replace(".", "_").replace("-", "_")


def _enum(name: str, kind: str, doc: str) -> type[_WeightsEnum]:
    try:
        info = weights_info()
    except FileNotFoundError:  # an installation without weights: an empty enumeration
        info = {"sets": {}, "default": None}
    members = {_member_name(s): Weights(s, kind) for s in sorted(info["sets"])}
    if info.get("default") in info["sets"]:
        members["DEFAULT"] = Weights(info["default"], kind)  # equal value: an alias of that member
    enum = _WeightsEnum(name, members, module=__name__)
    enum.__doc__ = doc
    return enum


UFuserWeights = _enum(
    "UFuserWeights",
    "ufuser",
    "Shipped U-Fuser weights (``V1``, ``V2``, ...; ``DEFAULT``). Use with :func:`monai_emma.networks.ufuser`.",
)
SensorWeights = _enum(
    "SensorWeights",
    "sensors",
    "Shipped pseudo-sensor banks, one per U-Fuser set. Use with :func:`monai_emma.networks.pseudo_sensors`.",
)


def get_weights(name: str | _WeightsEnum, kind: str = "ufuser") -> _WeightsEnum:
    """A member by name: ``"default"``, ``"v1"``, ``"V2"``, ``"v2.1"`` (any case; ``V2_1`` too) or
    the member itself.

    Raises:
        KeyError: no such set (the message lists the shipped ones).
    """
    enum = UFuserWeights if kind == "ufuser" else SensorWeights
    if isinstance(name, _WeightsEnum):
        return enum[name.name] if name.name in enum.__members__ else name
    try:
        return enum[_member_name(str(name))]
    except KeyError:
        shipped = ", ".join(sorted({m.set_name for m in enum}) + ["default"])
        raise KeyError(f"unknown weight set {name!r}; shipped: {shipped}") from None


def load_ufuser(name: str = "default", map_location: str | torch.device = "cpu"):
    """Deprecated (removed in the next release): ``monai_emma.networks.ufuser(weights=get_weights(name))``."""
    import warnings

    from monai_emma.networks import ufuser

    warnings.warn("load_ufuser is deprecated; use networks.ufuser(weights=UFuserWeights.X)", DeprecationWarning, 2)
    return ufuser(weights=get_weights(name)).to(map_location)


def load_sensors(name: str = "default", map_location: str | torch.device = "cpu"):
    """Deprecated (removed in the next release): ``monai_emma.networks.pseudo_sensors(weights=...)``."""
    import warnings

    from monai_emma.networks import pseudo_sensors

    warnings.warn(
        "load_sensors is deprecated; use networks.pseudo_sensors(weights=SensorWeights.X)", DeprecationWarning, 2
    )
    return pseudo_sensors(weights=get_weights(name, "sensors")).to(map_location)
