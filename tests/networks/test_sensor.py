from __future__ import annotations

import os
import sys

import pytest
import torch

from monai_emma.networks import SENSOR_PRESETS, PseudoSensor
from monai_emma.networks.official import sensor_key_from_official, sensor_key_to_official
from tests.networks.test_ufuser import random_official_state


def test_presets():
    paper = PseudoSensor(preset="paper")
    assert sum(p.numel() for p in paper.parameters()) == 39_397_761
    lite = PseudoSensor(preset="lite")
    n_lite = sum(p.numel() for p in lite.parameters())
    assert 200_000 <= n_lite <= 2_000_000
    assert lite.features == SENSOR_PRESETS["lite"]
    with pytest.raises(ValueError, match="unknown preset"):
        PseudoSensor(preset="huge")


def test_forward_shape_range_and_size_check():
    net = PseudoSensor(preset="lite").eval()
    y = net(torch.rand(3, 1, 64, 48))
    assert y.shape == (3, 1, 64, 48)
    assert y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.rand(1, 1, 60, 64))


def test_custom_features():
    net = PseudoSensor(features=(4, 8, 16))
    assert net.size_multiple == 4
    assert net(torch.rand(1, 1, 12, 8)).shape == (1, 1, 12, 8)


def test_official_key_round_trip():
    state = random_official_state("official_sensor_keys.tsv")
    assert len(state) == 132
    net = PseudoSensor.from_official(state)
    ours = net.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[sensor_key_from_official(key)], value), key
    assert {sensor_key_to_official(k) for k in ours} == set(state)
    assert sensor_key_from_official("down3.conv.4.running_var") == "encoder.2.1.adn.N.running_var"
    assert sensor_key_from_official("up_sample5.0.weight") == "up.3.conv.weight"


@pytest.mark.skipif(not os.environ.get("EMMA_OFFICIAL_DIR"), reason="set EMMA_OFFICIAL_DIR to a MMIF-EMMA checkout")
def test_matches_official_unet5():
    sys.path.insert(0, os.environ["EMMA_OFFICIAL_DIR"])
    unet_module = pytest.importorskip("nets.Unet5")
    state = random_official_state("official_sensor_keys.tsv", seed=4)
    official = unet_module.UNet5().eval()
    official.load_state_dict(state)
    ours = PseudoSensor.from_official(state).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert (ours(x) - official(x)).abs().max() <= 1e-5
