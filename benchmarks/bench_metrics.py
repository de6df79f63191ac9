"""Fusion metrics speed: one ``fusion_metrics`` call per 256x256 pair, first call included.

    python benchmarks/bench_metrics.py [--pairs 21] [--reference-dir ../MMIF-CDDFuse] [--warm-up]

With ``--reference-dir`` (a checkout of Zhaozixiang1228/MMIF-CDDFuse; needs opencv, scipy,
scikit-image, scikit-learn) the reference evaluator is imported *first* (so this process holds its
OpenMP and BLAS runtimes too, as a user's process may) and the two are called alternately on the
same pairs, the reference's SSIM given data_range=2; the largest relative difference is printed.
The first ``fusion_metrics`` call of the process is timed as it comes (no warm-up) unless
``--warm-up`` runs ``warm_up()`` before it, as ``monai-emma evaluate`` does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def _pairs(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    harvard = ROOT.parent / "shared" / "data" / "harvard"
    rng = np.random.default_rng(0)
    out = []
    if harvard.is_dir():
        from monai_emma.metrics import read_gray

        for mod in ("CT", "PET", "SPECT"):
            for p in sorted((harvard / f"MRI_{mod}" / mod).glob("*.png"))[: max(1, n // 3)]:
                a, b = read_gray(harvard / f"MRI_{mod}" / "MRI" / p.name), read_gray(p)
                out.append((np.round((a + b) / 2), a, b))
    while len(out) < n:
        a, b = (np.round(rng.random((256, 256)) * 255).astype(np.float32) for _ in range(2))
        out.append((np.maximum(a, b), a, b))
    return out[:n]


def _reference(ref_dir: str | None):
    if not ref_dir:
        return None
    sys.path.insert(0, ref_dir)
    try:
        import skimage.metrics
        from utils import Evaluator as ev_module  # type: ignore[import-not-found]
    except ImportError as err:
        print(f"[skip] reference evaluator not importable: {err}")
        return None
    original = skimage.metrics.structural_similarity
    ev_module.ssim = lambda x, y: original(x, y, data_range=2)
    ev = ev_module.Evaluator
    return lambda f, a, b: {
        "EN": ev.EN(f),
        "SD": ev.SD(f),
        "SF": ev.SF(f),
        "AG": ev.AG(f),
        "MI": ev.MI(f, a, b),
        "SCD": ev.SCD(f, a, b),
        "VIF": ev.VIFF(f, a, b),
        "Qabf": ev.Qabf(f, a, b),
        "SSIM": ev.SSIM(f, a, b),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--reference-dir")
    parser.add_argument("--warm-up", action="store_true", help="call warm_up() before the first pair")
    args = parser.parse_args(argv)
    ref = _reference(args.reference_dir)
    t = time.perf_counter()
    from monai_emma.metrics import fusion_metrics, warm_up

    print(f"import monai_emma.metrics: {time.perf_counter() - t:.2f} s")
    if args.warm_up:
        t = time.perf_counter()
        warm_up()
        print(f"warm_up(): {time.perf_counter() - t:.2f} s")
    pairs = _pairs(args.pairs)
    times, rtimes, worst = [], [], 0.0
    for f, a, b in pairs:  # alternate: ours, reference, ours, reference, ...
        t = time.perf_counter()
        mine = fusion_metrics(f, a, b)
        times.append(time.perf_counter() - t)
        if ref is not None:
            t = time.perf_counter()
            r = ref(f, a, b)
            rtimes.append(time.perf_counter() - t)
            worst = max(worst, max(abs(mine[k] - r[k]) / max(abs(r[k]), 1e-12) for k in NAMES))
    med = statistics.median(times)
    print(f"monai-emma: first call {times[0] * 1e3:.0f} ms, median {med * 1e3:.0f} ms per pair")
    out = {"first_ms": times[0] * 1e3, "median_ms": med * 1e3}
    if rtimes:
        rmed = statistics.median(rtimes)
        out.update(
            reference_median_ms=rmed * 1e3,
            speedup_median=rmed / med,
            speedup_first_call=rmed / times[0],
            speedup_total=sum(rtimes) / sum(times),
            max_relative_difference=worst,
        )
        print(f"reference: first call {rtimes[0] * 1e3:.0f} ms, median {rmed * 1e3:.0f} ms per pair")
        print(
            f"speed-up: {out['speedup_median']:.1f}x (medians), {out['speedup_first_call']:.1f}x (our first call "
            f"against the reference median), {out['speedup_total']:.1f}x (total time, all calls); "
            f"max relative difference {worst:.1e}"
        )
    return out


if __name__ == "__main__":
    main()
