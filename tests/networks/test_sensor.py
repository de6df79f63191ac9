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


def _perturbed_lite(seed: int = 0) -> PseudoSensor:
    torch.manual_seed(seed)
    net = PseudoSensor(preset="lite")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return net.eval()


def test_frozen_fast_path_equals_the_plain_path_with_input_gradients():
    net = _perturbed_lite()
    x = torch.rand(3, 1, 64, 48, requires_grad=True)
    plain = net(x)  # eval, parameters still trainable: the plain path
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    net.requires_grad_(False)  # frozen, as in stage 2: batch norm folded, channels-last
    fast = net(x)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    assert net._folded is not None and fast.is_contiguous()
    import pickle

    assert pickle.loads(pickle.dumps(net))._folded is None  # derived data is not pickled
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_fast, g_plain, atol=1e-6, rtol=1e-5)
    # a changed statistic is folded again; training mode uses the plain path
    with torch.no_grad():
        net.encoder[0][0].adn.N.running_mean.add_(0.5)
    moved = net(x)
    assert (moved - fast).abs().max() > 1e-3
    net.requires_grad_(True)
    torch.testing.assert_close(net(x), moved, atol=1e-6, rtol=0)
    net.requires_grad_(False).train()
    assert not torch.equal(net(x), moved)  # batch statistics: the plain path


def test_frozen_fast_path_under_bf16_autocast():
    net = _perturbed_lite().requires_grad_(False)
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x)
    low.float().sum().backward()
    assert low.dtype == torch.bfloat16 and x.grad is not None and torch.isfinite(x.grad).all()
    assert (low.float() - ref).abs().max() < 0.05
    assert net(x).dtype == torch.float32  # back to float32 weights outside autocast
