"""Slice-by-slice fusion of volumes with MONAI's ``SliceInferer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SliceInferer

from monai_emma.precision import INFERENCE_PRECISIONS, autocast, check_precision
from monai_emma.threads import apply_thread_policy, current_policy, refresh_threads

__all__ = ["FusionInferer"]


class FusionInferer(SliceInferer):
    """Run a 2D fuser (e.g. :class:`~monai_emma.networks.UFuser`) on every slice of a 2-channel volume.

    Whole slices go through the network, ``sw_batch_size`` at a time (no tiling: the U-Fuser's
    channel attention is global, so tiles would change the result); MONAI's sliding-window
    machinery does the batching, the device placement and the progress bar. On CUDA, ``amp``
    runs the network under ``torch.autocast`` (float16); ``precision="bf16"`` runs it under
    bfloat16 autocast on any device (see :mod:`monai_emma.precision`). The output is float32.

    Args:
        spatial_dim: the slice axis of the (H, W, D) spatial dimensions (2 = the last).
        sw_batch_size: slices per network call.
        amp: mixed precision on CUDA (ignored on CPU).
        progress: show a progress bar over slice batches.
        sw_device: where the network runs (default: the input's device).
        device: where the output volume is assembled (default: the input's device).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the device computes it natively).

    Example:
        >>> net = UFuser().eval()  # doctest: +SKIP
        >>> vol = torch.rand(1, 2, 64, 64, 10)  # (B, 2, H, W, slices)
        >>> FusionInferer(sw_batch_size=4)(vol, net).shape  # doctest: +SKIP
        torch.Size([1, 1, 64, 64, 10])
    """

    def __init__(
        self,
        spatial_dim: int = 2,
        sw_batch_size: int = 8,
        amp: bool = False,
        progress: bool = False,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            spatial_dim=spatial_dim,
            roi_size=(-1, -1),  # non-positive: the whole slice
            sw_batch_size=sw_batch_size,
            overlap=0.0,
            mode="constant",
            progress=progress,
            sw_device=sw_device,
            device=device,
        )
        self.amp = amp
        self.precision = check_precision(precision, INFERENCE_PRECISIONS)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 2:
            raise ValueError(f"expected a (B, 2, H, W, D) volume, got shape {tuple(inputs.shape)}")
        device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        use_amp = self.amp and device.type == "cuda"
        if device.type == "cpu" and current_policy() is None:
            apply_thread_policy()  # a library call: explicit settings (torch.set_num_threads, env) still win

        def batch(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            refresh_threads()  # follow the machine's load between batches of slices
            return network(x, *a, **k)

        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            with autocast(self.precision, device):
                out = super().__call__(inputs, batch, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out
