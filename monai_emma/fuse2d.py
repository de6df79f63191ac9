"""Fusing 2D slice pairs into the 8-bit images users look at (and the evaluation scores).

Colour is decided from the pixels: a pair whose second image holds colour (pseudo-colour PET or
SPECT) is fused on luminance Y and recombined with that image's Cb/Cr; otherwise, when the first
image holds colour (a visible-light photograph fused with infrared), the fused Y takes the
first image's Cb/Cr, the convention of infrared-visible fusion; otherwise the result is grey.
The network sees Y in [0, 1] (BT.601 full range, OpenCV's matrix).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from monai_emma.transforms.colour import is_colour, rgb_to_ycbcr, ycbcr_to_rgb

__all__ = ["luminance", "fuse_slice_pair", "to_8bit", "rule_fuser", "network_fuser"]


def luminance(img: np.ndarray) -> np.ndarray:
    """(C, H, W) image on a 0-255 scale -> Y in [0, 1], float32 (H, W)."""
    img = np.asarray(img, np.float32) / 255.0
    if img.shape[0] == 1:
        return img[0]
    return rgb_to_ycbcr(img[:3], 0)[0].astype(np.float32)


def fuse_slice_pair(
    fuse: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    stretch: bool = False,
) -> np.ndarray:
    """Fuse one pair of (C, H, W) 0-255 images into an 8-bit image.

    Args:
        fuse: maps (Y_a, Y_b) in [0, 1] to a fused Y in [0, 1] (see :func:`network_fuser`,
            :func:`rule_fuser`).
        a: anatomical image (grey or RGB).
        b: other modality (grey, RGB grey, or pseudo-colour RGB).
        stretch: min-max stretch the fused Y to [0, 1] first (the papers' test protocol).

    Returns:
        uint8 (H, W) for grey results or (H, W, 3) RGB when ``b`` or ``a`` is in colour.
    """
    fused = np.asarray(fuse(luminance(a), luminance(b)), np.float64)
    if stretch:
        lo, hi = fused.min(), fused.max()
        fused = (fused - lo) / (hi - lo) if hi > lo else np.zeros_like(fused)
    return to_8bit(fused, b, a)


def _in_colour(img: np.ndarray | None) -> bool:
    return img is not None and img.shape[0] >= 3 and is_colour(img)


def to_8bit(fused: np.ndarray, b: np.ndarray, a: np.ndarray | None = None) -> np.ndarray:
    """The 8-bit image of a fused luminance (H, W) in [0, 1] (clipped): recombined with the Cb/Cr
    of ``b`` (C, H, W, 0-255) when ``b`` is in colour (pseudo-colour PET/SPECT), else with those of
    ``a`` when ``a`` is in colour (a visible photograph fused with infrared), else grey."""
    fused = np.clip(np.asarray(fused, np.float64), 0.0, 1.0)
    chroma = b if _in_colour(b) else a if _in_colour(a) else None
    if chroma is not None:
        ycc = rgb_to_ycbcr(np.asarray(chroma[:3], np.float64) / 255.0, 0)
        ycc[0] = fused
        rgb = ycbcr_to_rgb(ycc, 0)
        return np.clip(np.round(np.moveaxis(rgb, 0, -1) * 255), 0, 255).astype(np.uint8)
    return np.clip(np.round(fused * 255), 0, 255).astype(np.uint8)


def network_fuser(
    net: torch.nn.Module, device: str | torch.device = "cpu", zero_empty: bool = True, precision: str = "fp32"
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a U-Fuser as a ``fuse(Y_a, Y_b)`` callable (eval mode, inference mode, fast path).

    With ``zero_empty`` the result is 0 wherever both sources are
    (:func:`~monai_emma.transforms.zero_where_empty`); ``precision`` is ``"fp32"``, ``"bf16"`` or
    ``"auto"`` (:mod:`monai_emma.precision`)."""
    from monai_emma.precision import autocast, resolve_precision
    from monai_emma.transforms.empty import zero_where_empty

    precision = resolve_precision(precision, device)
    net = net.to(device).eval()

    def fuse(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([ya, yb]).astype(np.float32))[None].to(device)
        with torch.inference_mode():
            with autocast(precision, x.device):
                out = net(x)
            if zero_empty:
                out = zero_where_empty(out, x)
            return out[0, 0].float().cpu().numpy()

    return fuse


def rule_fuser(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a classical rule of :mod:`monai_emma.baselines` as a ``fuse(Y_a, Y_b)`` callable (float64)."""
    from monai_emma.baselines import get_rule

    rule = get_rule(name)

    def fuse(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([ya, yb]).astype(np.float64))[None]
        return rule(x)[0, 0].numpy()

    return fuse
