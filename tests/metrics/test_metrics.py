"""Fusion metrics: hand-derivable values on synthetic images, and the reference evaluator's values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_emma.metrics import METRIC_NAMES, FusionMetric, batch_fusion_metrics, fusion_metrics, read_gray

# values of the reference evaluator (CDDFuse utils/Evaluator.py, SSIM data_range=2) on the shared pairs
REFERENCE = {
    ("MRI_CT/11", "mean"): [4.714690, 55.994862, 21.380339, 5.690726, 2.672208, 0.955178, 0.444762, 0.370157, 1.275246],
    ("MRI_CT/11", "max"): [4.685879, 84.569069, 34.877987, 8.362610, 3.655038, 1.490212, 0.583266, 0.610938, 1.340671],
    ("MRI_PET/20", "mean"): [
        4.475641,
        59.152683,
        16.952942,
        5.082920,
        2.397281,
        0.986369,
        0.663846,
        0.413062,
        1.426252,
    ],
    ("MRI_PET/20", "max"): [4.600585, 81.663979, 31.078524, 8.416309, 3.618735, 1.582644, 0.961601, 0.734496, 1.464912],
    ("MRI_SPECT/30", "mean"): [
        3.746372,
        47.218849,
        9.875584,
        2.674168,
        2.275394,
        0.645340,
        0.501170,
        0.363602,
        1.451129,
    ],
    ("MRI_SPECT/30", "max"): [
        3.954289,
        58.356544,
        15.542601,
        3.624473,
        3.328428,
        1.423316,
        0.523252,
        0.558610,
        1.467805,
    ],
}


@pytest.mark.shared_data
@pytest.mark.parametrize("pair_id, rule", sorted(REFERENCE))
def test_reference_values(harvard_root, pair_id, rule):
    pair, stem = pair_id.split("/")
    other = pair.split("_")[1]
    a = read_gray(harvard_root / pair / "MRI" / f"{stem}.png")
    b = read_gray(harvard_root / pair / other / f"{stem}.png")
    fused = np.round((a + b) / 2) if rule == "mean" else np.maximum(a, b)
    before = (fused.copy(), a.copy(), b.copy())
    got = fusion_metrics(fused, a, b)
    assert list(got) == list(METRIC_NAMES)
    for name, expected in zip(METRIC_NAMES, REFERENCE[(pair_id, rule)]):
        assert got[name] == pytest.approx(expected, rel=1e-4), name
    for x, y in zip((fused, a, b), before):
        assert np.array_equal(x, y)  # inputs untouched


def test_single_image_metrics_by_hand():
    img = np.zeros((4, 4), np.float32)
    img[:, 2:] = 100.0  # two columns of 0, two of 100
    m = fusion_metrics(img, img, img, ["EN", "SD", "SF", "AG"])
    assert m["EN"] == pytest.approx(1.0)  # two equally likely grey levels: 1 bit
    assert m["SD"] == pytest.approx(50.0)
    # one horizontal step of 100 in 3 differences per row; no vertical change
    assert m["SF"] == pytest.approx(math.sqrt(100.0**2 / 3))
    # Gx: columns [0, 50, 50, 0] (central differences inside, one-sided at borders); Gy = 0
    assert m["AG"] == pytest.approx(np.mean([0, 50, 50, 0]) / math.sqrt(2))


def test_pair_metrics_by_hand():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(np.float64)
    b = rng.integers(0, 256, (32, 32)).astype(np.float64)
    same = fusion_metrics(a, a, a, ["MI", "SSIM", "Qabf", "VIF"])
    # MI(F, F) is the entropy of F in nats; twice for the two sources
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    assert same["MI"] == pytest.approx(2 * -(p * np.log(p)).sum(), rel=1e-10)
    assert same["SSIM"] == pytest.approx(2.0)
    assert same["VIF"] == pytest.approx(2.0, rel=1e-6)
    # MI(F=A, A, B) = H(A) + MI(A, B), and MI(A, B, B) = 2 MI(A, B)
    mi_ab = fusion_metrics(a, b, b, ["MI"])["MI"] / 2
    assert 0 < mi_ab < same["MI"] / 2
    assert fusion_metrics(a, a, b, ["MI"])["MI"] == pytest.approx(same["MI"] / 2 + mi_ab, rel=1e-10)
    # F = A + B - mean: corr(F - B, A) = 1 and corr(F - A, B) = 1
    assert fusion_metrics(a + b, a, b, ["SCD"])["SCD"] == pytest.approx(2.0)
    bits = batch_fusion_metrics(torch.tensor(a)[None], torch.tensor(a)[None], torch.tensor(b)[None], ["MI"])
    nats = float(bits["MI"][0])
    from monai_emma.metrics.functional import mutual_information

    assert float(mutual_information(a, a, b, base=2)[0]) == pytest.approx(nats / math.log(2))


def test_batched_equals_single_and_torch_input():
    rng = np.random.default_rng(1)
    imgs = [rng.random((3, 64, 72)) * 255 for _ in range(3)]
    f, a, b = (torch.tensor(x) for x in imgs)
    batched = batch_fusion_metrics(f, a, b)
    for i in range(3):
        single = fusion_metrics(f[i], a[i], b[i])
        for name in METRIC_NAMES:
            assert float(batched[name][i]) == pytest.approx(single[name], rel=1e-9), name


def test_errors():
    x = np.zeros((8, 8))
    with pytest.raises(ValueError, match="2D grey image"):
        fusion_metrics(np.zeros((8, 8, 3)), x, x)
    with pytest.raises(ValueError, match="unknown metrics"):
        fusion_metrics(x, x, x, ["PSNR2"])
    with pytest.raises(ValueError, match="shape mismatch"):
        fusion_metrics(np.zeros((8, 9)), x, x)


def test_cumulative_metric_for_monai_handlers():
    metric = FusionMetric(metrics=["SD", "SCD"])
    rng = np.random.default_rng(2)
    src = torch.tensor(rng.random((2, 2, 32, 32)), dtype=torch.float32)
    fused = src.mean(1, keepdim=True)
    metric(y_pred=fused, y=src)
    metric(y_pred=fused, y=src)
    agg = metric.aggregate()
    expected = fusion_metrics((fused[0, 0] * 255).round(), (src[0, 0] * 255).round(), (src[0, 1] * 255).round())
    assert set(agg) == {"SD", "SCD"}
    assert agg["SD"] == pytest.approx(
        np.mean(
            [fusion_metrics((fused[i, 0] * 255).round(), src[i, 0] * 255, src[i, 1] * 255)["SD"] for i in range(2)]
        ),
        rel=1e-6,
    )
    assert np.isfinite(expected["SCD"])
    metric.reset()
    assert metric.aggregate() == {}


def test_cpu_gaussian_filter_equals_the_separable_convolution():
    """VIF's 'valid' Gaussian filtering takes a shifted-view path on CPU; it equals conv2d with the
    window outer(g, g) (the path used on other devices) for every window size VIF uses."""
    import torch.nn.functional as F

    from monai_emma.metrics.functional import _filter_valid, _gauss_1d

    x = torch.rand(3, 40, 33, dtype=torch.float64) * 255
    for k in (17, 9, 5, 3):
        g = _gauss_1d(k, "cpu")
        window = torch.outer(g, g)[None, None]
        expected = F.conv2d(x[:, None], window)[:, 0]
        got = _filter_valid(x, g)
        assert got.shape == (3, 40 - k + 1, 33 - k + 1)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_cpu_gaussian_filter_keeps_every_second_sample():
    """VIF's downsampling filters only the samples it keeps (step 2); same values as filtering all."""
    from monai_emma.metrics.functional import _filter_valid, _gauss_1d

    x = torch.rand(2, 70, 61, dtype=torch.float64) * 255
    for k in (17, 9, 5, 3):  # 17 takes the banded-matrix path, the others shifted views
        g = _gauss_1d(k, "cpu")
        torch.testing.assert_close(_filter_valid(x, g, step=2), _filter_valid(x, g)[:, ::2, ::2], rtol=0, atol=1e-9)


