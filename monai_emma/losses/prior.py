"""An optional fidelity prior for the fused image: the brighter source's intensity, the stronger
source's edges and, optionally, each source's local structure (SSIM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_emma.losses.fusion import sobel_gradients

__all__ = ["MaxFidelityPrior", "ssim_map", "window_variance"]


def window_variance(x: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Variance of (B, C, H, W) ``x`` in every ``window`` x ``window`` window (population variance,
    valid positions as :func:`ssim_map`): (B, C, H - window + 1, W - window + 1)."""
    return F.avg_pool2d(x * x, window, stride=1) - F.avg_pool2d(x, window, stride=1) ** 2


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 7) -> torch.Tensor:
    """Differentiable SSIM map of two (B, C, H, W) images: ``window``-pixel uniform windows, K1 0.01,
    K2 0.03 and the sample covariance (scikit-image's defaults, as the SSIM metric of
    :mod:`monai_emma.metrics`), valid positions only: (B, C, H - window + 1, W - window + 1)."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"a {x.shape[-2]}x{x.shape[-1]} image is too small for a {window}x{window} SSIM window")
    n = window * window
    moments = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, stride=1)
    ux, uy, uxx, uyy, uxy = moments.chunk(5, dim=1)
    cov_norm = n / (n - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


class MaxFidelityPrior(_Loss):
    """``L1(f, max(a, b)) + gradient_weight * L1(|∇f|, max(|∇a|, |∇b|))
    [+ ssim_weight * (2 - SSIM(f, a) - SSIM(f, b))]``.

    Not part of EMMA's objective. It anchors the fused image to the per-pixel brighter source and
    to the per-pixel stronger edge (normalised Sobel magnitudes, per direction), the targets many
    unsupervised fusion methods regress directly; the optional structure term asks the fused image
    to keep each source's local structure (the quantity the fusion SSIM metric sums).
    :class:`~monai_emma.losses.EMMALoss` adds the prior with ``prior_weight`` (0, the default,
    leaves EMMA's loss unchanged).

    Args:
        gradient_weight: weight of the gradient term.
        ssim_weight: weight of the structure term (0, the default: no SSIM term).
        ssim_data_range: the intensity range SSIM's stabilising constants assume (1 for images in
            [0, 1]).
        ssim_min_std: windows in which either source's standard deviation is below this are left
            out of the structure term (0: every window). A flat window carries no structure to
            keep, and SSIM against it rewards only an exactly flat fused window, which would trade
            the other source's texture away (``docs/results.md``, issue 32).

    Shapes:
        ``fused``, ``a``, ``b``: (B, 1, H, W). Returns a scalar.

    Example:
        >>> import torch
        >>> from monai_emma.losses import MaxFidelityPrior
        >>> a, b = torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
        >>> float(MaxFidelityPrior()(a, a, b))
        0.0
    """

    def __init__(
        self,
        gradient_weight: float = 1.0,
        ssim_weight: float = 0.0,
        ssim_data_range: float = 1.0,
        ssim_min_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.gradient_weight = gradient_weight
        self.ssim_weight = ssim_weight
        self.ssim_data_range = ssim_data_range
        self.ssim_min_std = ssim_min_std

    def structure(self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per sample ``2 - SSIM(f, a) - SSIM(f, b)`` (B,), averaged over the windows where both
        sources vary by at least ``ssim_min_std`` (counted as 0 elsewhere): 0 when ``f`` has the
        structure of both."""
        per_window = 1.0 - ssim_map(torch.cat([fused, fused]), torch.cat([a, b]), self.ssim_data_range)
        per_window = per_window.unflatten(0, (2, -1))  # (source, B, C, h, w)
        if self.ssim_min_std > 0:
            with torch.no_grad():
                varied = window_variance(torch.cat([a, b])) >= self.ssim_min_std**2
            per_window = per_window * varied.unflatten(0, (2, -1)).all(0)
        return per_window.sum(0).flatten(1).mean(1)

    def forward(
        self,
        fused: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        gradient_weights: torch.Tensor | None = None,
        ssim_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prior; ``gradient_weights`` and ``ssim_weights`` (B,), if given, replace
        ``gradient_weight`` and ``ssim_weight`` sample by sample (e.g. one weight per modality, see
        :class:`~monai_emma.losses.EMMALoss`)."""
        if not fused.shape == a.shape == b.shape:
            raise ValueError(f"shapes differ: fused {tuple(fused.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}.")
        for name, w in (("gradient_weights", gradient_weights), ("ssim_weights", ssim_weights)):
            if w is not None and w.shape != fused.shape[:1]:
                raise ValueError(f"{name} must be ({fused.shape[0]},), got {tuple(w.shape)}")
        loss = F.l1_loss(fused, torch.maximum(a, b))
        if gradient_weights is not None or self.gradient_weight:
            target = torch.maximum(sobel_gradients(a).abs(), sobel_gradients(b).abs())
            edge = (sobel_gradients(fused).abs() - target).abs()
            if gradient_weights is None:
                loss = loss + self.gradient_weight * edge.mean()
            else:
                loss = loss + (gradient_weights.to(edge) * edge.flatten(1).mean(1)).mean()
        if ssim_weights is not None or self.ssim_weight:
            structure = self.structure(fused, a, b)
            if ssim_weights is None:
                loss = loss + self.ssim_weight * structure.mean()
            else:
                loss = loss + (ssim_weights.to(structure) * structure).mean()
        return loss
