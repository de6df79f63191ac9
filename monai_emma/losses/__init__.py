"""Losses of EMMA: the fusion loss (intensity + Sobel gradient L1) and the stage-2 objective."""

from monai_emma.losses.emma import EMMALoss
from monai_emma.losses.fusion import FusionLoss, sobel_gradients

__all__ = ["FusionLoss", "EMMALoss", "sobel_gradients"]
