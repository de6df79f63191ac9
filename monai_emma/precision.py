"""Numeric precision of training and inference: ``"fp32"``, ``"bf16"``, or (inference) ``"auto"``.

``bf16`` runs the networks under ``torch.autocast`` with bfloat16: convolutions and matrix
products in bfloat16, reductions such as layer norms and softmax in float32, as PyTorch's autocast
lists decide. It pays off where the hardware computes bfloat16 natively: CPUs with AMX or
AVX-512-BF16 (Intel Xeon since Cooper Lake / Sapphire Rapids, AMD Zen 4) and GPUs from NVIDIA
Ampere on. Elsewhere it still runs, emulated and slower. See ``docs/performance.md`` for the
speed and the change in fusion scores.

``"auto"`` (the default of ``monai-emma fuse``, ``fuse-folder`` and the bundle's inference) is
``bf16`` where the device computes bfloat16 natively and ``fp32`` elsewhere: on the validation
pairs bfloat16 inference moves VIF, Qabf and SSIM by less than 0.5 % (0.2 % at most on average)
and is 1.4-1.9x faster on an AMX CPU. Training and ``evaluate`` default to ``fp32``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = [
    "PRECISIONS",
    "INFERENCE_PRECISIONS",
    "check_precision",
    "resolve_precision",
    "auto_note",
    "native_bf16",
    "autocast",
]

#: the precisions of training (``--precision``)
PRECISIONS = ("fp32", "bf16")
#: the precisions of inference: ``auto`` picks bf16 where it is native
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` if it is one of ``choices``.

    Raises:
        ValueError: any other value, naming the choices.
    """
    if precision not in choices:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(choices)}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` becomes ``"bf16"`` where :func:`native_bf16`, else
    ``"fp32"``; the others are returned as they are.

    Raises:
        ValueError: not one of :data:`INFERENCE_PRECISIONS`.
    """
    if check_precision(precision, INFERENCE_PRECISIONS) == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def auto_note(precision: str, device: torch.device | str = "cpu") -> str | None:
    """The note for users when ``"auto"`` chose bfloat16 on ``device``, else None."""
    if precision != "auto" or resolve_precision(precision, device) != "bf16":
        return None
    kind = torch.device(device).type.upper()
    return f"U-Fuser in bfloat16 (precision auto: native on this {kind}; --precision fp32 for float32)"


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
    bfloat16 for ``"bf16"`` (and ``"auto"`` where bfloat16 is native), a context that changes
    nothing for ``"fp32"``.

    Example:
        >>> import torch
        >>> with autocast("bf16", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
