"""Loading a published network's released snapshot (the learned peers EMMA is compared with).

Their snapshots are never shipped with monai-emma (their repositories publish no licence); a user
gives the file's path or names it in an environment variable. Every failure names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["load_released", "check_sources"]


def check_sources(sources: tuple[torch.Tensor, ...], channels: int, name: str) -> None:
    """Two or more same-sized (B, ``channels``, H, W) tensors, else a ValueError naming ``name``."""
    if len(sources) < 2:
        raise ValueError(f"{name} fuses two or more sources, got {len(sources)}")
    shapes = {tuple(s.shape) for s in sources}
    shape = next(iter(shapes))
    if len(shapes) != 1 or len(shape) != 4 or shape[1] != channels:
        raise ValueError(f"{name} takes same-sized (B, {channels}, H, W) sources, got {sorted(shapes)}")


def load_released(net: nn.Module, path: str | os.PathLike | None, env_var: str, where: str) -> nn.Module:
    """Load a released state dict into ``net`` (strict) and return it in eval mode.

    Args:
        net: the freshly built network.
        path: the snapshot; default: the file named by ``env_var``.
        env_var: environment variable that may name the snapshot.
        where: where the snapshot is published (for the error message).

    Raises:
        FileNotFoundError: no path and no environment variable, or no such file.
        ValueError: the file is not a state dict of this network (the message names the file).
    """
    name = type(net).__name__
    path = path or os.environ.get(env_var)
    if not path:
        raise FileNotFoundError(
            f"{name} needs its released snapshot: pass its path or set {env_var} "
            f"({where}; not shipped: that repository publishes no licence)"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {name} snapshot not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or format errors all mean the same to the user
        raise ValueError(f"{path}: not a readable PyTorch state dict ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: not a snapshot of {name}: {str(err).splitlines()[0]}") from err
    return net.eval()
