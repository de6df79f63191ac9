"""Synthetic, co-registered multi-modality head phantoms for demos and tests (no downloads)."""

from __future__ import annotations

import numpy as np

__all__ = ["phantom_slice_pair"]


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Boolean mask of an ellipse; centre and radii are fractions of the image size."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    y = (yy - cy * h) / (ry * h)
    x = (xx - cx * w) / (rx * w)
    c, s = np.cos(angle), np.sin(angle)
    return ((x * c + y * s) ** 2 + (-x * s + y * c) ** 2) <= 1.0


def phantom_slice_pair(size: int = 128, modality: str = "ct", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One axial head slice as an MRI and a second modality, co-registered, float32 in [0, 1].

    The anatomy: scalp, skull, grey and white matter, ventricles and a lesion. MRI (T1-like)
    shows soft tissue; CT shows bone bright and soft tissue dim; PET/SPECT show smooth uptake in
    grey matter and a hot lesion. Deterministic for a seed (noise only).

    Args:
        size: height and width in pixels.
        modality: ``"ct"``, ``"pet"`` or ``"spect"``.
        seed: random seed of the noise.

    Returns:
        ``(mri, other)``, each of shape (size, size).
    """
    shape = (size, size)
    rng = np.random.default_rng(seed)
    head = _ellipse(shape, 0.5, 0.5, 0.44, 0.36)
    skull = head & ~_ellipse(shape, 0.5, 0.5, 0.40, 0.32)
    brain = _ellipse(shape, 0.5, 0.5, 0.38, 0.30)
    white = _ellipse(shape, 0.5, 0.5, 0.28, 0.21)
    vent = _ellipse(shape, 0.46, 0.44, 0.10, 0.035, 0.3) | _ellipse(shape, 0.46, 0.56, 0.10, 0.035, -0.3)
    lesion = _ellipse(shape, 0.62, 0.60, 0.05, 0.05)

    mri = np.zeros(shape, np.float32)
    mri[head] = 0.35  # scalp/fat
    mri[skull] = 0.08
    mri[brain] = 0.55  # grey matter
    mri[white] = 0.75
    mri[vent] = 0.15
    mri[lesion] = 0.95
    modality = modality.lower()
    other = np.zeros(shape, np.float32)
    if modality == "ct":
        other[head] = 0.25
        other[brain] = 0.32
        other[white] = 0.30
        other[vent] = 0.12
        other[lesion] = 0.40
        other[skull] = 0.95
    elif modality in ("pet", "spect"):
        other[brain] = 0.55
        other[white] = 0.25
        other[vent] = 0.05
        other[lesion] = 1.0
        k = 7 if modality == "pet" else 11
        kernel = np.hanning(k + 2)[1:-1]
        kernel /= kernel.sum()
        for axis in (0, 1):
            other = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, other)
    else:
        raise ValueError(f"unknown modality {modality!r}; choose ct, pet or spect")
    mri = mri + rng.normal(0, 0.02, shape).astype(np.float32) * head
    other = other + rng.normal(0, 0.02, shape).astype(np.float32) * head
    return np.clip(mri, 0, 1).astype(np.float32), np.clip(other, 0, 1).astype(np.float32)
