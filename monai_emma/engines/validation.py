"""Per-epoch validation of both stages as MONAI evaluators, run by MONAI's ``ValidationHandler``.

Stage 1 scores the pseudo-sensors (MSE of sensing the mean-rule fusion of each full validation
slice, ``val_loss``). Stage 2 scores the U-Fuser: the sensing part of the EMMA loss (``val_loss``,
the key metric, lower is better) and the fusion metrics MI, VIF, Qabf and SSIM of the 8-bit fused
image (:meth:`~monai_emma.metrics.FusionMetric.per_item`), with empty background kept empty as in
deployment.

Every score is a mean over slices. In distributed runs each rank scores its share of the slices
(:func:`rank_share`: slices ``rank, rank + world, ...``) and the sums are added over ranks
(:class:`SliceMean`), so the scores equal those of one process on the same slices, for any
number of slices and ranks: a rank with fewer slices than the others (or none) scores a copy of a
slice with weight 0 to keep every rank's collective calls in step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.engines import Evaluator
from monai.networks.utils import eval_mode

from monai_emma.data.pairs import SlicePair, load_pair
from monai_emma.losses import EMMALoss
from monai_emma.metrics import FusionMetric
from monai_emma.networks.sensor_bank import SensorBank
from monai_emma.transforms.empty import zero_where_empty

__all__ = [
    "VALIDATION_METRICS",
    "validation_slices",
    "rank_share",
    "SliceMean",
    "sensor_validator",
    "fuser_validator",
]

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


def _world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(slices: Sequence[dict], rank: int = 0, world_size: int = 1) -> list[dict]:
    """One rank's validation items: slices ``rank, rank + world_size, ...`` with ``weight`` 1,
    padded with weight-0 copies to ``ceil(len(slices) / world_size)`` items (at least one), so
    that every rank runs the same number of iterations.

    Example:
        >>> [(s["i"], s["weight"]) for s in rank_share([{"i": 0}], rank=1, world_size=2)]
        [(0, 0.0)]
    """
    if not slices:
        return []
    per_rank = max(1, -(-len(slices) // world_size))
    own = [{**s, "weight": 1.0} for s in slices[rank::world_size]]
    pad = [{**slices[(rank + i) % len(slices)], "weight": 0.0} for i in range(per_rank - len(own))]
    return own + pad


class SliceMean(Metric):
    """Weighted mean over validation items of ``output[key]``, summed over ranks.

    The engine's output holds per-item values (B,) under each key and per-item weights (B,) under
    ``"weight"`` (0 for the padding of :func:`rank_share`). Sums are kept in float64 and reduced
    over ranks with one all-reduce.

    Args:
        keys: one key (``compute`` returns a float) or several (a ``{key: float}`` dict, which
            ignite also spreads into ``engine.state.metrics``).
    """

    def __init__(self, keys: str | Sequence[str]) -> None:
        self.single = isinstance(keys, str)
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        # the values of ``keys`` and the weights, as one tuple handed to ``update`` unchanged
        super().__init__(output_transform=self._select, skip_unrolling=True)

    def _select(self, output: dict) -> tuple[torch.Tensor, ...]:
        return (*(output[k] for k in self.keys), output["weight"])

    @reinit__is_reduced
    def reset(self) -> None:
        self._sums = torch.zeros(len(self.keys) + 1, dtype=torch.float64)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, ...]) -> None:
        *values, weight = output
        weight = torch.as_tensor(weight, dtype=torch.float64).reshape(-1).cpu()
        for i, value in enumerate(values):
            self._sums[i] += (value.detach().to("cpu", torch.float64).reshape(-1) * weight).sum()
        self._sums[-1] += weight.sum()

    @sync_all_reduce("_sums")
    def compute(self) -> float | dict[str, float]:
        total = float(self._sums[-1])
        if total <= 0:
            raise RuntimeError("validation scored no slice")
        means = {k: float(v) / total for k, v in zip(self.keys, self._sums[:-1])}
        return means[self.keys[0]] if self.single else means


def _evaluator(
    slices: list[dict],
    device: torch.device,
    network: Callable[[], torch.nn.Module],
    score: Callable[[torch.nn.Module, dict], dict[str, Any]],
    additional_metrics: dict | None = None,
) -> Evaluator:
    rank, world = _world()
    # one slice per batch: validation slices keep their own sizes
    loader = torch.utils.data.DataLoader(rank_share(slices, rank, world), batch_size=1, shuffle=False)

    def iteration(engine: Any, batch: dict) -> dict:
        net = network()
        with eval_mode(net), torch.no_grad():
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            return {**score(net, batch), "weight": batch["weight"]}

    return Evaluator(
        device=device,
        val_data_loader=loader,
        iteration_update=iteration,
        key_val_metric={"val_loss": SliceMean("loss")},
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

    def score(net: torch.nn.Module, batch: dict) -> dict:
        a, b = batch["a"], batch["b"]
        fused = (a + b) / 2
        n = a.shape[0]
        sensed = net(torch.cat([fused, fused]), [*batch["a_modality"], *batch["b_modality"]])
        per_item = (sensed[:n] - a).pow(2).flatten(1).mean(1) + (sensed[n:] - b).pow(2).flatten(1).mean(1)
        return {"loss": per_item}

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
    metrics = FusionMetric(VALIDATION_METRICS)

    def score(net: torch.nn.Module, batch: dict) -> dict:
        sensors.to(device)
        a, b = batch["a"], batch["b"]
        x = torch.cat([a, b], 1)
        f = net(x)
        sensing = loss(sensors(f, list(batch["a_modality"])), a, sensors(f, list(batch["b_modality"])), b)
        # the metrics score the image users get: empty background stays empty
        return {"loss": sensing.reshape(1), **metrics.per_item(zero_where_empty(f, x), x)}

    return _evaluator(slices, device, fuser, score, {"val_fusion": SliceMean(VALIDATION_METRICS)})
