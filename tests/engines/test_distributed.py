"""The engine at world size 2 (gloo, two real processes): validation with fewer slices than ranks
scores like one process, training with fewer batches than ranks runs in step on both ranks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from monai_emma.data.pairs import find_pairs, split_pairs
from monai_emma.engines import recipe
from monai_emma.engines.stages import FUSER, SENSORS
from monai_emma.engines.two_stage import stage_validator
from monai_emma.engines.validation import rank_share
from monai_emma.networks import SensorBank, UFuser

pytestmark = pytest.mark.slow

TINY_SENSOR = dict(features=(4, 8, 16))


def _config():
    return recipe(
        "cpu",
        epochs=1,
        sensor_batch_size=4,
        fuser_batch_size=2,
        sensor_patch_size=32,
        fuser_patch_size=32,
        sensor_samples_per_epoch=8,  # one batch of 4 on each rank
        fuser_samples_per_epoch=1,  # one sample: fewer batches than ranks
    )


def _networks():
    torch.manual_seed(0)
    fuser = UFuser().eval()
    sensors = SensorBank(["mri", "ct"], **TINY_SENSOR).freeze()
    return fuser, sensors


def _scores(val_pairs, sensors_net, fuser) -> dict[str, dict[str, float]]:
    """Stage-1 and stage-2 validation metrics of the current process (group)."""
    cfg = _config()
    out = {}
    for stage, net in ((SENSORS, sensors_net), (FUSER, fuser)):
        evaluator = stage_validator(stage, val_pairs, cfg, torch.device("cpu"), net, sensors_net)
        evaluator.run()
        out[stage.name] = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, float)}
        out[stage.name]["iterations"] = evaluator.state.iteration
    return out


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import torch.distributed as dist

    from monai_emma.engines import fuser_trainer, sensor_trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train, val = split_pairs(find_pairs(data))
        fuser, sensors = _networks()
        result = {"one": _scores(val[:1], sensors, fuser), "three": _scores(val[:1] * 3, sensors, fuser)}
        # training with one sample per epoch on two ranks, then stage 2 with one validation slice
        cfg = _config()
        kwargs = dict(distributed=True, progress=False, resume=False)
        trainer, sensor_end = sensor_trainer(train[:1], val[:1], cfg, Path(out) / "s", torch.device("cpu"), **kwargs)
        trainer.run()
        bank = trainer.network.module
        trainer2, epoch_end = fuser_trainer(
            train[:1], val[:1], bank, cfg, Path(out) / "f", torch.device("cpu"), **kwargs
        )
        trainer2.run()
        result["train"] = {
            "sensor_iterations": trainer.state.iteration,
            "fuser_iterations": trainer2.state.iteration,
            "fuser_checksum": float(sum(p.detach().double().sum() for p in trainer2.network.module.parameters())),
            "history": epoch_end.history,
            "sensor_history": sensor_end.history,
            # this rank's own averages (the history holds the mean over both ranks)
            "sensor_local": {k: v / sensor_end._count for k, v in sensor_end._sums.items()},
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_share_pads_with_weight_zero():
    slices = [{"i": i} for i in range(3)]
    shares = [rank_share(slices, r, 2) for r in range(2)]
    assert [[(s["i"], s["weight"]) for s in share] for share in shares] == [[(0, 1.0), (2, 1.0)], [(1, 1.0), (1, 0.0)]]
    # more ranks than slices: every rank has one item, the slices are counted once
    shares = [rank_share(slices[:1], r, 4) for r in range(4)]
    assert [len(s) for s in shares] == [1, 1, 1, 1] and sum(s[0]["weight"] for s in shares) == 1.0
    assert rank_share([], 0, 2) == []


def test_world_size_two_with_one_validation_slice_and_one_training_sample(one_type_root, tmp_path):
    data = one_type_root
    train, val = split_pairs(find_pairs(data))
    assert len(val) == 1 and len(train) == 6  # one pair type of 7 pairs: one validation slice
    fuser, sensors = _networks()
    single = {"one": _scores(val[:1], sensors, fuser), "three": _scores(val[:1] * 3, sensors, fuser)}

    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(out)), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        for case in ("one", "three"):
            for stage in ("sensors", "fuser"):
                got, want = r[case][stage], single[case][stage]
                assert set(got) == set(want) and {"val_loss"} <= set(got)
                for key in want:
                    if key != "iterations":
                        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (case, stage, key)
        assert {"MI", "VIF", "Qabf", "SSIM"} <= set(r["one"]["fuser"])
        # one slice: each rank runs one iteration (rank 1 a weight-0 copy); three: two each
        assert r["one"]["fuser"]["iterations"] == 1 and r["three"]["fuser"]["iterations"] == 2
        # eight samples at batch 4 (stage 1), one sample at batch 2 (stage 2): one step on each rank
        assert r["train"]["sensor_iterations"] == 1 and r["train"]["fuser_iterations"] == 1
        (row,) = r["train"]["history"]
        assert row["val_loss"] > 0 and 0 < row["val_SSIM"] <= 2
    # DDP kept both ranks' U-Fusers equal
    assert ranks[0]["train"]["fuser_checksum"] == ranks[1]["train"]["fuser_checksum"]
    rows = [{k: v for k, v in r["train"]["history"][0].items() if k != "seconds"} for r in ranks]
    assert rows[0] == rows[1]
    # stage 1: each rank trained on its own batch; the logged training losses are the mean over ranks
    local = [r["train"]["sensor_local"]["total"] for r in ranks]
    assert local[0] != local[1]
    for r in ranks:
        assert r["train"]["sensor_history"][0]["train_total"] == pytest.approx(sum(local) / 2, rel=1e-9)
