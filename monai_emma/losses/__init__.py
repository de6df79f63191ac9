"""Losses of EMMA: the fusion loss (intensity + Sobel gradient L1), the stage-2 objective and an
optional max-fidelity prior."""

from monai_emma.losses.emma import EMMALoss
from monai_emma.losses.fusion import FusionLoss, sobel_gradients
from monai_emma.losses.prior import MaxFidelityPrior, ssim_map, window_variance

__all__ = ["FusionLoss", "EMMALoss", "MaxFidelityPrior", "sobel_gradients", "ssim_map", "window_variance"]
