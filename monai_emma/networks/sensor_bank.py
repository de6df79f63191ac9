"""A bank of pseudo-sensors, one per modality, and its file format.

Stage 1 of EMMA trains the bank; stage 2 freezes it; the shipped weights carry one. The file
(``sensors.pt``) is a plain dictionary of tensors and names, loadable with
``torch.load(weights_only=True)``::

    {"format": "monai-emma-sensors/1", "preset_features": [8, 16, 32, 64, 128],
     "sensors": {"mri": state_dict, "ct": state_dict, ...}}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_emma.networks.sensor import PseudoSensor

__all__ = [
    "IDENTITY_SENSORS",
    "SENSORS_FORMAT",
    "SensorBank",
    "route",
    "sensor_bank_state",
    "sensor_bank_from_state",
    "load_sensor_bank",
    "pseudo_sensors",
]

#: ``preset`` of the no-pseudo-sensing ablation: every sensor is the identity.
IDENTITY_SENSORS = "identity"
#: the ``format`` entry of a sensors file
SENSORS_FORMAT = "monai-emma-sensors/1"


def route(modules: Mapping[str, nn.Module], x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
    """Apply ``modules[m]`` to the samples of ``x`` whose modality is ``m`` (differentiable).

    Args:
        modules: one network per modality name.
        x: (N, C, H, W).
        modalities: N modality names.
    """
    if len(modalities) != x.shape[0]:
        raise ValueError(f"{len(modalities)} modality labels for a batch of {x.shape[0]}")
    names = list(dict.fromkeys(modalities))
    if len(names) == 1:
        return modules[names[0]](x)
    out = None
    for name in names:
        idx = torch.tensor([i for i, m in enumerate(modalities) if m == name], device=x.device)
        y = modules[name](x.index_select(0, idx))
        if out is None:
            out = x.new_zeros((x.shape[0], *y.shape[1:]))
        out = out.index_copy(0, idx, y)
    return out


class SensorBank(nn.Module):
    """One pseudo-sensor per modality name (``"mri"``, ``"ct"``, ``"pet"``, ...).

    Args:
        modalities: modality names.
        preset: :class:`~monai_emma.networks.PseudoSensor` preset, or ``"identity"``: every sensor
            returns the fused image unchanged (the "without pseudo-sensing" ablation; nothing to train).
        **kwargs: further ``PseudoSensor`` arguments (e.g. ``features``).

    Shape:
        ``forward(x, modalities)``: (N, 1, H, W) and N names -> (N, 1, H, W).

    Example:
        >>> import torch
        >>> bank = SensorBank(["mri", "ct"], features=(4, 8))
        >>> bank(torch.rand(2, 1, 16, 16), ["mri", "ct"]).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, modalities: Sequence[str], preset: str = "lite", **kwargs: Any) -> None:
        super().__init__()
        names = sorted(set(modalities))
        if preset == IDENTITY_SENSORS:
            self.sensors = nn.ModuleDict({m: nn.Identity() for m in names})
        else:
            self.sensors = nn.ModuleDict({m: PseudoSensor(preset=preset, **kwargs) for m in names})

    @property
    def modalities(self) -> list[str]:
        return list(self.sensors.keys())

    def forward(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        return route(self.sensors, x, modalities)

    def freeze(self) -> SensorBank:
        """Eval mode and no parameter gradients (stage 2)."""
        self.eval()
        self.requires_grad_(False)
        return self


def sensor_bank_state(bank: nn.Module) -> dict[str, Any]:
    """What a sensors file holds for ``bank`` (see the module docstring)."""
    bank = bank.module if hasattr(bank, "module") else bank  # unwrap DistributedDataParallel
    return {
        "format": SENSORS_FORMAT,
        "preset_features": list(next(iter(bank.sensors.values())).features),
        "sensors": {m: s.state_dict() for m, s in bank.sensors.items()},
    }


def sensor_bank_from_state(state: Mapping[str, Any], source: str = "sensors state") -> SensorBank:
    """Rebuild a :class:`SensorBank` from :func:`sensor_bank_state`'s dictionary.

    Raises:
        ValueError: not a sensors state (``source`` names where it came from).
    """
    if not isinstance(state, Mapping) or state.get("format") != SENSORS_FORMAT:
        raise ValueError(f"{source}: not a monai-emma sensors file")
    bank = SensorBank(list(state["sensors"]), features=state["preset_features"])
    for m, sd in state["sensors"].items():
        bank.sensors[m].load_state_dict(sd)
    return bank


def load_sensor_bank(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SensorBank:
    """Rebuild a :class:`SensorBank` from a ``sensors.pt`` file (stage 1's output, or shipped)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    return sensor_bank_from_state(state, str(path))


def pseudo_sensors(weights: Any | None = None, modalities: Sequence[str] = ("mri", "ct", "pet", "spect")) -> SensorBank:
    """A :class:`SensorBank`: the shipped one (``weights``, e.g.
    ``monai_emma.weights.SensorWeights.DEFAULT``; frozen, eval mode) or new lite sensors for
    ``modalities`` (``weights=None``)."""
    if weights is None:
        return SensorBank(modalities)
    return sensor_bank_from_state(weights.get_state_dict(), str(getattr(weights, "name", "sensors"))).freeze()