def test_vif_clamping_rules_match_their_sequential_statement():
    """The folded VIF rules equal the reference's rules applied one after another (numpy), on
    values that hit every rule: tiny and negative variances, negative covariance gains."""
    from monai_emma.metrics.functional import _vif_terms

    rng = np.random.default_rng(3)
    shape = (1, 2, 30, 30)
    s1 = rng.choice([0.0, 1e-12, -1e-3, 5.0, 300.0], size=shape) * rng.random(shape)
    s2 = rng.choice([0.0, 1e-12, 2.0, 400.0], size=(1, 1, 30, 30)) * rng.random((1, 1, 30, 30))
    s12 = rng.normal(0, 20, size=shape)

    eps, sigma_nsq = 1e-10, 2.0
    n1, n2, n12 = np.maximum(s1, 0), np.broadcast_to(np.maximum(s2, 0), shape).copy(), s12.copy()
    g = n12 / (n1 + eps)
    sv = n2 - g * n12
    m = n1 < eps
    g[m], sv[m], n1[m] = 0, n2[m], 0
    m = n2 < eps
    g[m], sv[m] = 0, 0
    m = g < 0
    sv[m], g[m] = n2[m], 0
    sv[sv <= eps] = eps
    num = np.log10(1 + g * g * n1 / (sv + sigma_nsq)).sum((-2, -1))
    den = np.log10(1 + n1 / sigma_nsq).sum((-2, -1))

    got_num, got_den = _vif_terms(torch.from_numpy(s1), torch.from_numpy(s2), torch.from_numpy(s12))
    np.testing.assert_allclose(got_num.numpy(), num, rtol=1e-12)
    np.testing.assert_allclose(got_den.numpy(), den, rtol=1e-12)
    assert (n1 == 0).any() and (np.broadcast_to(s2, shape) < eps).any() and (s12 < 0).any()


