"""Intensity scaling to [0, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["ScaleToUnit", "ScaleToUnitd"]


class ScaleToUnit(Transform):
    """Divide by a fixed maximum (255 for 8-bit images) and clip to [0, 1].

    Args:
        max_value: the value that maps to 1.
    """

    def __init__(self, max_value: float = 255.0) -> None:
        self.max_value = float(max_value)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return (img.float() / self.max_value).clamp_(0, 1)
        return np.clip(np.asarray(img, np.float32) / self.max_value, 0, 1)


class ScaleToUnitd(MapTransform):
    """Dictionary version of :class:`ScaleToUnit`."""

    def __init__(self, keys: KeysCollection, max_value: float = 255.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleToUnit(max_value)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
