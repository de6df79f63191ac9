"""Colour handling: RGB <-> YCbCr (BT.601 full range, OpenCV's matrix) for fusing on luminance, and
colour renderings of fused PET/SPECT."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "RGBToYCbCr",
    "RGBToYCbCrd",
    "is_colour",
    "colourise",
    "overlay",
    "COLORMAPS",
]

# OpenCV COLOR_RGB2YCrCb for float images: Y = .299 R + .587 G + .114 B,
# Cr = (R - Y) * .713 + delta, Cb = (B - Y) * .564 + delta, delta = 0.5 on a [0, 1] scale.
_KR, _KG, _KB = 0.299, 0.587, 0.114
_CR, _CB = 0.713, 0.564
_DELTA = 0.5


def rgb_to_ycbcr(rgb: torch.Tensor | np.ndarray, channel_dim: int = 0):
    """(…, 3, …) RGB in [0, 1] -> Y, Cb, Cr stacked the same way (Cb, Cr centred on 0.5)."""
    lib = torch if isinstance(rgb, torch.Tensor) else np
    r, g, b = (rgb.select(channel_dim, i) if lib is torch else np.take(rgb, i, axis=channel_dim) for i in range(3))
    y = _KR * r + _KG * g + _KB * b
    cb = (b - y) * _CB + _DELTA
    cr = (r - y) * _CR + _DELTA
    return lib.stack([y, cb, cr], channel_dim) if lib is torch else np.stack([y, cb, cr], axis=channel_dim)


def ycbcr_to_rgb(ycc: torch.Tensor | np.ndarray, channel_dim: int = 0, clip: bool = True):
    """Inverse of :func:`rgb_to_ycbcr` (OpenCV's YCrCb2RGB coefficients), clipped to [0, 1]."""
    is_torch = isinstance(ycc, torch.Tensor)
    take = (lambda i: ycc.select(channel_dim, i)) if is_torch else (lambda i: np.take(ycc, i, axis=channel_dim))
    y, cb, cr = take(0), take(1) - _DELTA, take(2) - _DELTA
    r = y + 1.403 * cr
    g = y - 0.714 * cr - 0.344 * cb
    b = y + 1.773 * cb
    out = torch.stack([r, g, b], channel_dim) if is_torch else np.stack([r, g, b], axis=channel_dim)
    if clip:
        out = out.clamp(0, 1) if is_torch else np.clip(out, 0, 1)
    return out


def is_colour(image: torch.Tensor | np.ndarray, channel_dim: int = 0, tol: float = 1.0 / 255) -> bool:
    """True when a 3-channel image really holds colour (its channels differ anywhere by > tol).

    The Harvard atlas stores grey MRI and CT as 3-channel files: colour comes from the pixels,
    not from the channel count.
    """
    if image.shape[channel_dim] != 3:
        return False
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = np.moveaxis(arr, channel_dim, 0).astype(np.float32)
    scale = 255.0 if arr.max() > 1.5 else 1.0
    return bool(np.abs(arr[0] - arr[1]).max() > tol * scale or np.abs(arr[0] - arr[2]).max() > tol * scale)


class RGBToYCbCr(Transform):
    """Channel-first image -> (Y, Cb, Cr); a 1-channel image passes as Y with neutral chroma."""

    def __call__(self, img):
        if img.shape[0] == 1:
            neutral = torch.full_like(img, _DELTA) if isinstance(img, torch.Tensor) else np.full_like(img, _DELTA)
            lib_cat = torch.cat if isinstance(img, torch.Tensor) else np.concatenate
            return lib_cat([img, neutral, neutral], 0)
        if img.shape[0] != 3:
            raise ValueError(f"expected 1 or 3 channels, got {img.shape[0]}")
        return rgb_to_ycbcr(img, 0)


class RGBToYCbCrd(MapTransform):
    """Dictionary version: replaces ``key`` by its Y channel and stores Cb/Cr under
    ``f"{key}_cbcr"`` plus a ``f"{key}_is_colour"`` flag."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RGBToYCbCr()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            d[f"{key}_is_colour"] = is_colour(img)
            ycc = self.converter(img)
            d[key] = ycc[0:1]
            d[f"{key}_cbcr"] = ycc[1:3]
        return d


#: Colour maps for rendering scalar PET/SPECT (OpenCV's tables).
COLORMAPS = ("hot", "jet", "inferno", "magma", "plasma", "viridis", "rainbow", "turbo")


def colourise(fused: np.ndarray, functional: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour rendering of a fusion: colour-map the functional image, then replace its luminance
    with the fused image (the way pseudo-colour PET/SPECT slices are recombined).

    Args:
        fused: fused image(s) in [0, 1], any shape.
        functional: the PET/SPECT image(s) scaled to [0, 1], same shape.
        colormap: one of :data:`COLORMAPS`. Colour fades in over the lowest tenth of the
            functional range, so no uptake (and outside its field of view) stays grey: the fused
            value without colour.

    Returns:
        uint8 RGB, shape ``fused.shape + (3,)``.

    Example:
        >>> colourise(np.full((2, 2), 0.5), np.zeros((2, 2)))[0, 0]  # no uptake: grey
        array([128, 128, 128], dtype=uint8)
    """
    import cv2

    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    fused, functional = np.asarray(fused, np.float64), np.asarray(functional, np.float64)
    if fused.shape != functional.shape:
        raise ValueError(f"fused and functional shapes differ: {fused.shape} vs {functional.shape}")
    table = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    index = np.clip(np.round(functional * 255), 0, 255).astype(np.uint8).reshape(-1, 1)
    bgr = cv2.applyColorMap(index, table).reshape(*fused.shape, 3)
    ycc = rgb_to_ycbcr(bgr[..., ::-1].astype(np.float64) / 255.0, -1)
    ycc[..., 0] = np.clip(fused, 0, 1)
    # chroma fades in over the lowest tenth of the uptake range: no uptake stays grey
    ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * np.clip(functional / 0.1, 0, 1)[..., None]
    rgb = ycbcr_to_rgb(ycc, -1)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def overlay(
    fused: np.ndarray,
    functional: np.ndarray,
    colormap: str = "hot",
    threshold: float = 0.3,
    opacity: float = 0.5,
) -> np.ndarray:
    """Viewer-style rendering (PACS, 3D Slicer): the fused image in grey, and above it the
    functional image in a colour map, semi-transparent, only where it reaches ``threshold``.

    Args:
        fused: fused image(s) in [0, 1], any shape.
        functional: the PET/SPECT image(s) scaled to [0, 1], same shape.
        colormap: one of :data:`COLORMAPS`; its upper three quarters span ``threshold`` to 1.
        threshold: functional values (on the [0, 1] scale) below it show no colour.
        opacity: weight of the colour where shown (0: grey only, 1: colour only).

    Returns:
        uint8 RGB, shape ``fused.shape + (3,)``.

    Example:
        >>> out = overlay(np.full((1, 2), 0.5), np.array([[0.1, 0.9]]))
        >>> out[0, 0].tolist(), bool((out[0, 1] != out[0, 0]).any())  # below the threshold: grey
        ([128, 128, 128], True)
    """
    import cv2

    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    fused, functional = np.clip(np.asarray(fused, np.float64), 0, 1), np.asarray(functional, np.float64)
    if fused.shape != functional.shape:
        raise ValueError(f"fused and functional shapes differ: {fused.shape} vs {functional.shape}")
    span = max(1.0 - threshold, 1e-6)
    level = np.clip((functional - threshold) / span, 0, 1)
    # the colour scale starts a quarter into the map, so the threshold itself shows colour (the
    # bottom of maps such as hot is black, which would only darken the grey)
    index = np.round(64 + level * 191).astype(np.uint8).reshape(-1, 1)
    rgb = cv2.applyColorMap(index, getattr(cv2, f"COLORMAP_{colormap.upper()}"))[..., ::-1].reshape(*fused.shape, 3)
    alpha = np.where(functional >= threshold, opacity, 0.0)[..., None]
    out = (1 - alpha) * fused[..., None] * 255.0 + alpha * rgb.astype(np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
