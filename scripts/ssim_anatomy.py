"""Where the fusion SSIM is won and lost: SSIM(F, A) and SSIM(F, B) split by the kind of window.

    python scripts/ssim_anatomy.py ../shared/data/harvard ../shared/data/aanlib \\
        --split emma-runs/v4A/split.json --pair MRI_CT --weights v3 [--weights FILE ...]

SSIM as published (scikit-image defaults with ``data_range=2`` on 0-255 images) has stabilising
constants near zero, so a 7x7 window in which a source is exactly flat in 8 bits scores 1 against
that source only when the fused window is exactly flat too, and about 0 otherwise. This script
scores the validation pairs of one pair type (EMMA as ``monai-emma evaluate`` scores it: the grey
of the 8-bit output, zero where both sources are empty; the max and Laplacian rules on the grey
sources) and prints each source's SSIM summed over four kinds of window: both sources flat, only
A flat, only B flat, neither. Each row's ``share`` is the fraction of windows of that kind; the
contributions of a method add up to its SSIM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="+")
    p.add_argument("--split", required=True, help="split.json of the run whose validation pairs to use")
    p.add_argument("--pair", required=True, help="pair type, e.g. MRI_CT")
    p.add_argument("--weights", action="append", default=[], help="EMMA weight set or file (repeatable)")
    args = p.parse_args(argv)

    from monai_emma.data.pairs import find_pairs
    from monai_emma.evaluation import _sources, classical_fusion_gray, grey_of, select_pairs, split_ids
    from monai_emma.fuse2d import fuse_slice_pair, network_fuser
    from monai_emma.losses import ssim_map, window_variance
    from monai_emma.model_source import resolve_fuser

    pairs = [q for q in select_pairs(find_pairs(args.root), split_ids(args.split)) if q.pair == args.pair]
    if not pairs:
        raise SystemExit(f"{args.split}: no validation pairs of type {args.pair}")
    fusers = {w: network_fuser(resolve_fuser(weights=w)[0], "cpu", zero_empty=True) for w in args.weights}
    totals: dict[tuple[str, str], np.ndarray] = {}
    as_tensor = lambda x: torch.as_tensor(np.asarray(x, np.float64))[None, None]  # noqa: E731
    for pair in pairs:
        a_img, b_img, a, b = _sources(pair)
        fused = {w: grey_of(fuse_slice_pair(f, a_img, b_img)) for w, f in fusers.items()}
        fused |= {rule: classical_fusion_gray(rule, a, b) for rule in ("max", "laplacian")}
        ta, tb = as_tensor(a), as_tensor(b)
        fa, fb = window_variance(ta) < 1e-9, window_variance(tb) < 1e-9  # exactly flat in 8 bits
        kinds = {"both flat": fa & fb, "A flat only": fa & ~fb, "B flat only": ~fa & fb, "neither": ~fa & ~fb}
        for method, image in fused.items():
            tf = as_tensor(np.round(np.clip(image, 0, 255)))
            sa, sb = ssim_map(tf, ta, 2.0), ssim_map(tf, tb, 2.0)
            n = sa.numel()
            for kind, mask in kinds.items():
                row = [float(sa[mask].sum()) / n, float(sb[mask].sum()) / n, float(mask.sum()) / n]
                totals[method, kind] = totals.get((method, kind), np.zeros(3)) + row
    k = len(pairs)
    print(f"{args.pair}, {k} validation pairs: SSIM(F, A) and SSIM(F, B) summed over each kind of window")
    print("| method | window | share | SSIM(F, A) | SSIM(F, B) | sum |")
    print("|---|---|---|---|---|---|")
    for (method, kind), (sa, sb, share) in totals.items():
        print(f"| {method} | {kind} | {share / k:.3f} | {sa / k:.4f} | {sb / k:.4f} | {(sa + sb) / k:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
