"""Foreground-aware random patches of paired slices."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandForegroundPatchd", "foreground_mask"]


def foreground_mask(image: np.ndarray | torch.Tensor, threshold: float = 0.05) -> np.ndarray:
    """Pixels where any channel exceeds ``threshold`` (on a [0, 1] scale); (C, H, W) -> (H, W)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return (arr > threshold).any(axis=0)


class RandForegroundPatchd(Randomizable, MapTransform):
    """Crop the same random ``patch_size`` window from every key, centred on foreground.

    EMMA's original sampler keeps any patch whose contrast passes a filter, and all-black patches
    pass it; brain slices are mostly background, so here the window centre is drawn uniformly
    among foreground pixels (any source above ``threshold``) with probability ``1 - background_prob``
    and uniformly over the image otherwise. Images smaller than the patch are reflect-padded.

    Args:
        keys: the images to crop (channel first, same spatial size).
        patch_size: (h, w).
        threshold: foreground threshold on a [0, 1] scale.
        background_prob: probability of an unconstrained window.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: Sequence[int],
        threshold: float = 0.05,
        background_prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.threshold = threshold
        self.background_prob = background_prob
        self.start: tuple[int, int] = (0, 0)

    def randomize(self, data: np.ndarray) -> None:
        """``data``: the (H, W) foreground mask."""
        h, w = data.shape
        ph, pw = self.patch_size
        ys, xs = np.nonzero(data)
        if len(ys) and self.R.rand() >= self.background_prob:
            i = self.R.randint(len(ys))
            cy, cx = ys[i], xs[i]
        else:
            cy, cx = self.R.randint(h), self.R.randint(w)
        y0 = int(np.clip(cy - ph // 2, 0, max(h - ph, 0)))
        x0 = int(np.clip(cx - pw // 2, 0, max(w - pw, 0)))
        self.start = (y0, x0)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        ph, pw = self.patch_size
        images = {
            k: _pad_to(torch.as_tensor(np.asarray(d[k]) if not isinstance(d[k], torch.Tensor) else d[k]), ph, pw)
            for k in keys
        }
        mask = np.zeros(images[keys[0]].shape[-2:], bool)
        for img in images.values():
            mask |= foreground_mask(img, self.threshold)
        self.randomize(mask)
        y0, x0 = self.start
        for k in keys:
            d[k] = images[k][..., y0 : y0 + ph, x0 : x0 + pw]
        return d


def _pad_to(img: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h >= ph and w >= pw:
        return img
    dh, dw = max(ph - h, 0), max(pw - w, 0)
    pads = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    mode = "reflect" if dh < h and dw < w else "replicate"
    return torch.nn.functional.pad(img[None].float(), pads, mode=mode)[0]
