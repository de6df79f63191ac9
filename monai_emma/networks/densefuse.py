"""DenseFuse, a published learned fusion network, as a second peer to compare EMMA with.

DenseFuse (Li and Wu, "DenseFuse: a fusion approach to infrared and visible images", IEEE
Transactions on Image Processing 28(5), 2019) is an auto-encoder: a 3x3 convolution and a dense
block of three 3x3 convolutions (16 channels each, every output concatenated, 64 channels) encode
each source; the codes are averaged (the "addition" strategy of its release); four 3x3
convolutions (64, 32, 16, 1 channels) decode the fused image. Every convolution is reflect-padded
and followed by a ReLU, the last one included, as released. It works on grey images on a 0-255
scale.

Written here from the paper and the facts of the authors' PyTorch repository
(``hli1221/densefuse-pytorch``: layer sizes, padding, parameter names, preprocessing); no file of
that repository is part of monai-emma, and its snapshot (``models/densefuse_gray.model``) is never
shipped (no licence is published): give its path or set ``EMMA_DENSEFUSE_WEIGHTS``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_emma.networks.released import check_sources, load_released

__all__ = ["DenseFuse", "DENSEFUSE_WEIGHTS_ENV", "load_densefuse", "densefuse_fuse_gray"]

DENSEFUSE_WEIGHTS_ENV = "EMMA_DENSEFUSE_WEIGHTS"


class _ReflectConv(nn.Module):
    """Reflect-padded 3x3 convolution with bias and ReLU (parameter name ``conv2d`` as released)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect")))


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.dense_conv = _ReflectConv(in_channels, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.dense_conv(x)], 1)


class _DenseBlock(nn.Module):
    def __init__(self, in_channels: int = 16, growth: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.denseblock = nn.Sequential(*(_DenseLayer(in_channels + i * growth, growth) for i in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denseblock(x)


class DenseFuse(nn.Module):
    """DenseFuse for two or more same-sized grey sources on a 0-255 scale.

    Shapes:
        each source (B, 1, H, W); the result (B, 1, H, W) (clamped to 0-255 by
        :func:`densefuse_fuse_gray`, not here).

    Example:
        >>> net = DenseFuse().eval()
        >>> net(torch.rand(1, 1, 24, 24) * 255, torch.rand(1, 1, 24, 24) * 255).shape
        torch.Size([1, 1, 24, 24])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _ReflectConv(1, 16)
        self.DB1 = _DenseBlock(16, 16, 3)
        self.conv2 = _ReflectConv(64, 64)
        self.conv3 = _ReflectConv(64, 32)
        self.conv4 = _ReflectConv(32, 16)
        self.conv5 = _ReflectConv(16, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-channel code of one source."""
        return self.DB1(self.conv1(x))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.conv5(self.conv4(self.conv3(self.conv2(code))))

    def forward(self, *sources: torch.Tensor) -> torch.Tensor:
        check_sources(sources, 1, "DenseFuse")
        code = self.encode(sources[0])
        for s in sources[1:]:
            code = code + self.encode(s)
        return self.decode(code / len(sources))


def load_densefuse(path: str | os.PathLike | None = None) -> DenseFuse:
    """A DenseFuse in eval mode with the released grey snapshot's weights.

    Args:
        path: ``models/densefuse_gray.model`` of ``hli1221/densefuse-pytorch``; default: the file
            named by ``EMMA_DENSEFUSE_WEIGHTS``.

    Raises:
        FileNotFoundError: no path given and no environment variable set, or the file is missing.
        ValueError: the file is not a DenseFuse state dict (names the file and the mismatch).
    """
    net = DenseFuse()
    load_released(
        net, path, DENSEFUSE_WEIGHTS_ENV, "models/densefuse_gray.model of github.com/hli1221/densefuse-pytorch"
    )
    return net


def densefuse_fuse_gray(net: DenseFuse, a_gray: np.ndarray, b_gray: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Fuse two 8-bit grey images as DenseFuse's authors do: inputs on a 0-255 scale, the output
    clamped to 0-255 and truncated to uint8. Returns (H, W) uint8."""
    if a_gray.shape != b_gray.shape or a_gray.ndim != 2:
        raise ValueError(f"DenseFuse fuses two same-sized grey images, got {a_gray.shape} and {b_gray.shape}")
    net = net.to(device)
    x = [torch.from_numpy(np.asarray(g, dtype=np.float32))[None, None].to(device) for g in (a_gray, b_gray)]
    with torch.inference_mode():
        out = net(*x)[0, 0].clamp(0, 255).to("cpu")
    return out.numpy().astype(np.uint8)
