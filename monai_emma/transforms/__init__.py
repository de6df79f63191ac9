"""Transforms: the equivariance group, colour (YCbCr), per-modality intensity, foreground-aware
patches, and the fused image's post-processing (empty background, value range)."""

from monai_emma.transforms.colour import RGBToYCbCr, RGBToYCbCrd, is_colour, rgb_to_ycbcr, ycbcr_to_rgb
from monai_emma.transforms.empty import EMPTY_TOLERANCE, ZeroWhereEmptyd, zero_where_empty
from monai_emma.transforms.equivariance import RandCircularShift, Reflection, Rotation, TransformGroup, rotate
from monai_emma.transforms.intensity import (
    DEFAULT_INTENSITY,
    SCALED,
    IntensityRule,
    ModalityScale,
    ModalityScaled,
    ScaleToUnit,
    ScaleToUnitd,
)
from monai_emma.transforms.output_range import FusedRange, FusedRanged
from monai_emma.transforms.patches import RandForegroundPatchd, foreground_mask

__all__ = [
    "RGBToYCbCr",
    "RGBToYCbCrd",
    "is_colour",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "RandCircularShift",
    "Reflection",
    "Rotation",
    "TransformGroup",
    "rotate",
    "ScaleToUnit",
    "DEFAULT_INTENSITY",
    "IntensityRule",
    "ModalityScale",
    "ModalityScaled",
    "ScaleToUnitd",
    "RandForegroundPatchd",
    "foreground_mask",
    "EMPTY_TOLERANCE",
    "zero_where_empty",
    "ZeroWhereEmptyd",
    "FusedRange",
    "FusedRanged",
    "SCALED",
]
