"""The fused image's value range: clipped to [0, 1], or min-max stretched per slice (the EMMA
papers' test protocol)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["FusedRange", "FusedRanged"]


class FusedRange(Transform):
    """Clip a fused image to [0, 1], or stretch every slice (along the last axis) to [0, 1].

    Args:
        stretch: min-max stretch each slice instead of clipping (a constant slice becomes 0).

    Shape:
        (C, H, W, D) or (C, H, W); the statistics are per slice (per last-axis index for 4D input).

    Example:
        >>> import torch
        >>> FusedRange()(torch.tensor([[[-0.5, 0.5, 1.5]]])).tolist()
        [[[0.0, 0.5, 1.0]]]
        >>> FusedRange(stretch=True)(torch.tensor([[[1.0, 2.0, 3.0]]])).tolist()
        [[[0.0, 0.5, 1.0]]]
    """

    def __init__(self, stretch: bool = False) -> None:
        self.stretch = stretch

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = torch.as_tensor(img).float()
        if not self.stretch:
            return img.clamp(0.0, 1.0)
        dims = (0, 1, 2) if img.ndim == 4 else tuple(range(img.ndim))
        lo = img.amin(dim=dims, keepdim=True)
        hi = img.amax(dim=dims, keepdim=True)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        return torch.where(hi > lo, (img - lo) / span, torch.zeros_like(img))


class FusedRanged(MapTransform):
    """Dictionary version of :class:`FusedRange`."""

    def __init__(self, keys: KeysCollection, stretch: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = FusedRange(stretch)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d
