"""The stage-2 objective of EMMA: sensing plus α times equivariance (plus an optional prior)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn.modules.loss import _Loss

from monai_emma.losses.fusion import FusionLoss
from monai_emma.losses.prior import MaxFidelityPrior

__all__ = ["EMMALoss"]


def _lower(weights: Mapping[str, float] | None) -> dict[str, float]:
    return {k.lower(): float(v) for k, v in (weights or {}).items()}


def _per_sample(
    by_modality: Mapping[str, float], default: float, modalities: Sequence[str] | None, like: torch.Tensor
) -> torch.Tensor | None:
    """One weight per sample from its second modality, or None (the prior's own weight for all)."""
    if not by_modality or modalities is None:
        return None
    return torch.tensor([by_modality.get(m.lower(), default) for m in modalities], device=like.device)


class EMMALoss(_Loss):
    """``ℓ(A_a(f), a) + ℓ(A_b(f), b) + alpha * ℓ(f_t, F(A_a(f_t), A_b(f_t))) [+ beta * prior(f; a, b)]``.

    The networks run in the training step; this module only combines their outputs, so it works
    with any sensors and any transformation group. ``ℓ`` is :class:`FusionLoss`.

    Args:
        alpha: weight of the equivariance term (0.1 in the paper; 0 disables it).
        intensity_weight: ``ℓ``'s pixel term weight.
        gradient_weight: ``ℓ``'s gradient term weight.
        prior_weight: weight ``beta`` of :class:`~monai_emma.losses.MaxFidelityPrior`, a term that is
            not in the paper (0, the default, is EMMA's loss exactly).
        prior_gradient_weight: the prior's edge-term weight (its ``gradient_weight``).
        prior_gradient_weight_by_modality: optional edge-term weight per modality of the second
            source (``{"pet": 80, "spect": 80}``), sample by sample; other modalities keep
            ``prior_gradient_weight``. Not in the paper; used only with a prior and with the
            modalities passed to :meth:`components`.
        prior_ssim_weight: the prior's structure-term weight (its ``ssim_weight``; 0: no term).
        prior_ssim_weight_by_modality: optional structure-term weight per modality of the second
            source (``{"ct": 1}``), like ``prior_gradient_weight_by_modality``. Not in the paper.
        prior_ssim_data_range: the intensity range the structure term's SSIM constants assume (its
            ``ssim_data_range``); 2 / 255 matches the fusion SSIM metric's constants on 8-bit images.
        prior_ssim_min_std: the structure term skips windows where a source is flatter than this
            (its ``ssim_min_std``; 0: every window).

    Shapes:
        ``sensed_a``, ``a``, ``sensed_b``, ``b``: (B, 1, H, W); ``transformed`` and ``refused``:
        (G * B, 1, H, W) for a group of G elements (identity included); ``fused`` (B, 1, H, W), needed
        only with a prior.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        intensity_weight: float = 1.0,
        gradient_weight: float = 1.0,
        prior_weight: float = 0.0,
        prior_gradient_weight: float = 1.0,
        prior_gradient_weight_by_modality: Mapping[str, float] | None = None,
        prior_ssim_weight: float = 0.0,
        prior_ssim_weight_by_modality: Mapping[str, float] | None = None,
        prior_ssim_data_range: float = 1.0,
        prior_ssim_min_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.prior_weight = prior_weight
        self.fusion_loss = FusionLoss(intensity_weight, gradient_weight)
        self.prior = MaxFidelityPrior(
            prior_gradient_weight, prior_ssim_weight, prior_ssim_data_range, prior_ssim_min_std
        )
        self.prior_gradient_weight_by_modality = _lower(prior_gradient_weight_by_modality)
        self.prior_ssim_weight_by_modality = _lower(prior_ssim_weight_by_modality)

    def components(
        self,
        sensed_a: torch.Tensor,
        a: torch.Tensor,
        sensed_b: torch.Tensor,
        b: torch.Tensor,
        transformed: torch.Tensor | None = None,
        refused: torch.Tensor | None = None,
        fused: torch.Tensor | None = None,
        modalities_b: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The terms and their weighted total, as a dict (``sense_a``, ``sense_b``,
        ``equivariance``, ``total``, and ``prior`` when ``prior_weight`` is set). ``modalities_b``
        names each sample's second modality (for the ``..._by_modality`` weights)."""
        out = {"sense_a": self.fusion_loss(sensed_a, a), "sense_b": self.fusion_loss(sensed_b, b)}
        if self.alpha and transformed is not None and refused is not None:
            out["equivariance"] = self.fusion_loss(refused, transformed)
        else:
            out["equivariance"] = torch.zeros((), device=a.device, dtype=a.dtype)
        out["total"] = out["sense_a"] + out["sense_b"] + self.alpha * out["equivariance"]
        if self.prior_weight:
            if fused is None:
                raise ValueError("EMMALoss with a prior needs the fused image.")
            edge = _per_sample(self.prior_gradient_weight_by_modality, self.prior.gradient_weight, modalities_b, fused)
            structure = _per_sample(self.prior_ssim_weight_by_modality, self.prior.ssim_weight, modalities_b, fused)
            out["prior"] = self.prior(fused, a, b, edge, structure)
            out["total"] = out["total"] + self.prior_weight * out["prior"]
        return out

    def forward(
        self,
        sensed_a: torch.Tensor,
        a: torch.Tensor,
        sensed_b: torch.Tensor,
        b: torch.Tensor,
        transformed: torch.Tensor | None = None,
        refused: torch.Tensor | None = None,
        fused: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.components(sensed_a, a, sensed_b, b, transformed, refused, fused)["total"]
