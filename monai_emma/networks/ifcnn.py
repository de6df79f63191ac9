"""IFCNN, a published learned fusion network, as a peer to compare EMMA with.

IFCNN (Zhang, Liu, Sun, Yan, Zhao and Zhang, "IFCNN: A general image fusion framework based on
convolutional neural network", Information Fusion 54, 2020) extracts features of each source
with a fixed 7x7 convolution (the first layer of an ImageNet ResNet-101, stride 1) and a 3x3
convolution block, fuses the feature maps element-wise (maximum, mean or sum), and reconstructs
the image with a second 3x3 block and a 1x1 convolution to three channels. Its authors recommend
the maximum ("IFCNN-MAX") for medical and infrared-visible images.

Written here from the paper and the facts of the authors' repository (``uzeful/IFCNN``: layer
sizes, replicate padding, parameter names, preprocessing); no file of that repository is part
of monai-emma. That repository publishes no licence, so its trained snapshot is never shipped:
give its path (``Code/snapshots/IFCNN-MAX.pth``) or set ``EMMA_IFCNN_WEIGHTS``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_emma.networks.released import check_sources, load_released

__all__ = ["IFCNN", "IFCNN_WEIGHTS_ENV", "load_ifcnn", "ifcnn_fuse_gray"]

IFCNN_WEIGHTS_ENV = "EMMA_IFCNN_WEIGHTS"
_SCHEMES = ("max", "mean", "sum")


class _ConvBNReLU(nn.Module):
    """Replicate-padded 3x3 convolution without bias, batch norm, ReLU (parameter names ``conv``
    and ``bn`` as in the released snapshots)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))))


class IFCNN(nn.Module):
    """IFCNN fusion network for any number of same-sized sources.

    Args:
        fuse_scheme: ``"max"`` (IFCNN-MAX), ``"mean"`` or ``"sum"``: how the feature maps of the
            sources are combined.

    Shapes:
        each source (B, 3, H, W) in [0, 1] (grey images repeated over the three channels);
        the result (B, 3, H, W), clamped to [0, 1] by :func:`ifcnn_fuse_gray`, not here.

    Example:
        >>> net = IFCNN().eval()
        >>> a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        >>> net(a, b).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(self, fuse_scheme: str = "max") -> None:
        super().__init__()
        if fuse_scheme not in _SCHEMES:
            raise ValueError(f"fuse_scheme must be one of {_SCHEMES}, got {fuse_scheme!r}")
        self.fuse_scheme = fuse_scheme
        self.conv1 = nn.Conv2d(3, 64, 7, bias=False)  # ResNet-101's first layer, stride 1, frozen
        self.conv2 = _ConvBNReLU(64)
        self.conv3 = _ConvBNReLU(64)
        self.conv4 = nn.Conv2d(64, 3, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, 64, H, W) of one source."""
        return self.conv2(self.conv1(F.pad(x, (3, 3, 3, 3), mode="replicate")))

    def forward(self, *sources: torch.Tensor) -> torch.Tensor:
        check_sources(sources, 3, "IFCNN")
        fused = self.features(sources[0])
        for s in sources[1:]:
            f = self.features(s)
            fused = torch.maximum(fused, f) if self.fuse_scheme == "max" else fused + f
        if self.fuse_scheme == "mean":
            fused = fused / len(sources)
        return self.conv4(self.conv3(fused))


def load_ifcnn(path: str | os.PathLike | None = None, fuse_scheme: str = "max") -> IFCNN:
    """An IFCNN in eval mode with a released snapshot's weights.

    Args:
        path: the snapshot (``IFCNN-MAX.pth`` of ``uzeful/IFCNN``); default: the file named by the
            ``EMMA_IFCNN_WEIGHTS`` environment variable.
        fuse_scheme: the scheme the snapshot was trained with (``max`` for IFCNN-MAX).

    Raises:
        FileNotFoundError: no path given and no environment variable set, or the file is missing.
        ValueError: the file is not an IFCNN state dict (names the file and the mismatch).
    """
    net = IFCNN(fuse_scheme)
    load_released(net, path, IFCNN_WEIGHTS_ENV, "Code/snapshots/IFCNN-MAX.pth of github.com/uzeful/IFCNN")
    return net


def ifcnn_fuse_gray(net: IFCNN, a_gray: np.ndarray, b_gray: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Fuse two 8-bit grey images as IFCNN's authors fuse medical images.

    Each grey image is repeated over three channels and scaled to [0, 1] (no mean or std
    normalisation for grey inputs); the result is clamped to [0, 1], scaled to 0-255, truncated to
    uint8 and converted to grey with OpenCV's RGB-to-grey, as their release does.

    Args:
        net: an :class:`IFCNN` (see :func:`load_ifcnn`).
        a_gray, b_gray: (H, W) arrays on a 0-255 scale.

    Returns:
        (H, W) uint8.
    """
    import cv2

    if a_gray.shape != b_gray.shape or a_gray.ndim != 2:
        raise ValueError(f"IFCNN fuses two same-sized grey images, got {a_gray.shape} and {b_gray.shape}")
    net = net.to(device)
    x = [
        torch.from_numpy(np.asarray(g, dtype=np.float32) / 255.0)[None, None].expand(1, 3, *g.shape).to(device)
        for g in (a_gray, b_gray)
    ]
    with torch.inference_mode():
        out = net(*x)[0].clamp(0, 1).mul(255).to("cpu")
    rgb = np.ascontiguousarray(out.numpy().astype(np.uint8).transpose(1, 2, 0))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
