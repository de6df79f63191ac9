"""The shipped weights: every named set loads, the default is one of them, and its record (package
and bundle) is complete and agrees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_emma.model_source import ModelSourceError, resolve_fuser
from monai_emma.networks import UFuser
from monai_emma.weights import (
    WEIGHTS_DIR,
    load_sensors,
    load_ufuser,
    resolve_set,
    set_record,
    weight_sets,
    weights_info,
    weights_path,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "emma"


def test_every_weight_set_loads_and_fuses():
    assert "v1" in weight_sets()  # the first shipped set stays loadable by its name
    for name in weight_sets():
        net = load_ufuser(name)
        assert isinstance(net, UFuser) and not net.training
        x = torch.rand(1, 2, 32, 32)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 1, 32, 32) and torch.isfinite(y).all() and 0 <= y.min() <= y.max() <= 1
        bank = load_sensors(name)
        assert {"mri", "ct", "pet", "spect"} <= set(bank.modalities)


def test_default_is_an_alias_of_a_named_set():
    info = weights_info()
    assert info["default"] in info["sets"] and resolve_set() == info["default"]
    assert weights_path("default") == weights_path(info["default"])
    with pytest.raises(KeyError, match=r"unknown weight set 'v0'; shipped: .*\(default\)"):
        resolve_set("v0")
    # the CLI's --weights takes a set name when no such file exists
    net, source = resolve_fuser(weights="v1")
    assert source == "shipped weights 'v1'"
    ref = load_ufuser("v1")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ModelSourceError, match="no such weights file"):
        resolve_fuser(weights="v0")


@pytest.mark.parametrize("name", ["v1", "default"])
def test_record_says_how_the_weights_were_trained(name):
    record = set_record(name)
    cfg = record["config"]
    for key in ("data", "recipe", "command", "hardware", "torch", "val_pairs"):
        assert record[key], key
    assert isinstance(cfg["seed"], int)
    for stage, section in (("sensors", "sensor"), ("fuser", "fuser")):
        assert record["stages"][stage]["epochs"] == cfg[section]["epochs"]
        assert record["stages"][stage]["wall_minutes"] > 0


def test_bundle_links_to_the_default_set_and_records_it():
    record = set_record("default")
    # one copy in the repository: the bundle's models are links to the package's files
    for link, kind in (("model.pt", "ufuser"), ("sensors.pt", "sensors")):
        target = (BUNDLE / "models" / link).resolve()
        assert target == (WEIGHTS_DIR / record[kind]).resolve()
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    shipped = meta["shipped_weights"]
    assert shipped["set"] == resolve_set("default")
    assert shipped["command"] == record["command"]
    assert shipped["seed"] == record["config"]["seed"]
    assert shipped["fuser_epochs"] == record["stages"]["fuser"]["epochs"]
    assert shipped["sensor_epochs"] == record["stages"]["sensors"]["epochs"]
    assert shipped["prior_weight"] == record["config"].get("prior_weight", 0.0)
