"""Two U-Fuser weight sets side by side on validation pairs: one row per pair type.

    python scripts/compare_weights.py ../shared/data/harvard ../shared/data/aanlib \\
        --split emma-runs/v21/split.json --a v2 --b v2.1 -o docs/images/v21_vs_v2.png

For each pair type, the pair shown is the one whose VIF gain (``b`` over ``a``) is the median of
that type's validation pairs, so the picture is typical rather than chosen. Columns: the
anatomical image, the other modality (luminance), fusion by ``a``, fusion by ``b`` (grey, 8-bit),
and their absolute difference (×4). Prints each shown pair's VIF, Qabf and SSIM under both sets
(on the luminance images, as the picture shows them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="+")
    p.add_argument("--split", required=True, help="split.json of the run whose validation pairs to use")
    p.add_argument("--a", required=True, help="first weight set (name or file)")
    p.add_argument("--b", required=True, help="second weight set (name or file)")
    p.add_argument("--output", "-o", required=True)
    args = p.parse_args(argv)

    from monai_emma.data.pairs import find_pairs, load_pair
    from monai_emma.evaluation import select_pairs, split_ids
    from monai_emma.fuse2d import network_fuser
    from monai_emma.io.png import save_montage
    from monai_emma.metrics import fusion_metrics
    from monai_emma.model_source import resolve_fuser

    pairs = select_pairs(find_pairs(args.root), split_ids(args.split))
    fusers = {name: network_fuser(resolve_fuser(weights=name)[0]) for name in (args.a, args.b)}
    rows = []
    for pair_type in sorted({p.pair for p in pairs}):
        scored = []
        for pair in (p for p in pairs if p.pair == pair_type):
            item = load_pair(pair)
            a, b = item["a"][0].numpy(), item["b"][0].numpy()  # luminance in [0, 1]
            fused = {n: np.clip(np.round(f(a, b) * 255), 0, 255) for n, f in fusers.items()}  # 8-bit grey
            scores = {n: fusion_metrics(img, np.round(a * 255), np.round(b * 255)) for n, img in fused.items()}
            scored.append((scores[args.b]["VIF"] - scores[args.a]["VIF"], pair, a, b, fused, scores))
        scored.sort(key=lambda s: s[0])
        gain, pair, a, b, fused, scores = scored[len(scored) // 2]
        print(
            f"{pair.id}: "
            + "; ".join(f"{n} VIF {s['VIF']:.3f} Qabf {s['Qabf']:.3f} SSIM {s['SSIM']:.3f}" for n, s in scores.items())
        )
        fa, fb = (fused[n].astype(np.float32) / 255 for n in (args.a, args.b))
        rows.append([a, b, fa, fb, np.clip(np.abs(fb - fa) * 4, 0, 1)])
    titles = ["anatomical", "other", args.a, args.b, f"|{args.b} - {args.a}| x4"]
    print(f"wrote {save_montage(rows, args.output, titles=titles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
