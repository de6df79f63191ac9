import pytest
import torch

from monai_emma.losses import EMMALoss, FusionLoss, MaxFidelityPrior, sobel_gradients


def test_fusion_loss_zero_for_equal_positive_otherwise():
    x = torch.rand(2, 1, 32, 32)
    loss = FusionLoss()
    assert loss(x, x).item() == 0.0
    assert loss(x, x + 0.1).item() == pytest.approx(0.1, rel=1e-5)  # gradients equal: only the L1 term
    y = x.clone()
    y[..., 10:20, 10:20] = 1.0
    assert loss(x, y) > FusionLoss(gradient_weight=0.0)(x, y) > 0


def test_sobel_gradients_of_a_ramp():
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]  # increases by 1 per column
    g = sobel_gradients(ramp)
    assert g.shape == (1, 1, 2, 16, 16)
    assert torch.allclose(g[0, 0, 0, :, 1:-1], torch.full((16, 14), 1.0))  # normalised: d/dx = 1
    assert torch.allclose(g[0, 0, 1], torch.zeros(16, 16))
    # replicate borders: one-sided difference halves the response at the edge columns
    assert torch.allclose(g[0, 0, 0, :, 0], torch.full((16,), 0.5))


def test_fusion_loss_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        FusionLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_emma_loss_components():
    a, b = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    t = torch.rand(8, 1, 16, 16)
    loss = EMMALoss(alpha=0.5)
    parts = loss.components(a, a, b + 0.2, b, t, t + 0.1)
    assert parts["sense_a"] == 0
    assert parts["sense_b"].item() == pytest.approx(0.2, rel=1e-5)
    assert parts["equivariance"].item() == pytest.approx(0.1, rel=1e-4)
    assert parts["total"].item() == pytest.approx(0.2 + 0.5 * 0.1, rel=1e-4)
    assert EMMALoss(alpha=0.0)(a, a, b, b, t, t + 1) == 0


def test_max_fidelity_prior_targets_the_brighter_source_and_stronger_edge():
    a = torch.zeros(1, 1, 16, 16)
    a[..., :, 8:] = 1.0  # a vertical edge
    b = torch.full((1, 1, 16, 16), 0.25)  # flat
    prior = MaxFidelityPrior()
    fused_max = torch.maximum(a, b)  # the brighter source everywhere, edge 0.75 high instead of 1
    fused_mean = (a + b) / 2  # half of a's edge, and dimmer than the brighter source everywhere
    assert prior(fused_max, a, b) < prior(a, a, b)  # a alone is too dark where b is brighter
    assert prior(fused_max, a, b) < prior(fused_mean, a, b)
    # intensity term alone: exactly zero at max(a, b), and L1 to it otherwise
    intensity_only = MaxFidelityPrior(gradient_weight=0.0)
    assert intensity_only(fused_max, a, b) == 0
    assert intensity_only(fused_mean, a, b).item() == pytest.approx(float((fused_max - fused_mean).abs().mean()))
    with pytest.raises(ValueError, match="shapes differ"):
        prior(a, a, b[..., :8])


def test_emma_loss_adds_the_prior_only_when_weighted():
    a, b = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    fused = torch.rand(2, 1, 16, 16, requires_grad=True)
    plain = EMMALoss(alpha=0.0).components(a, a, b, b, fused=fused)
    assert "prior" not in plain and plain["total"] == 0
    parts = EMMALoss(alpha=0.0, prior_weight=0.5).components(a, a, b, b, fused=fused)
    expected = MaxFidelityPrior()(fused, a, b)
    assert parts["prior"].item() == pytest.approx(expected.item())
    assert parts["total"].item() == pytest.approx(0.5 * expected.item())
    parts["total"].backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the fused image"):
        EMMALoss(prior_weight=1.0).components(a, a, b, b)


def test_prior_edge_weight_per_modality():
    """``prior_gradient_weight_by_modality`` weighs each sample's edge term by its second modality;
    equal weights give the scalar prior, and modalities without an entry keep the default."""
    from monai_emma.losses import EMMALoss, MaxFidelityPrior

    torch.manual_seed(0)
    f, a, b = (torch.rand(3, 1, 12, 12) for _ in range(3))
    prior = MaxFidelityPrior(40.0)
    torch.testing.assert_close(prior(f, a, b, torch.full((3,), 40.0)), prior(f, a, b))
    per = [MaxFidelityPrior(w)(f[i : i + 1], a[i : i + 1], b[i : i + 1]) for i, w in enumerate((40.0, 80.0, 80.0))]
    torch.testing.assert_close(prior(f, a, b, torch.tensor([40.0, 80.0, 80.0])), torch.stack(per).mean())
    with pytest.raises(ValueError, match="gradient_weights"):
        prior(f, a, b, torch.ones(2))
    loss = EMMALoss(
        alpha=0.0, prior_weight=3.0, prior_gradient_weight=40.0, prior_gradient_weight_by_modality={"PET": 80}
    )
    plain = EMMALoss(alpha=0.0, prior_weight=3.0, prior_gradient_weight=40.0)
    args = (f, a, f, b, None, None, f)
    mixed = loss.components(*args, modalities_b=["ct", "pet", "spect"])["prior"]
    torch.testing.assert_close(mixed, prior(f, a, b, torch.tensor([40.0, 80.0, 40.0])))
    # without modalities (or without the option) the loss is the plain one
    torch.testing.assert_close(loss.components(*args)["total"], plain.components(*args)["total"])
    torch.testing.assert_close(
        plain.components(*args, modalities_b=["pet"] * 3)["total"], plain.components(*args)["total"]
    )


