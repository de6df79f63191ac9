from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from monai_emma.networks import UFuser
from monai_emma.networks.official import ufuser_key_from_official, ufuser_key_to_official

DATA = Path(__file__).resolve().parents[1] / "fixtures"


def read_key_table(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / name).read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")) if shape else ()))
    return rows


def random_official_state(name: str, seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in read_key_table(name):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * scale
    return state


def perturbed(net: UFuser, seed: int = 1, scale: float = 0.3) -> UFuser:
    """A copy of ``net`` whose every parameter is moved off its initial value."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))
    return out


def test_parameter_count_and_state_dict_is_pure():
    net = UFuser()
    assert sum(p.numel() for p in net.parameters()) == 1_517_657
    keys_before = set(net.state_dict())
    net.eval()
    with torch.no_grad():
        net(torch.rand(1, 2, 32, 32))
    assert net._fast_weights is not None  # the merged weights exist ...
    assert set(net.state_dict()) == keys_before  # ... and never enter the state dict
    assert len(keys_before) == 347


@pytest.mark.parametrize("size", [(250, 301), (64, 64), (17, 9), (33, 40)])
def test_any_size_shape_and_range(size):
    net = perturbed(UFuser()).eval()
    x = torch.rand(2, 2, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, *size)
    assert torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1


def test_no_padding_when_size_fits():
    net = UFuser()
    x = torch.rand(1, 2, 64, 48)
    padded, crop = net._pad(x)
    assert crop is None and padded is x
    padded, crop = net._pad(torch.rand(1, 2, 250, 301))
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0 and crop == (3, 1)


def test_batch_consistency():
    net = perturbed(UFuser()).eval()
    x = torch.rand(3, 2, 40, 56)
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-6)


def test_fast_path_equals_plain_path_and_follows_weight_changes():
    net = perturbed(UFuser()).eval()
    x = torch.rand(2, 2, 64, 80)
    with torch.no_grad():
        fast = net(x)
        plain = net._forward_plain(x)
    assert (fast - plain).abs().max() < 1e-5
    assert fast.std() > 1e-3  # a meaningful, non-constant output

    # an optimiser step changes the parameters in place: the cache must follow
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = net(x).mean()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        fast2 = net(x)
        plain2 = net._forward_plain(x)
    assert (fast2 - fast).abs().max() > 1e-4  # the step did change the output
    assert (fast2 - plain2).abs().max() < 1e-5

    # loading another state dict must also invalidate the cache
    other = perturbed(UFuser(), seed=5)
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        fast3 = net(x)
        ref3 = other.eval()._forward_plain(x)
    assert (fast3 - ref3).abs().max() < 1e-5


def test_reused_buffers_follow_shapes_threads_and_copies():
    """The fast path keeps its padded buffers between calls: results must not depend on what ran
    before, on another thread running at the same time, or on copying the module."""
    import pickle
    import threading

    net = perturbed(UFuser()).eval()
    xs = [torch.rand(1, 2, 64, 64), torch.rand(2, 2, 48, 80), torch.rand(1, 2, 64, 64)]
    with torch.no_grad():
        plain = [net._forward_plain(x) for x in xs]
        fast = [net(x) for x in xs]  # shape changes drop and rebuild the buffers
        again = net(xs[0])
    for f, p in zip(fast, plain):
        assert (f - p).abs().max() < 1e-5
    assert torch.equal(again, fast[0])

    results: dict[int, list[torch.Tensor]] = {}

    def work(k: int) -> None:
        with torch.no_grad():
            results[k] = [net(xs[k]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        for out in results[k]:
            assert (out - plain[k]).abs().max() < 1e-5

    # scratch buffers are never pickled or deep-copied, and the copies work
    clone = pickle.loads(pickle.dumps(net))
    twin = copy.deepcopy(net)
    with torch.no_grad():
        assert (clone(xs[1]) - plain[1]).abs().max() < 1e-5
        assert (twin(xs[1]) - plain[1]).abs().max() < 1e-5
    net.release_workspace()
    with torch.no_grad():
        assert torch.equal(net(xs[0]), fast[0])


def test_inference_mode_and_mode_switches_return_self():
    net = UFuser()
    assert net.eval() is net and net.train() is net
    net.eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.inference_mode():
        a = net(x)
    with torch.no_grad():
        b = net(x)
    assert torch.equal(a, b)
    # grad enabled in eval mode takes the differentiable path
    x.requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_official_key_round_trip():
    state = random_official_state("official_ufuser_keys.tsv")
    assert len(state) == 347
    net = UFuser.from_official({"module." + k: v for k, v in state.items()})
    ours = net.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[ufuser_key_from_official(key)], value), key
    assert {ufuser_key_to_official(k) for k in ours} == set(state)
    # spot checks of the documented map
    assert ufuser_key_from_official("V_en_1.embed.weight") == "encoder_a.0.embed.weight"
    assert ufuser_key_from_official("I_down3.weight") == "down_b.2.weight"
    assert ufuser_key_from_official("up4.0.weight") == "up.2.0.weight"
    assert ufuser_key_from_official("de_2.GlobalFeature.attn.scale") == "decoder.1.global_branch.attn.temperature"
    assert ufuser_key_from_official("f_3.LocalFeature.Extraction.1.conv.2.bias") == "fusion.2.local_branch.1.conv2.bias"


def test_from_official_file_and_bad_keys(tmp_path):
    state = random_official_state("official_ufuser_keys.tsv", seed=3)
    path = tmp_path / "EMMA.pth"
    torch.save(state, path)
    net = UFuser.from_official(path)
    assert torch.equal(net.head.bias, state["last.0.bias"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        UFuser.from_official(tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="not part of the EMMA architecture"):
        UFuser.from_official({**state, "extra.weight": torch.zeros(1)})


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        UFuser()(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        UFuser(spatial_dims=3)


def test_export_with_one_input_tensor():
    net = perturbed(UFuser()).eval()
    x = torch.rand(1, 2, 64, 64)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        expected = net(x)
    got = exported.module()(x)
    assert (got - expected).abs().max() < 1e-5


def test_gradients_reach_all_parameters():
    net = UFuser().train()
    net(torch.rand(2, 2, 32, 32)).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.skipif(not os.environ.get("EMMA_OFFICIAL_DIR"), reason="set EMMA_OFFICIAL_DIR to a MMIF-EMMA checkout")
@pytest.mark.parametrize("weights", ["perturbed-0.3", "perturbed-1.0", "random"])
@pytest.mark.parametrize("size", [(256, 256), (480, 640)])
def test_matches_official_implementation(size, weights):
    """Parity with the official code (not shipped; point EMMA_OFFICIAL_DIR at a checkout).

    ``perturbed-s``: the official initialisation with every tensor moved by s standard deviations
    of noise (non-saturated outputs); ``random``: every tensor drawn from N(0, 0.05^2), activations
    in the thousands. (Much larger random weights push activations past 1e9, where even the official
    code disagrees with itself by 0.1 when only the memory layout of its input changes.)
    """
    sys.path.insert(0, os.environ["EMMA_OFFICIAL_DIR"])
    ufuser_module = pytest.importorskip("nets.Ufuser")
    official = ufuser_module.Ufuser().eval()
    if weights == "random":
        state = random_official_state("official_ufuser_keys.tsv", seed=11, scale=0.05)
    else:
        init = UFuser.from_official(official.state_dict())
        scale = float(weights.split("-")[1])
        state = {ufuser_key_to_official(k): v for k, v in perturbed(init, seed=11, scale=scale).state_dict().items()}
    official.load_state_dict(state)
    ours = UFuser.from_official(state).eval()
    x = torch.rand(1, 2, *size)
    with torch.no_grad():
        expected = official(x[:, 1:2], x[:, 0:1])
        assert torch.isfinite(expected).all()
        if weights != "random":
            assert expected.std() > 1e-3
        assert (ours(x) - expected).abs().max() <= 1e-5
        assert (ours._forward_plain(x) - expected).abs().max() <= 1e-5


def test_precision_switches_in_one_process():
    """fp32, then bf16 and fp16 autocast, then fp32 again, at one shape: every call works, the
    output stays float32, the low-precision results stay close and fp32 is unchanged."""
    import pickle

    torch.manual_seed(0)
    net = perturbed(UFuser()).eval()
    x = torch.rand(2, 2, 64, 48)
    with torch.inference_mode():
        ref = net(x)
        outs = {}
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                outs[dtype] = net(x)
        again = net(x)
    assert all(o.dtype == torch.float32 for o in outs.values())
    assert (outs[torch.bfloat16] - ref).abs().max() < 0.05
    assert (outs[torch.float16] - ref).abs().max() < 0.01
    assert 0 < (outs[torch.bfloat16] - ref).abs().max()  # really computed in bfloat16
    torch.testing.assert_close(again, ref, atol=0, rtol=0)
    assert set(net._low_precision_copies) == {torch.bfloat16, torch.float16}
    # derived data is never pickled, and a weight change rebuilds the low-precision copy
    assert not pickle.loads(pickle.dumps(net))._low_precision_copies
    with torch.no_grad():
        net.head.bias.add_(1.0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        moved = net(x)
    assert (moved - outs[torch.bfloat16]).abs().max() > 0.01
    # with gradients, autocast runs the plain path op by op
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    y.float().mean().backward()
    assert net.head.bias.grad is not None


def test_a_network_built_under_inference_mode_runs():
    """Weights loaded inside torch.inference_mode() are inference tensors without a version
    counter; the fast path's cache key must not need one (the pseudo-sensors' neither)."""
    from monai_emma.networks import PseudoSensor

    x = torch.rand(1, 2, 32, 32)
    with torch.inference_mode():
        net = UFuser().eval()
        sensor = PseudoSensor(preset="lite").eval().requires_grad_(False)
        out = net(x)
        assert out.shape == (1, 1, 32, 32) and torch.equal(out, net(x))
        assert sensor(out).shape == (1, 1, 32, 32)
