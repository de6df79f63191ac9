"""Empty pixels stay empty: the fused image is zero where every source is zero.

A fusion rule that keeps what each source shows has F(0, 0) = 0 wherever both sources are
black (air around the head, outside a field of view, below a CT window). The classical rules do
this by construction; a convolutional fuser does not: its receptive field carries light from
nearby structures into the empty background (a halo that reaches full brightness next to the
skull on CT). This post-processing zeroes those pixels. It changes nothing where any source has
signal.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["EMPTY_TOLERANCE", "zero_where_empty", "ZeroWhereEmptyd"]

#: sources at or below this value (on a [0, 1] scale: half an 8-bit grey level) count as empty
EMPTY_TOLERANCE = 0.5 / 255.0


def zero_where_empty(fused, sources, tolerance: float = EMPTY_TOLERANCE, channel_dim: int = 1):
    """``fused`` with zeros where every channel of ``sources`` is at most ``tolerance``.

    Args:
        fused: the fused image(s), e.g. (N, 1, H, W) or (N, 1, H, W, D); torch or numpy.
        sources: the inputs with their channels on ``channel_dim``, e.g. (N, 2, H, W).
        tolerance: the largest value that counts as empty (default: half an 8-bit grey level).
        channel_dim: the channel axis of ``sources`` (and of ``fused``).

    Returns:
        the same type and shape as ``fused`` (a new array; the input is not modified).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0.0, 0.5]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): the first pixel is empty
        >>> zero_where_empty(torch.full((1, 1, 1, 2), 0.3), x).flatten().tolist()
        [0.0, 0.30000001192092896]
    """
    if isinstance(fused, torch.Tensor):
        src = torch.as_tensor(sources, device=fused.device)
        empty = (src.abs() <= tolerance).all(dim=channel_dim, keepdim=True)
        return fused.masked_fill(empty, 0.0)
    src = np.asarray(sources)
    empty = (np.abs(src) <= tolerance).all(axis=channel_dim, keepdims=True)
    return np.where(empty, np.zeros((), dtype=np.asarray(fused).dtype), fused)


class ZeroWhereEmptyd(MapTransform):
    """Dictionary version of :func:`zero_where_empty` for channel-first samples.

    Args:
        keys: the fused image(s), (1, spatial...).
        source_key: the sources, (C, spatial...) (e.g. the 2-channel network input ``"image"``).
        tolerance: see :func:`zero_where_empty`.
        enabled: ``False`` passes the data through (``--no-zero-empty``; bundle ``zero_empty``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        tolerance: float = EMPTY_TOLERANCE,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.tolerance = tolerance
        self.enabled = enabled

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            d[key] = zero_where_empty(d[key], d[self.source_key], self.tolerance, channel_dim=0)
        return d