def test_ssim_map_is_the_metric_ssim_and_one_for_equal_images():
    """The prior's differentiable SSIM averages to the fusion metric's SSIM (scikit-image's
    definition, valid region) and is 1 where the images agree."""
    from monai_emma.losses import ssim_map
    from monai_emma.metrics.functional import ssim

    torch.manual_seed(0)
    f, a, b = (torch.rand(3, 1, 24, 20, dtype=torch.float64) for _ in range(3))
    both = ssim_map(f, a).flatten(1).mean(1) + ssim_map(f, b).flatten(1).mean(1)
    torch.testing.assert_close(both, ssim(f, a, b, data_range=1.0))
    assert ssim_map(a, a).shape == (3, 1, 18, 14)
    torch.testing.assert_close(ssim_map(a, a), torch.ones(3, 1, 18, 14, dtype=torch.float64))
    with pytest.raises(ValueError, match="too small"):
        ssim_map(a[..., :5, :5], b[..., :5, :5])


def test_prior_structure_term_per_modality():
    """The structure term is 2 - SSIM(f, a) - SSIM(f, b) per sample, added with ``ssim_weight``
    (or one weight per sample); it pulls f towards a source's structure, and ``EMMALoss`` weighs it
    by the second modality like the edge term."""
    torch.manual_seed(1)
    f, a, b = (torch.rand(3, 1, 16, 16) for _ in range(3))
    plain, structured = MaxFidelityPrior(4.0), MaxFidelityPrior(4.0, ssim_weight=2.0)
    structure = structured.structure(f, a, b)
    assert structure.shape == (3,) and bool((structure > 0).all())
    assert structured.structure(a, a, a).abs().max() < 1e-5
    torch.testing.assert_close(structured(f, a, b), plain(f, a, b) + 2.0 * structure.mean())
    per = torch.tensor([0.0, 2.0, 0.0])
    torch.testing.assert_close(structured(f, a, b, None, per), plain(f, a, b) + (per * structure).mean())
    with pytest.raises(ValueError, match="ssim_weights"):
        structured(f, a, b, None, torch.ones(2))
    # a gradient step on the term alone raises SSIM(f, a) + SSIM(f, b)
    g = f.clone().requires_grad_(True)
    MaxFidelityPrior(0.0, ssim_weight=1.0).structure(g, a, b).sum().backward()
    with torch.no_grad():
        stepped = g - 0.05 * g.grad / g.grad.abs().max()
    assert bool((structured.structure(stepped, a, b) < structure).all())

    loss = EMMALoss(alpha=0.0, prior_weight=3.0, prior_gradient_weight=4.0, prior_ssim_weight_by_modality={"CT": 2})
    args = (f, a, f, b, None, None, f)
    mixed = loss.components(*args, modalities_b=["ct", "pet", "spect"])["prior"]
    torch.testing.assert_close(mixed, plain(f, a, b) + (torch.tensor([2.0, 0.0, 0.0]) * structure).mean())
    # without the option: no structure term, the v3 prior exactly
    v3 = EMMALoss(alpha=0.0, prior_weight=3.0, prior_gradient_weight=4.0)
    torch.testing.assert_close(v3.components(*args, modalities_b=["ct"] * 3)["prior"], plain(f, a, b))


def test_structure_term_skips_windows_where_a_source_is_flat():
    """With ``ssim_min_std`` the structure term leaves out every window in which a source is flat:
    a fused image that differs from the sources only there costs nothing, while differences in
    windows where both vary still count."""
    torch.manual_seed(2)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    b[:, :, :, :16] = 0.3  # the left half of b is flat
    masked, plain = MaxFidelityPrior(0.0, 1.0, ssim_min_std=0.01), MaxFidelityPrior(0.0, 1.0)
    changed_left = a.clone()
    changed_left[:, :, :, :8] = torch.rand(2, 1, 32, 8)  # only windows that see flat b
    torch.testing.assert_close(masked.structure(changed_left, a, b), masked.structure(a, a, b))
    assert bool((plain.structure(changed_left, a, b) != plain.structure(a, a, b)).all())
    changed_right = a.clone()
    changed_right[:, :, :, 24:] = torch.rand(2, 1, 32, 8)
    assert bool((masked.structure(changed_right, a, b) > masked.structure(a, a, b)).all())
    assert bool((masked.structure(a, a, b) < plain.structure(a, a, b)).all())


def test_window_variance_is_each_windows_population_variance():
    from monai_emma.losses import window_variance

    torch.manual_seed(3)
    x = torch.rand(1, 1, 9, 10, dtype=torch.float64)
    v = window_variance(x)
    assert v.shape == (1, 1, 3, 4)
    torch.testing.assert_close(v[0, 0, 1, 2], x[0, 0, 1:8, 2:9].var(unbiased=False))
    assert window_variance(torch.full((1, 1, 8, 8), 0.4, dtype=torch.float64)).abs().max() < 1e-12
