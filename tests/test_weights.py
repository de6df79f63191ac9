"""The shipped weights: files load, and their record (package and bundle) is complete and agrees."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from monai_emma.networks import UFuser
from monai_emma.weights import WEIGHTS_DIR, load_sensors, load_ufuser, weights_info

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "emma"


def test_every_weight_set_loads_and_fuses():
    for name in weights_info()["sets"]:
        net = load_ufuser(name)
        assert isinstance(net, UFuser) and not net.training
        x = torch.rand(1, 2, 32, 32)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 1, 32, 32) and torch.isfinite(y).all() and 0 <= y.min() <= y.max() <= 1
        bank = load_sensors(name)
        assert {"mri", "ct", "pet", "spect"} <= set(bank.modalities)


def test_record_says_how_the_default_weights_were_trained():
    record = weights_info()["sets"]["default"]
    cfg = record["config"]
    for key in ("data", "recipe", "command", "hardware", "torch"):
        assert record[key], key
    assert isinstance(cfg["seed"], int)
    for stage, section in (("sensors", "sensor"), ("fuser", "fuser")):
        assert record["stages"][stage]["epochs"] == cfg[section]["epochs"]
        assert record["stages"][stage]["wall_minutes"] > 0
    # one copy in the repository: the bundle's models are links to the package's files
    for link, kind in (("model.pt", "ufuser"), ("sensors.pt", "sensors")):
        target = (BUNDLE / "models" / link).resolve()
        assert target == (WEIGHTS_DIR / record[kind]).resolve()


def test_bundle_metadata_records_the_same_training():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    record = weights_info()["sets"]["default"]
    assert meta["version"] in meta["changelog"]
    shipped = meta["shipped_weights"]
    assert shipped["command"] == record["command"]
    assert shipped["seed"] == record["config"]["seed"]
    assert shipped["fuser_epochs"] == record["stages"]["fuser"]["epochs"]
    assert shipped["sensor_epochs"] == record["stages"]["sensors"]["epochs"]
    assert shipped["prior_weight"] == record["config"].get("prior_weight", 0.0)
