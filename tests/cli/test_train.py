"""``monai-emma train --init``: fine-tuning from shipped or given weights."""

from __future__ import annotations

import json

import torch

from monai_emma.cli import main
from monai_emma.engines.finetune import state_sha256
from monai_emma.weights import get_weights

#: one epoch of two steps on 32-pixel patches, without the equivariance term; 2 validation slices
TINY = ["fuser_samples_per_epoch=4", "fuser_patch_size=32", "fuser_batch_size=2", "val_slices=2"]


def _tiny(*args: str) -> list[str]:
    return [*args, "--alpha", "0", *(f"--override={t}" for t in TINY)]


def test_init_v3_skips_stage_one_and_starts_from_v3(phantom_root, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", str(phantom_root), "--output", str(run), "--init", "v3"]
    # learning rate 0: Adam leaves every weight as it was, so the result is the starting point
    assert main(_tiny(*base, "--sensor-epochs", "0", "--fuser-epochs", "1", "--fuser-lr", "0")) == 0
    trained = torch.load(run / "stage2_fuser" / "ufuser.pt", weights_only=True)
    v3 = get_weights("v3").get_state_dict()
    assert trained.keys() == v3.keys() and all(torch.equal(trained[k], v3[k]) for k in v3)
    # stage 1 was not trained: its folder holds only v3's sensors, for a later --init of this run
    assert [p.name for p in (run / "stage1_sensors").iterdir()] == ["sensors.pt"]
    sensors = torch.load(run / "stage1_sensors" / "sensors.pt", weights_only=True)
    assert state_sha256(sensors) == state_sha256(get_weights("v3", "sensors").get_state_dict())
    record = json.loads((run / "config.json").read_text())
    assert record["sensor"]["epochs"] == 0 and record["fuser"]["lr"] == 0
    init = record["extra"]["init"]
    assert init["given"] == "v3" and init["weights"] == "shipped weights 'v3'"
    assert init["sha256"] == state_sha256(v3) and init["sensors"] == "shipped sensors 'v3'"
    out = capsys.readouterr().out
    assert "fuser:" in out and "sensors:" not in out
    # the same command again: the finished run is not repeated; the run folder then serves as an init
    assert main(_tiny(*base, "--fuser-epochs", "1", "--fuser-lr", "0")) == 0
    again = tmp_path / "again"
    args = ["train", "--data", str(phantom_root), "--output", str(again), "--init", str(run), "--fuser-epochs", "1"]
    assert main(_tiny(*args)) == 0
    init = json.loads((again / "config.json").read_text())["extra"]["init"]
    assert init["sha256"] == state_sha256(v3) and init["sensors"].endswith("run/stage1_sensors/sensors.pt")
    moved = torch.load(again / "stage2_fuser" / "ufuser.pt", weights_only=True)
    assert not all(torch.equal(moved[k], v3[k]) for k in v3)  # a real learning rate trains


def test_init_refusals_are_one_line_before_anything_is_written(phantom_root, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", str(phantom_root), "--output", str(run)]
    cases = [
        (["--init", "missing.pt"], "missing.pt: no such weights file or folder"),
        (["--sensor-epochs", "0"], "--sensor-epochs 0 skips stage 1"),
        (["--init", "v3", "--sensor-epochs", "2"], "--sensor-epochs 2 would train new ones"),
        (["--init-sensors", "v3"], "--init-sensors goes with --init"),
        (["--init", "v3", "--init-sensors", "nope.pt"], "nope.pt: no such sensors file or folder"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not run.exists()
    # the identity ablation needs no stage 1 and no init
    args = [*base, "--sensors", "identity", "--sensor-epochs", "0", "--fuser-epochs", "1"]
    assert main(_tiny(*args)) == 0