def test_ssim_border_is_scipy_reflect():
    """SSIM's uniform filter pads like scipy.ndimage 'reflect' (numpy 'symmetric')."""
    from monai_emma.metrics.functional import _symmetric_border_

    x = torch.rand(2, 9, 11, dtype=torch.float64)
    buf = torch.zeros(2, 15, 17, dtype=torch.float64)
    buf[:, 3:-3, 3:-3] = x
    expected = np.pad(x.numpy(), ((0, 0), (3, 3), (3, 3)), mode="symmetric")
    np.testing.assert_array_equal(_symmetric_border_(buf, 3).numpy(), expected)


def test_ssim_exact_float32_sums_for_8bit_images():
    """8-bit images take SSIM's window sums in float32 (exact: integers below 2**24) and the
    (co)variance numerators in int32 (exact); only the final ratio rounds at float32, so the
    result equals the float64 path to 1e-6, and other images take the float64 path."""
    from monai_emma.metrics.functional import _ssim_sum, ssim

    g = torch.Generator().manual_seed(4)
    f, a, b = (torch.randint(0, 256, (2, 40, 52), generator=g).double() for _ in range(3))
    f[0, 5:20, 5:30] = 255.0  # flat saturated patch: the largest sums
    fast = _ssim_sum(f, a, b, 2.0, exact_sums=True)
    plain = _ssim_sum(f, a, b, 2.0, exact_sums=False)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=0)
    torch.testing.assert_close(ssim(f, a, b), fast, rtol=0, atol=0)
    torch.testing.assert_close(ssim(f + 0.25, a, b), _ssim_sum(f + 0.25, a, b, 2.0, exact_sums=False), rtol=0, atol=0)
    for data_range in (2.0, 255.0):
        dark = torch.zeros_like(f)  # flat black: every window has zero variance
        torch.testing.assert_close(
            _ssim_sum(dark, dark, b, data_range, exact_sums=True),
            _ssim_sum(dark, dark, b, data_range, exact_sums=False),
            rtol=1e-6,
            atol=0,
        )


def test_qabf_float32_for_8bit_images_matches_float64():
    """8-bit images run Qabf in float32 (Sobel responses exact); equal to the float64 path to 1e-6,
    flat and saturated patches included."""
    from monai_emma.metrics.functional import _qabf

    g = torch.Generator().manual_seed(5)
    f, a, b = (torch.randint(0, 256, (2, 48, 40), generator=g).double() for _ in range(3))
    f[0, 4:20, 4:30] = 255.0
    a[1, :10] = 0.0
    f[1, :10] = 0.0
    torch.testing.assert_close(_qabf(f, a, b, True), _qabf(f, a, b, False), rtol=1e-6, atol=0)


def test_banded_gaussian_blocks_cover_every_output():
    """VIF's 17-tap window filters long axes block by block; the blocks tile the output exactly."""
    import torch.nn.functional as F

    from monai_emma.metrics.functional import _blocks, _filter_valid, _gauss_1d

    assert _blocks(100) == [(0, 100)]  # short axes: one product
    for m in (160, 224, 241, 624):
        blocks = _blocks(m)
        assert len(blocks) >= 4 and blocks[0][0] == 0 and blocks[-1][1] == m
        assert all(e0 == s1 for (_, e0), (s1, _) in zip(blocks, blocks[1:]))
    g = _gauss_1d(17, "cpu")
    x = torch.rand(2, 257, 190, dtype=torch.float64) * 255  # 241 x 174 outputs: blocks on both axes
    expected = F.conv2d(x[:, None], torch.outer(g, g)[None, None])[:, 0]
    torch.testing.assert_close(_filter_valid(x, g), expected, rtol=0, atol=1e-9)
