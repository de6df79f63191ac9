"""Image-fusion quality metrics of the literature (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM), batched in torch.

Conventions follow the reference evaluator of the CDDFuse/EMMA papers (``utils/Evaluator.py`` of
``Zhaozixiang1228/MMIF-CDDFuse``), read for facts and reimplemented here; ``docs/metrics.md``
states each one. Inputs are grey images on a 0-255 scale; "sum" metrics add the value over
(F, A) and over (F, B). Everything runs in float64 on the inputs' device, except where all three
images are 8-bit valued: then SSIM's window sums and (co)variance numerators are exact integers
(float32 sums, int32 products) and Qabf's Sobel responses are exact in float32, so those two round
only their final smooth maps at float32 (within 1e-6 of float64, tested). VIF stays in float64:
its variances are differences of large moments compared with 1e-10. The Gaussian windows of VIF
are separable (none of their entries is truncated), so VIF uses two 1D passes per filter.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "METRIC_NAMES",
    "entropy",
    "standard_deviation",
    "spatial_frequency",
    "average_gradient",
    "mutual_information",
    "scd",
    "vif",
    "qabf",
    "ssim",
    "batch_fusion_metrics",
]

METRIC_NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def _b(x: torch.Tensor) -> torch.Tensor:
    """(H, W) or (B, H, W) or (B, 1, H, W) -> (B, H, W) float64."""
    x = torch.as_tensor(x)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"metrics take grey images; got {x.shape[1]} channels")
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (H, W), (B, H, W) or (B, 1, H, W); got {tuple(x.shape)}")
    return x.to(torch.float64)


# ---------------------------------------------------------------- single-image metrics
def entropy(f: torch.Tensor) -> torch.Tensor:
    """EN: Shannon entropy (bits) of the 256-bin histogram of F rounded to uint8 (half to even,
    values wrapped like numpy's uint8 cast)."""
    f = _b(f)
    q = torch.round(f).to(torch.int64) % 256
    hist = torch.zeros(f.shape[0], 256, dtype=torch.float64, device=f.device)
    hist.scatter_add_(1, q.flatten(1), torch.ones_like(q.flatten(1), dtype=torch.float64))
    p = hist / q[0].numel()
    return -(p * torch.log2(p + (p == 0))).sum(1)


def standard_deviation(f: torch.Tensor) -> torch.Tensor:
    """SD: population standard deviation of F."""
    return _b(f).flatten(1).std(1, correction=0)


def spatial_frequency(f: torch.Tensor) -> torch.Tensor:
    """SF: sqrt(mean(horizontal first difference^2) + mean(vertical first difference^2))."""
    f = _b(f)
    rf = (f[:, :, 1:] - f[:, :, :-1]).pow(2).mean((1, 2))
    cf = (f[:, 1:, :] - f[:, :-1, :]).pow(2).mean((1, 2))
    return torch.sqrt(rf + cf)


def _gradient(f: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences inside, one-sided at the borders (numpy.gradient's rule)."""
    g = torch.empty_like(f)
    n = f.shape[dim]
    sl = lambda a, b: [slice(None)] * (dim) + [slice(a, b)]  # noqa: E731
    g[tuple(sl(0, 1))] = f[tuple(sl(1, 2))] - f[tuple(sl(0, 1))]
    g[tuple(sl(n - 1, n))] = f[tuple(sl(n - 1, n))] - f[tuple(sl(n - 2, n - 1))]
    g[tuple(sl(1, n - 1))] = (f[tuple(sl(2, n))] - f[tuple(sl(0, n - 2))]) / 2
    return g


def average_gradient(f: torch.Tensor) -> torch.Tensor:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2)."""
    f = _b(f)
    gx, gy = _gradient(f, 2), _gradient(f, 1)
    return torch.sqrt((gx * gx + gy * gy) / 2).mean((1, 2))


# ---------------------------------------------------------------- pair metrics
def _is_8bit(x: torch.Tensor) -> bool:
    """All values are integers in [0, 255]."""
    return torch.equal(x, x.round().clamp_(0, 255))


def _labels(x: torch.Tensor, eight_bit: bool | None = None) -> tuple[torch.Tensor, int]:
    """Integer labels of the distinct values of ``x`` and their count. 8-bit-valued images use
    their values directly (MI does not depend on how labels are numbered; empty bins drop out);
    ``eight_bit=True`` says so without checking."""
    flat = x.flatten()
    if eight_bit or (eight_bit is None and _is_8bit(flat)):
        return flat.to(torch.int64), 256
    _, inverse = torch.unique(flat, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _mutual_info_labels(xi: torch.Tensor, nx: int, yi: torch.Tensor, ny: int) -> torch.Tensor:
    """scikit-learn's ``mutual_info_score`` of two label arrays (from :func:`_labels`), nats."""
    pair = xi * ny + yi
    if nx * ny <= 1 << 20:  # dense joint histogram; the marginals are its row and column sums
        counts = torch.bincount(pair, minlength=nx * ny).to(torch.float64)
        joint = counts.view(nx, ny)
        px, py = joint.sum(1), joint.sum(0)
        ids = counts.nonzero().flatten()
        pij = counts[ids]
    else:  # sparse: only the pairs that occur
        ids, c = torch.unique(pair, return_counts=True)
        pij = c.to(torch.float64)
        px = torch.bincount(xi, minlength=nx).to(torch.float64)
        py = torch.bincount(yi, minlength=ny).to(torch.float64)
    n = pij.sum()
    outer = px[ids // ny] * py[ids % ny]
    mi = (pij / n) * (torch.log(pij) - torch.log(n)) + (pij / n) * (-torch.log(outer) + 2 * torch.log(n))
    mi = torch.where(mi.abs() < torch.finfo(torch.float64).eps, torch.zeros_like(mi), mi)
    return mi.sum().clamp_min(0.0)


def mutual_information(f, a, b, base: float = math.e) -> torch.Tensor:
    """MI: MI(F, A) + MI(F, B) from the joint histogram of the grey values (nats by default;
    ``base=2`` gives bits)."""
    return _mutual_information(_b(f), _b(a), _b(b), None) / math.log(base)


def _mutual_information(f, a, b, eight_bit: bool | None) -> torch.Tensor:
    out = []
    for fi, ai, bi in zip(f, a, b):
        lf = _labels(fi, eight_bit)  # F's labels serve both pairs
        out.append(
            _mutual_info_labels(*lf, *_labels(ai, eight_bit)) + _mutual_info_labels(*lf, *_labels(bi, eight_bit))
        )
    return torch.stack(out)


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    y = y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
    return (x * y).sum(1) / torch.sqrt((x * x).sum(1) * (y * y).sum(1))


def scd(f, a, b) -> torch.Tensor:
    """SCD: corr(F - B, A) + corr(F - A, B)."""
    f, a, b = _b(f), _b(a), _b(b)
    return _corr(a, f - b) + _corr(b, f - a)


@functools.lru_cache(maxsize=64)
def _gauss_1d(n: int, device) -> torch.Tensor:
    sd = n / 5.0
    m = (n - 1) / 2.0
    x = torch.arange(n, dtype=torch.float64, device=device) - m
    g = torch.exp(-(x * x) / (2 * sd * sd))
    # MATLAB's fspecial truncation (entries < eps * max set to 0) removes nothing for n <= 17,
    # so the 2D window is exactly the outer product of this normalised 1D window
    return g / g.sum()


@functools.lru_cache(maxsize=256)
def _band(n: int, g: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Matrix whose rows slide the k taps of ``g`` (every ``step``-th position): ``band @ x``
    filters the rows of ``x`` ('valid' correlation; the windows here are symmetric, so also
    convolution). Built once per (size, window, step): the windows come from the cached
    :func:`_gauss_1d`, so ``g`` identifies them."""
    k = g.numel()
    starts = torch.arange(0, n - k + 1, step, device=g.device)
    out = torch.zeros(starts.numel(), n, dtype=g.dtype, device=g.device)
    idx = starts[:, None] + torch.arange(k, device=g.device)[None]
    return out.scatter_(1, idx, g.expand(starts.numel(), k).contiguous())


def _blocks(m: int, size: int = 40) -> list[tuple[int, int]]:
    """Cut ``m`` outputs into about ``m / size`` blocks; fewer than 4 blocks: one."""
    nb = round(m / size)
    if nb < 4:
        return [(0, m)]
    edges = [round(i * m / nb) for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _banded_last(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """'valid' filtering of the last axis of (N, W) by ``g``, block by block, each block's
    product written straight into its columns of the result."""
    k = g.numel()
    out = torch.empty((x.shape[0], x.shape[-1] - k + 1), dtype=x.dtype, device=x.device)
    for s, e in _blocks(out.shape[-1]):
        torch.mm(x[:, s : e + k - 1], _band(e - s + k - 1, g).T, out=out[:, s:e])
    return out


def _banded_rows(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """'valid' filtering of axis 1 of (B, H, W) by ``g``, block by block (written in place)."""
    k = g.numel()
    out = torch.empty((y.shape[0], y.shape[1] - k + 1, y.shape[2]), dtype=y.dtype, device=y.device)
    for s, e in _blocks(out.shape[1]):
        torch.matmul(_band(e - s + k - 1, g), y[:, s : e + k - 1], out=out[:, s:e])
    return out


def _separable_valid(x: torch.Tensor, g: torch.Tensor, step: int = 1) -> torch.Tensor:
    """'valid' filtering of (B, H, W) by the separable window outer(g, g), keeping every
    ``step``-th output row and column (both image sides >= k)."""
    k = g.numel()
    h, w = x.shape[-2:]
    if x.device.type != "cpu":
        gv, gh = g.reshape(1, 1, k, 1), g.reshape(1, 1, 1, k)
        return F.conv2d(F.conv2d(x[:, None], gv), gh)[:, 0, ::step, ::step]
    if k >= 13:
        # long windows: banded matrix products, the one over the contiguous last axis first.
        # A band is mostly zeros, so each axis is cut into blocks of ~40 outputs that read only
        # their k - 1 + 40 inputs (for 8 images of 256x256 and 17 taps: 2.5 ms against 4.7 ms
        # for one product per axis and 6.7 ms for shifted views; 480x640: 16 against 46 ms)
        if step != 1:
            return _band(h, g, step) @ (x @ _band(w, g, step).T)
        b = x.shape[0]
        y = _banded_last(x.reshape(b * h, w), g).view(b, h, w - k + 1)
        return _banded_rows(y, g)
    # short windows: a weighted sum of shifted (strided) views over the whole batch (float64
    # conv2d has no fast CPU kernel: 8 images of 256x256 and 17 taps took 112 ms batched)
    taps = g.tolist()
    rows = x[:, : h - k + 1 : step, :] * taps[0]
    for i in range(1, k):
        rows.add_(x[:, i : h - k + 1 + i : step, :], alpha=taps[i])
    out = rows[:, :, : w - k + 1 : step] * taps[0]
    for i in range(1, k):
        out.add_(rows[:, :, i : w - k + 1 + i : step], alpha=taps[i])
    return out


def _filter_valid(x: torch.Tensor, g: torch.Tensor, step: int = 1) -> torch.Tensor:
    """'valid' 2D convolution of (B, H, W) with the separable window outer(g, g), keeping every
    ``step``-th output row and column.

    Like ``scipy.signal.convolve2d(..., mode='valid')``, an image smaller than the window in both
    dimensions swaps the roles (convolution commutes), giving a (k-H+1, k-W+1) result.
    """
    k = g.numel()
    h, w = x.shape[-2:]
    if h < k and w < k:
        win = torch.outer(g, g)[None, None]
        return torch.stack([F.conv2d(win, xi.flip(-2, -1)[None, None])[0, 0] for xi in x])[:, ::step, ::step]
    if h < k or w < k:
        raise ValueError(f"a {h}x{w} image is too small for VIF's {k}x{k} window")
    return _separable_valid(x, g, step)


def _vif_terms(s1, s2, s12, eps: float = 1e-10, sigma_nsq: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator sums of one scale, with the reference's clamping rules.

    ``s1`` and ``s12`` are (B, 2, h, w) (the two references), ``s2`` is (B, 1, h, w) (the fused
    image, shared). The reference applies its rules one after another: where s1 < eps the gain
    is 0, sv = s2 and s1 = 0; then where s2 < eps gain and sv are 0; then where the gain is
    negative sv = s2 and the gain 0; last sv is raised to eps. Folded into a few passes here.
    """
    s1 = s1.clamp_min_(0)
    s2 = s2.clamp_min_(0)
    low1 = s1 < eps
    low2 = s2 < eps
    gain = s1.add(eps)
    torch.div(s12, gain, out=gain)
    sv = torch.addcmul(s2, gain, s12, value=-1.0)
    neg = gain < 0
    sv = torch.where(low1 | neg, s2, sv, out=sv).masked_fill_(low2.expand_as(sv), 0.0).clamp_min_(eps)
    gain = gain.masked_fill_(low1 | low2 | neg, 0.0)
    s1 = s1.masked_fill_(low1, 0.0)
    num = torch.log10(gain.square_().mul_(s1).div_(sv.add_(sigma_nsq)).add_(1)).sum((-2, -1))
    den = torch.log10(s1.div_(sigma_nsq).add_(1)).sum((-2, -1))
    return num, den


def _vif_moments(refs: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """(8B, h, w): refs (2B), dist (B), refs^2 (2B), dist^2 (B), refs * dist (2B), written into one
    buffer (``refs`` is (B, 2, h, w), ``dist`` (B, h, w))."""
    bsz, _, h, w = refs.shape
    out = torch.empty((8 * bsz, h, w), dtype=dist.dtype, device=dist.device)
    out[: 2 * bsz].view(bsz, 2, h, w).copy_(refs)
    out[2 * bsz : 3 * bsz].copy_(dist)
    torch.mul(refs, refs, out=out[3 * bsz : 5 * bsz].view(bsz, 2, h, w))
    torch.mul(dist, dist, out=out[5 * bsz : 6 * bsz])
    torch.mul(refs, dist[:, None], out=out[6 * bsz :].view(bsz, 2, h, w))
    return out


def _vif_pair(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """VIF(A -> F) + VIF(B -> F) for (B, H, W) batches; the distorted image's statistics are
    filtered once and shared by both references."""
    bsz = f.shape[0]
    # one buffer, the references (B, 2) first and then the fused images (B): each coarser scale
    # is one filtering of the whole buffer
    imgs = torch.empty((3 * bsz, *f.shape[1:]), dtype=f.dtype, device=f.device)
    imgs[: 2 * bsz].view(bsz, 2, *f.shape[1:])[:, 0].copy_(a)
    imgs[: 2 * bsz].view(bsz, 2, *f.shape[1:])[:, 1].copy_(b)
    imgs[2 * bsz :].copy_(f)
    nums = torch.zeros((bsz, 2), dtype=torch.float64, device=f.device)
    dens = torch.zeros_like(nums)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        g = _gauss_1d(n, f.device)
        if scale > 1:
            imgs = _filter_valid(imgs, g, step=2)
        refs, dist = imgs[: 2 * bsz].unflatten(0, (bsz, 2)), imgs[2 * bsz :]
        filt = _filter_valid(_vif_moments(refs, dist), g)
        mu1 = filt[: 2 * bsz].unflatten(0, (bsz, 2))
        mu2 = filt[2 * bsz : 3 * bsz]
        e11 = filt[3 * bsz : 5 * bsz].unflatten(0, (bsz, 2))
        e22 = filt[5 * bsz : 6 * bsz]
        e12 = filt[6 * bsz :].unflatten(0, (bsz, 2))
        s1 = torch.addcmul(e11, mu1, mu1, value=-1.0)
        s2 = torch.addcmul(e22, mu2, mu2, value=-1.0)[:, None]
        s12 = torch.addcmul(e12, mu1, mu2[:, None], value=-1.0)
        num, den = _vif_terms(s1, s2, s12)
        nums, dens = nums + num, dens + den
    v = nums / dens
    return torch.where(torch.isnan(v), torch.ones_like(v), v).sum(1)


def vif(f, a, b) -> torch.Tensor:
    """VIF: VIF(A -> F) + VIF(B -> F), Sheikh-Bovik multi-scale pixel domain (1.0 where a ratio is NaN)."""
    f, a, b = _b(f), _b(a), _b(b)
    return _vif_pair(a, b, f)


_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _sobel_strength_angle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel strength and angle of (B, H, W) images: true convolution, 'same' size, zero padding.

    The Sobel kernels are separable ([1, 2, 1] smoothing times a [1, 0, -1] difference), so both
    responses come from shifted views of a zero-padded copy (float64 conv2d has no fast CPU
    kernel)."""
    p = F.pad(x, (1, 1, 1, 1))
    # convolution flips the kernel: sx = smooth_rows(left - right), sy = smooth_cols(below - above);
    # in-place arithmetic keeps the number of fresh image-sized buffers (and page faults) low
    dx = p[:, :, :-2] - p[:, :, 2:]  # (B, H + 2, W)
    sx = (dx[:, 1:-1] * 2).add_(dx[:, :-2]).add_(dx[:, 2:])
    dy = p[:, 2:] - p[:, :-2]  # (B, H, W + 2)
    sy = (dy[:, :, 1:-1] * 2).add_(dy[:, :, :-2]).add_(dy[:, :, 2:])
    g = (sx * sx).addcmul_(sy, sy).sqrt_()
    zero = sx == 0
    angle = torch.atan_(sy.div_(sx.masked_fill_(zero, 1.0))).masked_fill_(zero, math.pi / 2)
    return g, angle


def _qabf_edge(ga, aa, gf, af) -> torch.Tensor:
    tg, kg, dg = 0.9994, -15.0, 0.5
    ta, ka, da = 0.9879, -22.0, 0.8
    # min / max, except that the reference's quirk gives g_F (not 1) where g_A equals g_F; the
    # maximum is 0 only where both are 0, which that rule covers
    ratio = torch.where(ga == gf, gf, torch.minimum(ga, gf).div_(torch.maximum(ga, gf)))
    qg = ratio.sub_(dg).mul_(kg).exp_().add_(1).reciprocal_().mul_(tg)
    qa = (aa - af).abs_().div_(-math.pi / 2).add_(1 - da).mul_(ka).exp_().add_(1).reciprocal_().mul_(ta)
    return qg.mul_(qa)


def qabf(f, a, b) -> torch.Tensor:
    """Qabf: Xydeas-Petrovic edge preservation with 3x3 Sobel operators, weights g_A and g_B."""
    f, a, b = _b(f), _b(a), _b(b)
    return _qabf(f, a, b, all(_is_8bit(x) for x in (f, a, b)))


def _qabf(f, a, b, eight_bit: bool) -> torch.Tensor:
    # 8-bit images run in float32: the Sobel responses are integers below 2**11 and their squared
    # sums below 2**22, so strengths, the equality tests and the zero tests are exact; only the
    # smooth maps (atan, exp) round at float32's 6e-8, and the sums are taken in float64
    n = f.shape[0]
    work = torch.float32 if eight_bit else f.dtype
    stack = torch.empty((3 * n, *f.shape[1:]), dtype=work, device=f.device)
    for k, x in enumerate((a, b, f)):
        stack[k * n : (k + 1) * n].copy_(x)
    g, ang = _sobel_strength_angle(stack)
    ga, gb, gf = g[:n], g[n : 2 * n], g[2 * n :]
    aa, ab, af = ang[:n], ang[n : 2 * n], ang[2 * n :]
    qaf, qbf = _qabf_edge(ga, aa, gf, af), _qabf_edge(gb, ab, gf, af)
    num = qaf.mul_(ga).addcmul_(qbf, gb).sum((1, 2), dtype=torch.float64)
    return num / (ga + gb).sum((1, 2), dtype=torch.float64)


def _symmetric_border_(buf: torch.Tensor, p: int) -> torch.Tensor:
    """Fill a p-pixel border of (B, H + 2p, W + 2p) from its interior, repeating the edge sample
    (scipy.ndimage's 'reflect', numpy's 'symmetric': d c b a | a b c d | d c b a)."""
    buf[:, :p, p:-p].copy_(buf[:, p : 2 * p, p:-p].flip(1))
    buf[:, -p:, p:-p].copy_(buf[:, -2 * p : -p, p:-p].flip(1))
    buf[:, :, :p].copy_(buf[:, :, p : 2 * p].flip(2))
    buf[:, :, -p:].copy_(buf[:, :, -2 * p : -p].flip(2))
    return buf


def _ssim_from_moments(ux, uy, uxx, uyy, uxy, data_range: float, win: int) -> torch.Tensor:
    cov_norm = win**2 / (win**2 - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[:, pad:-pad, pad:-pad].mean((1, 2))


def _ssim_from_sums(sums: torch.Tensor, data_range: float, win: int) -> torch.Tensor:
    """SSIM(F, A) + SSIM(F, B) from exact integer window sums (8, B, h, w): F, A, B, FF, AA, BB,
    FA, FB, already cropped to the scored region.

    With n = win^2 and sums S, the means are S / n and the sample (co)variances
    (n S_xy - S_x S_y) / (n (n - 1)); those numerators are integers below 2**31, formed exactly in
    int32, and only the final ratio runs in float32 (rounding each term at 6e-8), summed in float64.
    """
    n = win * win
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = sums.to(torch.int32)
    sf, sff = s[0], s[3]
    pff = sf * sf
    vf = (sff * n).sub_(pff)
    total = torch.zeros(s.shape[1], dtype=torch.float64, device=s.device)
    for k in (1, 2):  # A, then B
        sx, sxx, sfx = s[k], s[3 + k], s[5 + k]
        pfx = sf * sx
        cov = (sfx * n).sub_(pfx).to(torch.float32).mul_(2.0 / (n * (n - 1))).add_(c2)
        num = pfx.to(torch.float32).mul_(2.0 / (n * n)).add_(c1).mul_(cov)
        pxx = sx * sx
        var = (sxx * n).sub_(pxx).add_(vf).to(torch.float32).mul_(1.0 / (n * (n - 1))).add_(c2)
        den = pxx.add_(pff).to(torch.float32).mul_(1.0 / (n * n)).add_(c1).mul_(var)
        total += num.div_(den).sum((-2, -1), dtype=torch.float64) / num[0].numel()
    return total


def ssim(f, a, b, data_range: float = 2.0) -> torch.Tensor:
    """SSIM: SSIM(F, A) + SSIM(F, B), each with scikit-image's ``structural_similarity``
    defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance, mean over the image
    without a 3-pixel border). ``data_range=2`` reproduces the published numbers (what old
    scikit-image inferred for float images); ``data_range=255`` is the standard variant."""
    f, a, b = _b(f), _b(a), _b(b)
    return _ssim_sum(f, a, b, data_range, exact_sums=all(_is_8bit(x) for x in (f, a, b)))


def _ssim_sum(f, a, b, data_range: float, exact_sums: bool) -> torch.Tensor:
    n, win = f.shape[0], 7
    p = win // 2
    h, w = f.shape[-2:]
    if min(h, w) < win:
        raise ValueError(f"a {h}x{w} image is too small for SSIM's {win}x{win} window")
    # F's moments are filtered once and shared by both pairs (8 filtered maps instead of 10),
    # written straight into one padded buffer for scipy's uniform_filter (mode 'reflect').
    # 8-bit images take float32 *sums* (window of ones, divided by 49 in float64 afterwards):
    # every product and sum is an integer below 2**24, so float32 holds them exactly, and the
    # filtering moves half the bytes.
    exact = exact_sums
    work = torch.float32 if exact else f.dtype
    buf = torch.empty((8, n, h + 2 * p, w + 2 * p), dtype=work, device=f.device)
    inner = buf[:, :, p:-p, p:-p]
    f_, a_, b_ = (x.to(work) for x in (f, a, b))
    for k, x in enumerate((f_, a_, b_)):
        inner[k].copy_(x)
    for k, (x, y) in enumerate(((f_, f_), (a_, a_), (b_, b_), (f_, a_), (f_, b_)), start=3):
        torch.mul(x, y, out=inner[k])
    box = torch.full((win,), 1.0 if exact else 1.0 / win, dtype=work, device=f.device)
    m = _separable_valid(_symmetric_border_(buf.flatten(0, 1), p), box).unflatten(0, (8, n))
    if exact:
        return _ssim_from_sums(m[:, :, p:-p, p:-p], data_range, win)
    return _ssim_from_moments(m[0], m[1], m[3], m[4], m[6], data_range, win) + _ssim_from_moments(
        m[0], m[2], m[3], m[5], m[7], data_range, win
    )


_SINGLE = {"EN": entropy, "SD": standard_deviation, "SF": spatial_frequency, "AG": average_gradient}
_PAIR = {"MI": mutual_information, "SCD": scd, "VIF": vif, "Qabf": qabf, "SSIM": ssim}


def batch_fusion_metrics(fused, a, b, metrics=None, ssim_data_range: float = 2.0) -> dict[str, torch.Tensor]:
    """All (or the selected) metrics for a batch: dict of (B,) float64 tensors.

    Args:
        fused, a, b: (B, H, W) or (B, 1, H, W) grey images on a 0-255 scale (any device).
        metrics: names from :data:`METRIC_NAMES` (default: all, in that order).
        ssim_data_range: see :func:`ssim`.
    """
    names = tuple(metrics) if metrics is not None else METRIC_NAMES
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRIC_NAMES}")
    f, a_, b_ = _b(fused), _b(a), _b(b)
    if not (f.shape == a_.shape == b_.shape):
        raise ValueError(f"shape mismatch: fused {tuple(f.shape)}, a {tuple(a_.shape)}, b {tuple(b_.shape)}")
    eight_bit = all(_is_8bit(x) for x in (f, a_, b_)) if {"MI", "SSIM", "Qabf"} & set(names) else False
    out = {}
    for name in names:
        if name in _SINGLE:
            out[name] = _SINGLE[name](f)
        elif name == "MI":  # all 8-bit: no per-image check; otherwise each image is looked at
            out[name] = _mutual_information(f, a_, b_, True if eight_bit else None)
        elif name == "SSIM":
            out[name] = _ssim_sum(f, a_, b_, ssim_data_range, exact_sums=eight_bit)
        elif name == "Qabf":
            out[name] = _qabf(f, a_, b_, eight_bit)
        else:
            out[name] = _PAIR[name](f, a_, b_)
    return out
