"""DenseFuse, the second learned peer: shapes, snapshot loading, the authors' grey pipeline, and
(with a checkout of hli1221/densefuse-pytorch) equality with the authors' model."""

import os
import sys
import types

import numpy as np
import pytest
import torch

from monai_emma.networks.densefuse import DENSEFUSE_WEIGHTS_ENV, DenseFuse, densefuse_fuse_gray, load_densefuse


def test_shapes_average_of_codes_and_errors():
    torch.manual_seed(0)
    net = DenseFuse().eval()
    a, b = torch.rand(2, 1, 31, 45) * 255, torch.rand(2, 1, 31, 45) * 255
    with torch.no_grad():
        out = net(a, b)
        assert out.shape == (2, 1, 31, 45) and bool((out >= 0).all())  # the last layer has a ReLU too
        assert net.encode(a).shape == (2, 64, 31, 45)
        torch.testing.assert_close(out, net.decode((net.encode(a) + net.encode(b)) / 2))
        torch.testing.assert_close(net(a, a), net.decode(net.encode(a)))
    with pytest.raises(ValueError, match="two or more"):
        net(a)
    with pytest.raises(ValueError, match="same-sized"):
        net(a, b[..., 1:])


def test_load_and_grey_pipeline(tmp_path, monkeypatch):
    torch.manual_seed(1)
    saved = DenseFuse()
    path = tmp_path / "densefuse_gray.model"
    torch.save(saved.state_dict(), path)
    net = load_densefuse(path)
    assert not net.training
    monkeypatch.setenv(DENSEFUSE_WEIGHTS_ENV, str(path))
    assert isinstance(load_densefuse(), DenseFuse)
    monkeypatch.delenv(DENSEFUSE_WEIGHTS_ENV)
    with pytest.raises(FileNotFoundError, match=DENSEFUSE_WEIGHTS_ENV):
        load_densefuse()
    wrong = tmp_path / "wrong.model"
    torch.save({"conv1.conv2d.weight": torch.zeros(16, 1, 3, 3)}, wrong)
    with pytest.raises(ValueError, match="wrong.model: not a snapshot of DenseFuse"):
        load_densefuse(wrong)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (29, 36)).astype(np.float32)
    b = rng.integers(0, 256, (29, 36)).astype(np.float32)
    got = densefuse_fuse_gray(net, a, b)
    with torch.no_grad():
        want = net(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0].clamp(0, 255)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want.numpy().astype(np.uint8))  # truncated, as released


@pytest.mark.skipif(
    not os.environ.get("EMMA_DENSEFUSE_DIR"), reason="set EMMA_DENSEFUSE_DIR to a hli1221/densefuse-pytorch checkout"
)
def test_equals_the_authors_model_with_their_snapshot(monkeypatch):
    """Their ``net.py`` is read from the checkout at run time (never copied)."""
    root = os.environ["EMMA_DENSEFUSE_DIR"]
    monkeypatch.setitem(sys.modules, "fusion_strategy", types.ModuleType("fusion_strategy"))
    module = types.ModuleType("densefuse_authors")
    exec(compile(open(os.path.join(root, "net.py")).read(), "net.py", "exec"), module.__dict__)
    snapshot = os.path.join(root, "models", "densefuse_gray.model")
    theirs = module.DenseFuse_net(1, 1)
    theirs.load_state_dict(torch.load(snapshot, map_location="cpu", weights_only=True))
    theirs.eval()
    ours = load_densefuse(snapshot)
    a, b = torch.rand(1, 1, 57, 70) * 255, torch.rand(1, 1, 57, 70) * 255
    with torch.no_grad():
        expected = theirs.decoder(theirs.fusion(theirs.encoder(a), theirs.encoder(b)))[0]
        torch.testing.assert_close(ours(a, b), expected, rtol=0, atol=1e-4)
