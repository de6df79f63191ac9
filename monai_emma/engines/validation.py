"""Per-epoch validation of both stages as MONAI evaluators, run by MONAI's ``ValidationHandler``.

Stage 1 scores the pseudo-sensors (MSE of sensing the mean-rule fusion of each full validation
slice, ``val_loss``). In distributed runs every rank scores its share of the slices and the
metrics are reduced over ranks. Stage 2 scores the U-Fuser: the sensing part of the EMMA loss (``val_loss``,
the key metric, lower is better) and :class:`~monai_emma.metrics.FusionMetric` (MI, VIF, Qabf,
SSIM) of the 8-bit fused image, with empty background kept empty as in deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.handlers import IgniteMetricHandler
from monai.networks.utils import eval_mode

from monai_emma.data.pairs import SlicePair, load_pair
from monai_emma.losses import EMMALoss
from monai_emma.metrics import FusionMetric
from monai_emma.networks.sensor_bank import SensorBank
from monai_emma.transforms.empty import zero_where_empty

__all__ = ["VALIDATION_METRICS", "validation_slices", "sensor_validator", "fuser_validator"]

#: fusion metrics reported by stage-2 validation (``val_<name>``; see :mod:`monai_emma.metrics`)
VALIDATION_METRICS = ("MI", "VIF", "Qabf", "SSIM")


def validation_slices(pairs: Sequence[SlicePair], multiple: int = 16, max_size: int = 256) -> list[dict]:
    """Centre crops (sides a multiple of ``multiple``, at most ``max_size``) of the validation pairs:
    dicts with ``a``, ``b`` (1, h, w) in [0, 1], the modalities and the pair id."""
    out = []
    for p in pairs:
        item = load_pair(p)
        h, w = item["a"].shape[-2:]
        ch, cw = min(h - h % multiple, max_size), min(w - w % multiple, max_size)
        if ch < multiple or cw < multiple:
            continue
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = {k: item[k][..., y0 : y0 + ch, x0 : x0 + cw] for k in ("a", "b")}
        crop.update(a_modality=item["a_modality"], b_modality=item["b_modality"], id=item["id"])
        out.append(crop)
    return out


def _mean_of(key: str):
    """An ignite metric: the mean over batches of ``output[key]`` (a scalar tensor)."""
    from ignite.metrics import Average

    return Average(output_transform=lambda output: output[key])


def _evaluator(
    slices: list[dict],
    device: torch.device,
    network: Callable[[], torch.nn.Module],
    score: Callable[[torch.nn.Module, dict], dict[str, Any]],
    additional_metrics: dict | None = None,
) -> Evaluator:
    sampler = None
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from monai.data import DistributedSampler

        # every rank scores its share; the metrics gather over ranks (MONAI/ignite do the reduction)
        sampler = DistributedSampler(slices, shuffle=False, even_divisible=False)
    loader = torch.utils.data.DataLoader(slices, batch_size=1, shuffle=False, sampler=sampler)

    def iteration(engine: Any, batch: dict) -> dict:
        net = network()
        with eval_mode(net), torch.no_grad():
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            return score(net, batch)

    return Evaluator(
        device=device,
        val_data_loader=loader,
        iteration_update=iteration,
        key_val_metric={"val_loss": _mean_of("loss")},
        additional_metrics=additional_metrics,
        metric_cmp_fn=lambda current, best: current < best,  # a loss: lower is better
        decollate=False,
    )


def sensor_validator(slices: list[dict], device: torch.device, bank: Callable[[], torch.nn.Module]) -> Evaluator:
    """Stage-1 evaluator: sensing MSE from the mean-rule fusion of each full slice.

    Args:
        slices: :func:`validation_slices`.
        device: where to run.
        bank: returns the (unwrapped) sensor bank being trained.
    """
    import torch.nn.functional as F

    def score(net: torch.nn.Module, batch: dict) -> dict:
        a, b = batch["a"], batch["b"]
        fused = (a + b) / 2
        n = a.shape[0]
        sensed = net(torch.cat([fused, fused]), [*batch["a_modality"], *batch["b_modality"]])
        return {"loss": F.mse_loss(sensed[:n], a) + F.mse_loss(sensed[n:], b)}

    return _evaluator(slices, device, bank, score)


def fuser_validator(
    slices: list[dict], sensors: SensorBank, device: torch.device, fuser: Callable[[], torch.nn.Module]
) -> Evaluator:
    """Stage-2 evaluator: the sensing loss (``val_loss``) and fusion metrics (``MI``, ``VIF``,
    ``Qabf``, ``SSIM`` in ``state.metrics``) of each full slice.

    Args:
        slices: :func:`validation_slices`.
        sensors: the frozen sensor bank.
        device: where to run.
        fuser: returns the (unwrapped) U-Fuser being trained.
    """
    loss = EMMALoss(alpha=0.0)

    def score(net: torch.nn.Module, batch: dict) -> dict:
        sensors.to(device)
        a, b = batch["a"], batch["b"]
        x = torch.cat([a, b], 1)
        f = net(x)
        sensing = loss(sensors(f, list(batch["a_modality"])), a, sensors(f, list(batch["b_modality"])), b)
        # the metrics score the image users get: empty background stays empty
        return {"loss": sensing, "pred": zero_where_empty(f, x), "label": x}

    fusion = IgniteMetricHandler(
        metric_fn=FusionMetric(VALIDATION_METRICS), output_transform=lambda out: (out["pred"], out["label"])
    )
    return _evaluator(slices, device, fuser, score, {"val_fusion": fusion})
