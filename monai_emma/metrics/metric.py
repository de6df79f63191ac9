"""MONAI ``CumulativeIterationMetric`` wrapper for fusion metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction

from monai_emma.metrics.functional import METRIC_NAMES, batch_fusion_metrics

__all__ = ["FusionMetric"]


class FusionMetric(CumulativeIterationMetric):
    """Accumulates fusion metrics over iterations; ``aggregate()`` returns ``{name: mean}``.

    ``__call__(y_pred=fused, y=sources)`` with fused (B, 1, H, W) and sources (B, 2, H, W), both
    in [0, 1] (scaled to 0-255 here, as the literature scores 8-bit images; set
    ``scale=1`` for inputs already on 0-255). Optionally rounds to integers like a saved PNG.

    Args:
        metrics: names to compute (default: all nine).
        scale: multiply inputs by this first.
        round_to_uint8: round and clip to 0..255 as an 8-bit file would.
        ssim_data_range: see :func:`monai_emma.metrics.functional.ssim`.
    """

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        scale: float = 255.0,
        round_to_uint8: bool = True,
        ssim_data_range: float = 2.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__()
        self.metrics = tuple(metrics) if metrics is not None else METRIC_NAMES
        self.scale = scale
        self.round_to_uint8 = round_to_uint8
        self.ssim_data_range = ssim_data_range
        self.reduction = reduction

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(torch.float64) * self.scale
        return x.round().clamp(0, 255) if self.round_to_uint8 else x

    def per_item(self, y_pred: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metrics of every item, without accumulating: ``{name: (B,) float64 tensor}``.

        Args:
            y_pred: fused images (B, 1, H, W) in [0, 1].
            y: sources (B, 2, H, W) in [0, 1], channel 0 the anatomical image.
        """
        if y is None or y.ndim != 4 or y.shape[1] != 2:
            raise ValueError("FusionMetric needs the sources as y of shape (B, 2, H, W)")
        f, a, b = self._prep(y_pred), self._prep(y[:, 0:1]), self._prep(y[:, 1:2])
        values = batch_fusion_metrics(f, a, b, self.metrics, self.ssim_data_range)
        return {m: values[m] for m in self.metrics}

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        values = self.per_item(y_pred, y)
        return torch.stack([values[m] for m in self.metrics], dim=1)  # (B, n_metrics)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> dict[str, float]:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            return {}
        mean = data.mean(0)
        return {m: float(v) for m, v in zip(self.metrics, mean)}
