"""Key maps between the official EMMA checkpoints and monai-emma's module names.

The official release (``Zhaozixiang1228/MMIF-EMMA``) ships ``EMMA.pth`` (the U-Fuser) and
``Ai.pth`` / ``Av.pth`` (the pseudo-sensing U-Nets). Their state-dict keys are translated here
by explicit, documented rules so the released weights load into :class:`~monai_emma.networks.UFuser`
and :class:`~monai_emma.networks.PseudoSensor` unchanged.

U-Fuser (official -> ours); ``V`` is the visible/MRI slot (our channel 0, "a"), ``I`` the
infrared/CT/PET/SPECT slot (our channel 1, "b"); official levels count from 1, ours from 0:

=============================================  ===========================================
``V_en_{n}.`` / ``I_en_{n}.``                  ``encoder_a.{n-1}.`` / ``encoder_b.{n-1}.``
``V_down{n}.`` / ``I_down{n}.``                ``down_a.{n-1}.`` / ``down_b.{n-1}.``
``f_{n}.`` / ``de_{n}.``                       ``fusion.{n-1}.`` / ``decoder.{n-1}.``
``up{n}.0.``                                   ``up.{n-2}.0.``
``last.0.``                                    ``head.``
block ``GlobalFeature.norm1.body.``            ``global_branch.attn_norm.``
block ``GlobalFeature.norm2.body.``            ``global_branch.ffn_norm.``
block ``GlobalFeature.attn.scale``             ``global_branch.attn.temperature``
block ``GlobalFeature.attn.qkv1|qkv2|proj``    ``global_branch.attn.qkv_pointwise|qkv_spatial|proj``
block ``GlobalFeature.mlp.``                   ``global_branch.ffn.``
block ``LocalFeature.Extraction.{k}.conv.0|2`` ``local_branch.{k}.conv1|conv2``
block ``FFN.``                                 ``merge.``
=============================================  ===========================================

Pseudo-sensor (official ``UNet5`` -> :class:`~monai_emma.networks.PseudoSensor`):
``down{n}.conv.{0,1,3,4}`` -> ``encoder.{n-1}.{0.conv, 0.adn.N, 1.conv, 1.adn.N}``,
``up{n}.conv.*`` -> ``decoder.{n-1}.*`` (same inner map), ``up_sample{n}.0`` -> ``up.{n-2}.conv``,
``last.0`` -> ``head``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

__all__ = [
    "load_official_state_dict",
    "is_official_ufuser_state",
    "ufuser_key_from_official",
    "ufuser_key_to_official",
    "sensor_key_from_official",
    "sensor_key_to_official",
]

# (official, ours) name fragments inside one Restormer-CNN block; "{k}" is a number.
_BLOCK_RULES = [
    ("GlobalFeature.norm1.body.", "global_branch.attn_norm."),
    ("GlobalFeature.norm2.body.", "global_branch.ffn_norm."),
    ("GlobalFeature.attn.scale", "global_branch.attn.temperature"),
    ("GlobalFeature.attn.qkv1.", "global_branch.attn.qkv_pointwise."),
    ("GlobalFeature.attn.qkv2.", "global_branch.attn.qkv_spatial."),
    ("GlobalFeature.attn.proj.", "global_branch.attn.proj."),
    ("GlobalFeature.mlp.", "global_branch.ffn."),
    ("LocalFeature.Extraction.{k}.conv.0.", "local_branch.{k}.conv1."),
    ("LocalFeature.Extraction.{k}.conv.2.", "local_branch.{k}.conv2."),
    ("FFN.", "merge."),
    ("embed.", "embed."),
]
# (official, ours) prefixes with a level number: official levels count from 1, ours from 0.
_LEVEL_RULES = [
    ("V_en_{n}.", "encoder_a.{n}."),
    ("I_en_{n}.", "encoder_b.{n}."),
    ("f_{n}.", "fusion.{n}."),
    ("de_{n}.", "decoder.{n}."),
    ("V_down{n}.", "down_a.{n}."),
    ("I_down{n}.", "down_b.{n}."),
]


def _fail(key: str, what: str) -> KeyError:
    return KeyError(f"unexpected {what} key {key!r}: not part of the EMMA architecture")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(re.escape("{k}"), r"(?P<k>\d+)").replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile("^" + pattern)


def _rewrite(key: str, rules: list[tuple[str, str]], forward: bool, level_shift: int = 0) -> tuple[str, str] | None:
    """Match ``key`` against the source side of ``rules``; return (rewritten prefix, rest)."""
    for official, ours in rules:
        src, dst = (official, ours) if forward else (ours, official)
        m = _compile(src).match(key)
        if m:
            groups = m.groupdict()
            if "n" in groups:
                groups["n"] = str(int(groups["n"]) + (-level_shift if forward else level_shift))
            return dst.format(**groups), key[m.end() :]
    return None


def _ufuser_key(key: str, forward: bool) -> str:
    what = "official U-Fuser" if forward else "monai-emma U-Fuser"
    hit = _rewrite(key, _LEVEL_RULES, forward, level_shift=1)
    if hit:
        prefix, rest = hit
        if prefix.startswith(("down_", "V_down", "I_down")):
            return prefix + rest
        inner = _rewrite(rest, _BLOCK_RULES, forward)
        if inner:
            return prefix + inner[0] + inner[1]
        raise _fail(key, what)
    hit = _rewrite(key, [("up{n}.0.", "up.{n}.0.")], forward, level_shift=2) or _rewrite(
        key, [("last.0.", "head.")], forward
    )
    if hit:
        return hit[0] + hit[1]
    raise _fail(key, what)


def ufuser_key_from_official(key: str) -> str:
    """Translate one official U-Fuser key (``EMMA.pth``) to the monai-emma name."""
    return _ufuser_key(key, forward=True)


def ufuser_key_to_official(key: str) -> str:
    """Inverse of :func:`ufuser_key_from_official`."""
    return _ufuser_key(key, forward=False)


_SENSOR_RULES = [
    ("down{n}.conv.0.", "encoder.{n}.0.conv."),
    ("down{n}.conv.1.", "encoder.{n}.0.adn.N."),
    ("down{n}.conv.3.", "encoder.{n}.1.conv."),
    ("down{n}.conv.4.", "encoder.{n}.1.adn.N."),
    ("up{n}.conv.0.", "decoder.{n}.0.conv."),
    ("up{n}.conv.1.", "decoder.{n}.0.adn.N."),
    ("up{n}.conv.3.", "decoder.{n}.1.conv."),
    ("up{n}.conv.4.", "decoder.{n}.1.adn.N."),
]


def _sensor_key(key: str, forward: bool) -> str:
    hit = (
        _rewrite(key, _SENSOR_RULES, forward, level_shift=1)
        or _rewrite(key, [("up_sample{n}.0.", "up.{n}.conv.")], forward, level_shift=2)
        or _rewrite(key, [("last.0.", "head.")], forward)
    )
    if hit:
        return hit[0] + hit[1]
    raise _fail(key, "official pseudo-sensor" if forward else "monai-emma pseudo-sensor")


def sensor_key_from_official(key: str) -> str:
    """Translate one official pseudo-sensor key (``Ai.pth`` / ``Av.pth``) to the monai-emma name."""
    return _sensor_key(key, forward=True)


def sensor_key_to_official(key: str) -> str:
    """Inverse of :func:`sensor_key_from_official`."""
    return _sensor_key(key, forward=False)


def load_official_state_dict(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Read an official checkpoint (a path or a state dict), dropping a DataParallel ``module.`` prefix.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file holds no state dict.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = dict(path_or_state_dict)
    else:
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = dict(state["state_dict"])
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def is_official_ufuser_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the official U-Fuser key names (``V_en_1.``…, ``module.`` optional)."""
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    return any(k.startswith(("V_en_", "I_en_")) for k in keys)
