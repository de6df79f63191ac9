import pytest
import torch

from monai_emma.baselines import (
    FUSION_RULES,
    get_rule,
    laplacian_fusion,
    max_fusion,
    mean_fusion,
    mix_rules,
    wavelet_fusion,
)


def test_mean_and_max():
    x = torch.rand(3, 2, 16, 20)
    assert torch.allclose(mean_fusion(x), (x[:, :1] + x[:, 1:]) / 2)
    assert torch.equal(max_fusion(x), torch.maximum(x[:, :1], x[:, 1:]))


@pytest.mark.parametrize("rule", [laplacian_fusion, wavelet_fusion])
def test_multiscale_rules_reproduce_identical_sources(rule):
    img = torch.rand(2, 1, 37, 50)
    out = rule(torch.cat([img, img], 1))
    assert out.shape == (2, 1, 37, 50)
    assert (out - img).abs().max() < 1e-5


def test_laplacian_keeps_strongest_detail():
    a = torch.zeros(1, 1, 32, 32)
    a[..., 16, :] = 1.0  # a sharp line only in source a
    b = torch.full((1, 1, 32, 32), 0.5)
    out = laplacian_fusion(torch.cat([a, b], 1))
    assert out[0, 0, 16].mean() > out[0, 0, 8].mean() + 0.3


def test_registry_mixing_and_errors():
    assert set(FUSION_RULES) == {"mean", "max", "laplacian", "wavelet"}
    x = torch.rand(6, 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    mixed = mix_rules(x, ["mean", "max"], generator=g)
    for i in range(6):
        assert torch.allclose(mixed[i], mean_fusion(x[i : i + 1])[0]) or torch.equal(
            mixed[i], max_fusion(x[i : i + 1])[0]
        )
    with pytest.raises(ValueError, match="unknown fusion rule"):
        get_rule("median")
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        mean_fusion(torch.rand(1, 3, 4, 4))
