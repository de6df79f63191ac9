"""The training steps of both stages: the only place where EMMA's optimisation step is written.

Both are ``iteration_update`` callables for MONAI/ignite trainers (``step(engine, batch) -> dict``)
and are used unchanged by ``monai-emma train``, the MONAI bundle and the Ray Train workers
(where ``engine.network`` is wrapped in DistributedDataParallel).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import CommonKeys
from torch import nn

from monai_emma.baselines import mix_rules
from monai_emma.losses import EMMALoss
from monai_emma.networks.sensor_bank import IDENTITY_SENSORS, SensorBank, route
from monai_emma.precision import autocast
from monai_emma.transforms.equivariance import TransformGroup

__all__ = ["SensorStep", "FuserStep", "step_seed", "IDENTITY_SENSORS", "SensorBank", "route"]


def step_seed(seed: int, iteration: int) -> int:
    """Seed of the randomness inside one step: a function of the run seed and the global
    iteration only, so a resumed run repeats the uninterrupted run exactly."""
    return (int(seed) * 1_000_003 + int(iteration)) % (2**31 - 1)


def _labels(batch: Mapping, key: str, n: int) -> list[str]:
    value = batch[key]
    return [value] * n if isinstance(value, str) else list(value)


def _autocast(engine: Any, device: torch.device):
    """bfloat16 autocast for ``engine.precision == "bf16"``, float16 AMP for ``engine.amp`` on
    CUDA, else nothing."""
    if getattr(engine, "precision", "fp32") == "bf16":
        return autocast("bf16", device)
    enabled = bool(getattr(engine, "amp", False)) and device.type == "cuda"
    return torch.autocast(device_type=device.type, enabled=enabled)


def _optimise(engine: Any, loss: torch.Tensor) -> None:
    engine.optimizer.zero_grad(set_to_none=True)
    scaler = getattr(engine, "scaler", None)
    if getattr(engine, "amp", False) and scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(engine.optimizer)
        scaler.update()
    else:
        loss.backward()
        engine.optimizer.step()


class SensorStep:
    """Stage 1: every pseudo-sensor maps a fused image back to its source modality (MSE).

    The fused input is the batch's ``"fused"`` patch when present, else a classical fusion of
    ``(a, b)`` with a rule drawn per sample from ``rules``.

    Args:
        rules: classical fusion rules to mix (see :mod:`monai_emma.baselines`).
        seed: run seed (with the iteration, it fixes the rule choices).
    """

    def __init__(self, rules: Sequence[str] = ("mean", "max", "laplacian"), seed: int = 0) -> None:
        self.rules = tuple(rules)
        self.seed = seed

    def inputs(self, batch: Mapping, device: torch.device, iteration: int) -> tuple[torch.Tensor, ...]:
        a = batch["a"].to(device, non_blocking=True)
        b = batch["b"].to(device, non_blocking=True)
        if "fused" in batch:
            fused = batch["fused"].to(device, non_blocking=True)
        else:
            gen = torch.Generator().manual_seed(step_seed(self.seed, iteration))
            with torch.no_grad():
                fused = mix_rules(torch.cat([a, b], 1), self.rules, generator=gen)
        return a, b, fused

    def loss(self, bank: nn.Module, a, b, fused, mod_a: list[str], mod_b: list[str]) -> dict[str, torch.Tensor]:
        # one forward call for both sources (DistributedDataParallel expects one per backward)
        n = fused.shape[0]
        sensed = bank(torch.cat([fused, fused]), [*mod_a, *mod_b])
        sensed_a, sensed_b = sensed[:n], sensed[n:]
        la, lb = F.mse_loss(sensed_a, a), F.mse_loss(sensed_b, b)
        return {"sense_a": la, "sense_b": lb, "total": la + lb}

    def __call__(self, engine: Any, batch: Mapping) -> dict:
        engine.network.train()
        a, b, fused = self.inputs(batch, engine.state.device, engine.state.iteration)
        n = a.shape[0]
        with _autocast(engine, a.device):
            parts = self.loss(
                engine.network, a, b, fused, _labels(batch, "a_modality", n), _labels(batch, "b_modality", n)
            )
        _optimise(engine, parts["total"])
        return {CommonKeys.LOSS: parts["total"].detach(), **{k: v.detach() for k, v in parts.items()}}


class FuserStep:
    """Stage 2: U-Fuser training with frozen pseudo-sensors and the equivariance loss.

    ``f = F(a, b)``; loss ``ℓ(A_a(f), a) + ℓ(A_b(f), b) + α ℓ(f_t, F(A_a(f_t), A_b(f_t)))`` with
    ``f_t`` the transformation group applied to ``f``. Gradients reach F through ``f_t`` and
    through the re-fused images; the sensors never receive gradients. The group's identity
    element makes ``A(f)`` part of ``A(f_t)``, so each sensor runs once per step, on ``f_t``
    (the official loop senses ``f`` a second time). Frozen sensors run their fast path (batch
    norm folded, channels-last; see :class:`~monai_emma.networks.PseudoSensor`).

    Args:
        sensors: frozen :class:`SensorBank` (moved to the engine's device on first use).
        loss: :class:`~monai_emma.losses.EMMALoss`.
        group: :class:`~monai_emma.transforms.TransformGroup`.
        seed: run seed (with the iteration, it fixes the random shifts).
    """

    def __init__(self, sensors: SensorBank, loss: EMMALoss, group: TransformGroup, seed: int = 0) -> None:
        self.sensors = sensors.freeze()
        self.loss_fn = loss
        self.group = group
        self.seed = seed

    def loss(self, fuser: nn.Module, a, b, mod_a: list[str], mod_b: list[str], iteration: int) -> dict:
        n = a.shape[0]
        fused = fuser(torch.cat([a, b], 1))
        transformed = refused = None
        if self.loss_fn.alpha:
            self.group.set_random_state(seed=step_seed(self.seed, iteration))
            transformed = self.group(fused)
            g = transformed.shape[0] // n
            group_a, group_b = self.sensors(transformed, mod_a * g), self.sensors(transformed, mod_b * g)
            refused = fuser(torch.cat([group_a, group_b], 1))
        if transformed is not None and self.group.include_identity:
            # the group's first element is the identity: its sensed images are A(f) themselves
            sensed_a, sensed_b = group_a[:n], group_b[:n]
        else:
            sensed_a, sensed_b = self.sensors(fused, mod_a), self.sensors(fused, mod_b)
        parts = self.loss_fn.components(sensed_a, a, sensed_b, b, transformed, refused, fused, mod_b)
        parts["fused"] = fused
        return parts

    def __call__(self, engine: Any, batch: Mapping) -> dict:
        device = engine.state.device
        engine.network.train()
        self.sensors.to(device)
        a = batch["a"].to(device, non_blocking=True)
        b = batch["b"].to(device, non_blocking=True)
        n = a.shape[0]
        inferer = getattr(engine, "inferer", None)
        network = engine.network if inferer is None else functools.partial(inferer, network=engine.network)
        with _autocast(engine, device):
            parts = self.loss(
                network,
                a,
                b,
                _labels(batch, "a_modality", n),
                _labels(batch, "b_modality", n),
                engine.state.iteration,
            )
        _optimise(engine, parts["total"])
        out = {k: v.detach() for k, v in parts.items() if k != "fused"}
        return {CommonKeys.LOSS: out["total"], CommonKeys.PRED: parts["fused"].detach(), **out}
