"""Classical fusion rules: the baselines, and the stage-1 inputs that train the pseudo-sensors.

Every rule takes a (B, 2, H, W) tensor in [0, 1] (channel 0 anatomical, channel 1 the other
modality) and returns (B, 1, H, W) in [0, 1]. They are batched, run on any device, and need no
training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "mean_fusion",
    "max_fusion",
    "laplacian_fusion",
    "wavelet_fusion",
    "FUSION_RULES",
    "get_rule",
    "mix_rules",
]

_GAUSS_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"fusion rules take a (B, 2, H, W) tensor, got shape {tuple(x.shape)}")


def mean_fusion(x: torch.Tensor) -> torch.Tensor:
    """Pixel-wise average of the two sources."""
    _check(x)
    return x.mean(dim=1, keepdim=True)


def max_fusion(x: torch.Tensor) -> torch.Tensor:
    """Pixel-wise maximum of the two sources."""
    _check(x)
    return x.amax(dim=1, keepdim=True)


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial blur (OpenCV's pyramid kernel) with reflect-101 borders."""
    k = (_GAUSS_1D.to(x) * gain**0.5).reshape(1, 1, 1, 5)
    c = x.shape[1]
    y = F.pad(x, (2, 2, 0, 0), mode="reflect" if x.shape[-1] > 2 else "replicate")
    y = F.conv2d(y, k.expand(c, 1, 1, 5), groups=c)
    y = F.pad(y, (0, 0, 2, 2), mode="reflect" if x.shape[-2] > 2 else "replicate")
    return F.conv2d(y, k.reshape(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """OpenCV-style ``pyrDown``: blur, keep even rows and columns ((H+1)//2, (W+1)//2)."""
    return _blur(x)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV-style ``pyrUp`` to ``size``: zero-insertion upsampling, then the blur times 4."""
    b, c, h, w = x.shape
    up = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x
    return _blur(up, gain=4.0)[..., : size[0], : size[1]]


def laplacian_fusion(x: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Laplacian-pyramid fusion: ``levels`` levels, max-absolute detail coefficients, averaged base."""
    _check(x)
    gauss = [x]
    for _ in range(levels - 1):
        if min(gauss[-1].shape[-2:]) < 4:
            break
        gauss.append(pyr_down(gauss[-1]))
    fused_details = []
    for fine, coarse in zip(gauss[:-1], gauss[1:]):
        lap = fine - pyr_up(coarse, fine.shape[-2:])
        pick = lap[:, 0:1].abs() >= lap[:, 1:2].abs()
        fused_details.append(torch.where(pick, lap[:, 0:1], lap[:, 1:2]))
    out = gauss[-1].mean(dim=1, keepdim=True)
    for detail in reversed(fused_details):
        out = pyr_up(out, detail.shape[-2:]) + detail
    return out.clamp(0, 1)


def wavelet_fusion(x: torch.Tensor, wavelet: str = "db2", levels: int = 3) -> torch.Tensor:
    """Discrete wavelet fusion (PyWavelets): averaged approximation, max-absolute details."""
    import numpy as np
    import pywt

    _check(x)
    arr = x.detach().cpu().double().numpy()
    out = np.empty((arr.shape[0], 1, *arr.shape[-2:]))
    for i, (a, b) in enumerate(arr):
        ca = pywt.wavedec2(a, wavelet, level=levels, mode="symmetric")
        cb = pywt.wavedec2(b, wavelet, level=levels, mode="symmetric")
        fused = [(ca[0] + cb[0]) / 2]
        for da, db in zip(ca[1:], cb[1:]):
            fused.append(tuple(np.where(np.abs(p) >= np.abs(q), p, q) for p, q in zip(da, db)))
        rec = pywt.waverec2(fused, wavelet, mode="symmetric")
        out[i, 0] = rec[: a.shape[0], : a.shape[1]]
    return torch.from_numpy(np.clip(out, 0, 1)).to(dtype=x.dtype, device=x.device)


FUSION_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": mean_fusion,
    "max": max_fusion,
    "laplacian": laplacian_fusion,
    "wavelet": wavelet_fusion,
}


def get_rule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rule registered under ``name`` (``mean``, ``max``, ``laplacian``, ``wavelet``)."""
    try:
        return FUSION_RULES[name]
    except KeyError:
        raise ValueError(f"unknown fusion rule {name!r}; choose from {sorted(FUSION_RULES)}") from None


def mix_rules(x: torch.Tensor, rules: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Fuse each sample of the batch with a rule drawn uniformly from ``rules``."""
    _check(x)
    if len(rules) == 1:
        return get_rule(rules[0])(x)
    choice = torch.randint(len(rules), (x.shape[0],), generator=generator)
    out = torch.empty(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
    for r, name in enumerate(rules):
        idx = (choice == r).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = get_rule(name)(x[idx])
    return out
