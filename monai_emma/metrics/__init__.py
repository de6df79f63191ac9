"""Fusion quality metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM) with the literature's conventions.

``fusion_metrics(fused, a, b)`` scores one pair (numpy or torch, 0-255 scale);
:func:`batch_fusion_metrics` scores batches on any device; :class:`FusionMetric` is a MONAI
``CumulativeIterationMetric`` for evaluators and validation handlers. See ``docs/metrics.md``.
"""

from monai_emma.metrics.functional import METRIC_NAMES, batch_fusion_metrics
from monai_emma.metrics.metric import FusionMetric
from monai_emma.metrics.pairwise import fusion_metrics, read_gray, warm_up

__all__ = ["METRIC_NAMES", "batch_fusion_metrics", "fusion_metrics", "read_gray", "FusionMetric", "warm_up"]
