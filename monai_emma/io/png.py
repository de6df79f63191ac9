"""8-bit PNG output and montages of sources and fused images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monai_emma.io.atomic import atomic_path

__all__ = ["to_uint8", "save_png", "save_montage"]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (H, W) or (H, W, 3) -> uint8, rounded half to even, clipped."""
    image = np.asarray(image, dtype=np.float64)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Save a grey (H, W) or colour (H, W, 3) image in [0, 1] (or uint8) as an 8-bit PNG, atomically."""
    data = image if np.asarray(image).dtype == np.uint8 else to_uint8(image)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")
    return Path(path)


def save_montage(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    gap: int = 4,
) -> Path:
    """Grid of images (rows of grey or RGB arrays in [0, 1]) with optional column titles, as PNG.

    Images in a row may differ in size; each cell is as large as the largest image.
    """
    cells = [[to_uint8(im) if im.dtype != np.uint8 else im for im in row] for row in rows]
    cells = [[np.repeat(c[..., None], 3, axis=2) if c.ndim == 2 else c for c in row] for row in cells]
    ch = max(c.shape[0] for row in cells for c in row)
    cw = max(c.shape[1] for row in cells for c in row)
    ncol = max(len(row) for row in cells)
    top = 16 if titles else 0
    canvas = np.zeros((top + len(cells) * (ch + gap), ncol * (cw + gap), 3), np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            y, x = top + r * (ch + gap), c * (cw + gap)
            canvas[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    img = Image.fromarray(canvas)
    if titles:
        draw = ImageDraw.Draw(img)
        for c, title in enumerate(titles):
            draw.text((c * (cw + gap) + 3, 2), str(title), fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
