"""Calibrate the fidelity report's thresholds on 2D development pairs.

    python scripts/calibrate_fidelity.py ../shared/data/harvard [--weights default] [--split RUN/split.json]

For every pair it scores the U-Fuser's fusion with the shipped pseudo-sensors
(:mod:`monai_emma.fidelity`), and two degraded fusions that keep only part of one modality: the
anatomical image plus 10 % of the other, and the other plus 10 % of the anatomical image. It
prints, per modality, the distribution of the recovery ``gain`` in good fusions and in fusions
that (mostly) lost that modality, and the threshold halfway between the 1st percentile of the
good and the 99th percentile of the lost ones when they are apart; when they overlap, the
threshold that makes the fewest mistakes (good fusions flagged plus lost ones passed). It also
prints both error rates at that threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    from monai_emma.data.pairs import find_pairs, read_image
    from monai_emma.evaluation import select_pairs, split_ids
    from monai_emma.fidelity import slice_fidelity
    from monai_emma.fuse2d import luminance, network_fuser
    from monai_emma.model_source import resolve_fuser
    from monai_emma.networks import pseudo_sensors
    from monai_emma.weights import get_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+")
    p.add_argument("--weights", default="default", help="shipped set (its U-Fuser and sensors) or a U-Fuser file")
    p.add_argument("--sensors", default="default", help="shipped set of the pseudo-sensors")
    p.add_argument("--split", help="only the validation pairs of this split.json")
    p.add_argument("--score", default="gain", choices=["gain", "structure", "error"])
    p.add_argument("--save", help="write the scores per modality (good and lost) to this JSON file")
    args = p.parse_args(argv)
    pairs = find_pairs(args.roots)
    if args.split:
        pairs = select_pairs(pairs, split_ids(args.split))
    fuse = network_fuser(resolve_fuser(weights=args.weights)[0])
    bank = pseudo_sensors(weights=get_weights(args.sensors, "sensors"))
    good: dict[str, list[float]] = {}
    lost: dict[str, list[float]] = {}
    key = args.score
    for pair in tqdm(pairs, desc="pairs"):
        a_img, b_img = read_image(pair.a), read_image(pair.b)
        a, b = luminance(a_img), luminance(b_img)
        mods = (pair.a_modality, pair.b_modality)
        for name, fused in (("emma", fuse(a, b)), ("a only", 0.9 * a + 0.1 * b), ("b only", 0.9 * b + 0.1 * a)):
            scores = slice_fidelity(np.clip(fused, 0, 1), a, b, mods, bank)["scores"]
            for m, s in scores.items():
                lost_here = (name == "a only" and m == mods[1]) or (name == "b only" and m == mods[0])
                if name == "emma":
                    good.setdefault(m, []).append(s[key])
                elif lost_here:
                    lost.setdefault(m, []).append(s[key])
    if args.save:
        Path(args.save).write_text(json.dumps({"good": good, "lost": lost}))
    print(
        "| modality | good fusions: min / 1st pct / median | lost: median / 99th pct / max | threshold "
        "| good flagged | lost passed |"
    )
    print("|---|---|---|---|---|---|")
    for m in sorted(good):
        g, x = np.asarray(good[m]), np.asarray(lost.get(m, [np.nan]))
        t = threshold(g, x)
        print(
            f"| {m} | {g.min():.3f} / {np.percentile(g, 1):.3f} / {np.median(g):.3f} "
            f"| {np.median(x):.3f} / {np.percentile(x, 99):.3f} / {x.max():.3f} | {t:.2f} "
            f"| {np.mean(g < t):.1%} | {np.mean(x >= t):.1%} |"
        )
    return 0


def threshold(good: np.ndarray, lost: np.ndarray) -> float:
    """Halfway between the 1st percentile of ``good`` and the 99th of ``lost`` when the first is
    higher; otherwise the value with the fewest mistakes (good below it plus lost at or above it)."""
    lo, hi = np.percentile(good, 1), np.percentile(lost, 99)
    if lo > hi:
        return float((lo + hi) / 2)
    candidates = np.unique(np.round(np.concatenate([good, lost]), 3))
    mistakes = [np.sum(good < t) + np.sum(lost >= t) for t in candidates]
    return float(candidates[int(np.argmin(mistakes))])


if __name__ == "__main__":
    sys.exit(main())
