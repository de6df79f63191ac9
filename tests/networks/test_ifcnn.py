"""IFCNN, the learned peer: shapes, fusion schemes, snapshot loading and its errors, the authors'
grey pipeline, and (with a checkout of uzeful/IFCNN) equality with the authors' model."""

import os
import types

import numpy as np
import pytest
import torch

from monai_emma.networks.ifcnn import IFCNN, IFCNN_WEIGHTS_ENV, ifcnn_fuse_gray, load_ifcnn


def _snapshot(tmp_path, seed=0):
    torch.manual_seed(seed)
    net = IFCNN()
    for bn in (net.conv2.bn, net.conv3.bn):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "IFCNN-MAX.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_shapes_and_schemes_at_odd_sizes():
    torch.manual_seed(0)
    net = IFCNN().eval()
    a, b = torch.rand(2, 3, 37, 51), torch.rand(2, 3, 37, 51)
    with torch.no_grad():
        assert net(a, b).shape == (2, 3, 37, 51)
        fa, fb = net.features(a), net.features(b)
        # MAX fuses the feature maps element-wise: identical sources give the single-source result
        torch.testing.assert_close(net(a, a), net.conv4(net.conv3(fa)))
        torch.testing.assert_close(net(a, b), net.conv4(net.conv3(torch.maximum(fa, fb))))
        mean = IFCNN("mean").eval()
        mean.load_state_dict(net.state_dict())
        torch.testing.assert_close(mean(a, b), net.conv4(net.conv3((fa + fb) / 2)))
        assert net(a, b, torch.zeros_like(a)).shape == (2, 3, 37, 51)  # any number of sources
    with pytest.raises(ValueError, match="two or more"):
        net(a)
    with pytest.raises(ValueError, match="same-sized"):
        net(a, b[..., :-1])
    with pytest.raises(ValueError, match="fuse_scheme"):
        IFCNN("median")


def test_load_from_path_or_environment_and_clear_errors(tmp_path, monkeypatch):
    path, net = _snapshot(tmp_path)
    x = torch.rand(1, 3, 20, 24)
    loaded = load_ifcnn(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, x.flip(-1)), net(x, x.flip(-1)))
    monkeypatch.setenv(IFCNN_WEIGHTS_ENV, str(path))
    assert isinstance(load_ifcnn(), IFCNN)
    monkeypatch.delenv(IFCNN_WEIGHTS_ENV)
    with pytest.raises(FileNotFoundError, match=IFCNN_WEIGHTS_ENV):
        load_ifcnn()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_ifcnn(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_ifcnn(bad)
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(ValueError, match="other.pth: not a snapshot of IFCNN"):
        load_ifcnn(other)


def test_grey_pipeline_of_the_authors(tmp_path):
    """Grey sources repeated over RGB in [0, 1]; output clamped, truncated to uint8, RGB -> grey."""
    import cv2

    _, net = _snapshot(tmp_path, seed=3)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (33, 40)).astype(np.float32)
    b = rng.integers(0, 256, (33, 40)).astype(np.float32)
    got = ifcnn_fuse_gray(net, a, b)
    assert got.dtype == np.uint8 and got.shape == (33, 40)
    x = [torch.from_numpy(g / 255.0).float()[None, None].repeat(1, 3, 1, 1) for g in (a, b)]
    with torch.no_grad():
        rgb = (net(*x)[0].clamp(0, 1) * 255).numpy().astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(got, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY))
    with pytest.raises(ValueError, match="same-sized"):
        ifcnn_fuse_gray(net, a, b[:-1])


@pytest.mark.skipif(not os.environ.get("EMMA_IFCNN_DIR"), reason="set EMMA_IFCNN_DIR to a uzeful/IFCNN checkout")
def test_equals_the_authors_model_with_their_snapshot():
    """Their model code is read from the checkout at run time (never copied), without torchvision:
    the ResNet-101 layer it borrows is replaced by the snapshot's own conv1 weights."""
    root = os.environ["EMMA_IFCNN_DIR"]
    source = open(os.path.join(root, "Code", "model.py")).read().replace("import torchvision.models as models", "")
    module = types.ModuleType("ifcnn_authors")
    exec(compile(source, "model.py", "exec"), module.__dict__)
    stem = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    theirs = module.IFCNN(types.SimpleNamespace(conv1=stem, parameters=lambda: iter(())), 0)
    snapshot = os.path.join(root, "Code", "snapshots", "IFCNN-MAX.pth")
    theirs.load_state_dict(torch.load(snapshot, map_location="cpu", weights_only=True))
    ours = load_ifcnn(snapshot)
    a, b = torch.rand(1, 3, 67, 80), torch.rand(1, 3, 67, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(a, b), theirs.eval()(a, b), rtol=0, atol=1e-6)
