"""One-pair front end of the metrics, and the reference way of reading images."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from monai_emma.metrics.functional import batch_fusion_metrics
from monai_emma.threads import refresh_threads

__all__ = ["fusion_metrics", "read_gray", "warm_up"]


def warm_up() -> None:
    """Run every code path once on a 256x256 image so that the next calls pay no lazy
    initialisation (kernel selection, allocator growth). ``monai-emma evaluate`` calls it once
    before scoring; nothing runs at import."""
    g = torch.Generator().manual_seed(0)
    x = [torch.rand(1, 256, 256, generator=g, dtype=torch.float64) * 255 for _ in range(3)]
    batch_fusion_metrics(x[0].round(), x[1].round(), x[2].round())
    batch_fusion_metrics(*x)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image as the reference evaluator does: OpenCV BGR, ``COLOR_BGR2GRAY`` in float32
    (full-range BT.601 Y), rounded half to even. Returns float32 (H, W) on a 0-255 scale.

    OpenCV is used on purpose: its float32 conversion rounds a few pixels differently from any
    numpy formula (measured on the Harvard PET slices), and those pixels change MI and EN.

    Raises:
        FileNotFoundError: the file is missing or not an image OpenCV can read.
    """
    import cv2

    img = cv2.imread(os.fspath(path))
    if img is None:
        raise FileNotFoundError(f"{path}: missing or not a readable image")
    return np.round(cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2GRAY))


def fusion_metrics(
    fused: np.ndarray | torch.Tensor,
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    metrics: Sequence[str] | None = None,
    ssim_data_range: float = 2.0,
) -> dict[str, float]:
    """Score one fused image against its two sources.

    Args:
        fused: F, a 2D array (H, W) on a 0-255 scale (numpy float32/float64 or torch).
        a: source A (the anatomical image), same shape.
        b: source B, same shape.
        metrics: subset of ``EN SD SF AG MI SCD VIF Qabf SSIM`` (default: all, in that order).
        ssim_data_range: 2 reproduces the published numbers; 255 is the standard SSIM.

    Returns:
        ``{name: value}``; inputs are never modified.

    Example:
        >>> import numpy as np
        >>> from monai_emma.metrics import fusion_metrics
        >>> a = np.tile(np.arange(64.0), (64, 1)); b = a.T.copy()
        >>> round(fusion_metrics((a + b) / 2, a, b, ["SD"])["SD"], 3)
        18.473
    """
    arrays = []
    for name, x in (("fused", fused), ("a", a), ("b", b)):
        t = (
            x.detach().to("cpu", torch.float64)
            if isinstance(x, torch.Tensor)
            else torch.tensor(np.asarray(x), dtype=torch.float64)
        )
        if t.ndim != 2:
            raise ValueError(f"{name}: expected a 2D grey image, got shape {tuple(t.shape)}")
        arrays.append(t[None])
    refresh_threads()  # as many threads as CPUs are free now (monai_emma.threads; fixed when set explicitly)
    out = batch_fusion_metrics(*arrays, metrics=metrics, ssim_data_range=ssim_data_range)
    return {k: float(v[0]) for k, v in out.items()}
