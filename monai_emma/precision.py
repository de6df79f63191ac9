"""Numeric precision of training and inference: ``"fp32"`` (the default) or ``"bf16"``.

``bf16`` runs the networks under ``torch.autocast`` with bfloat16: convolutions and matrix
products in bfloat16, reductions such as layer norms and softmax in float32, as PyTorch's autocast
lists decide. It pays off where the hardware computes bfloat16 natively: CPUs with AMX or
AVX-512-BF16 (Intel Xeon since Cooper Lake / Sapphire Rapids, AMD Zen 4) and GPUs from NVIDIA
Ampere on. Elsewhere it still runs, emulated and slower. See ``docs/performance.md`` for the
speed and the change in fusion scores.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["PRECISIONS", "check_precision", "native_bf16", "autocast"]

#: the precisions every command accepts (``--precision``)
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: any other value, naming the choices.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (AMX or AVX-512-BF16 on a CPU; a GPU that
    reports bfloat16 support)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    caps: dict[str, Any] = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass of ``precision`` runs in on ``device``: ``torch.autocast`` with
    bfloat16 for ``"bf16"``, a context that changes nothing for ``"fp32"``.

    Example:
        >>> import torch
        >>> with autocast("bf16", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if check_precision(precision) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
