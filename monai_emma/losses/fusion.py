"""The fusion loss ℓ(x, y) = L1(x, y) + L1(∇x, ∇y) with normalised Sobel gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["FusionLoss", "sobel_gradients"]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel_gradients(x: torch.Tensor) -> torch.Tensor:
    """Normalised Sobel derivatives in x and y (kernel divided by 8, replicate borders).

    Args:
        x: (B, C, H, W).

    Returns:
        (B, C, 2, H, W): the x derivative then the y derivative of every channel.
    """
    b, c, h, w = x.shape
    kx = _SOBEL_X.to(dtype=x.dtype, device=x.device)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    flat = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(flat, kernel).reshape(b, c, 2, h, w)


class FusionLoss(_Loss):
    """``intensity_weight * L1(input, target) + gradient_weight * L1(∇input, ∇target)``.

    The loss EMMA uses for sensing and for equivariance (the official code's ``loss_fusion``).
    Returns a scalar; exactly 0.0 for equal inputs.

    Args:
        intensity_weight: weight of the pixel L1 term.
        gradient_weight: weight of the Sobel-gradient L1 term.

    Example:
        >>> import torch
        >>> from monai_emma.losses import FusionLoss
        >>> x = torch.rand(2, 1, 32, 32)
        >>> float(FusionLoss()(x, x))
        0.0
    """

    def __init__(self, intensity_weight: float = 1.0, gradient_weight: float = 1.0) -> None:
        super().__init__()
        self.intensity_weight = intensity_weight
        self.gradient_weight = gradient_weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - MONAI naming
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ in shape.")
        loss = self.intensity_weight * F.l1_loss(input, target)
        if self.gradient_weight:
            loss = loss + self.gradient_weight * F.l1_loss(sobel_gradients(input), sobel_gradients(target))
        return loss
