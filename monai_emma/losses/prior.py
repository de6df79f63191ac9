"""An optional fidelity prior for the fused image: the brighter source's intensity and the
stronger source's edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_emma.losses.fusion import sobel_gradients

__all__ = ["MaxFidelityPrior"]


class MaxFidelityPrior(_Loss):
    """``L1(f, max(a, b)) + gradient_weight * L1(|∇f|, max(|∇a|, |∇b|))``.

    Not part of EMMA's objective. It anchors the fused image to the per-pixel brighter source and
    to the per-pixel stronger edge (normalised Sobel magnitudes, per direction), the targets many
    unsupervised fusion methods regress directly. :class:`~monai_emma.losses.EMMALoss` adds it with
    ``prior_weight`` (0, the default, leaves EMMA's loss unchanged).

    Args:
        gradient_weight: weight of the gradient term.

    Shapes:
        ``fused``, ``a``, ``b``: (B, 1, H, W). Returns a scalar.

    Example:
        >>> import torch
        >>> from monai_emma.losses import MaxFidelityPrior
        >>> a, b = torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
        >>> float(MaxFidelityPrior()(a, a, b))
        0.0
    """

    def __init__(self, gradient_weight: float = 1.0) -> None:
        super().__init__()
        self.gradient_weight = gradient_weight

    def forward(
        self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gradient_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prior; ``gradient_weights`` (B,), if given, replaces ``gradient_weight`` sample by
        sample (e.g. one edge weight per modality, see :class:`~monai_emma.losses.EMMALoss`)."""
        if not fused.shape == a.shape == b.shape:
            raise ValueError(f"shapes differ: fused {tuple(fused.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}.")
        if gradient_weights is not None and gradient_weights.shape != fused.shape[:1]:
            raise ValueError(f"gradient_weights must be ({fused.shape[0]},), got {tuple(gradient_weights.shape)}")
        loss = F.l1_loss(fused, torch.maximum(a, b))
        if gradient_weights is None and not self.gradient_weight:
            return loss
        target = torch.maximum(sobel_gradients(a).abs(), sobel_gradients(b).abs())
        edge = (sobel_gradients(fused).abs() - target).abs()
        if gradient_weights is None:
            return loss + self.gradient_weight * edge.mean()
        return loss + (gradient_weights.to(edge) * edge.flatten(1).mean(1)).mean()
