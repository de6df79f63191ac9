"""Where does a fusion hide the dimmer source? Partial correlations and a picture.

    python scripts/dimmer_source.py ../shared/data/harvard ../shared/data/aanlib --split RUN/split.json \\
        --model v2=RUN/stage2_fuser/ufuser.pt --model v1=v1 \\
        --output docs/images/dimmer_source

Over the pixels where one source is clearly dimmer than the other (by ``--margin`` grey levels,
and not background), the max rule shows only the brighter source: whatever structure the dimmer
one has there is lost. For each fused image F this reports the partial correlation of F with the
dimmer source given the brighter one, r(F, dim | bright): 0 when F carries nothing of the dimmer
source beyond what the brighter one explains (the max rule, exactly), higher when it keeps it.
Two directions per pair: the anatomical image (MRI) under the other modality, and the other
modality under the MRI. Grey values are the reference evaluator's (Y of the written 8-bit image).

Writes ``dimmer_source.md`` (per pair type, mean over pairs, and the share of brain pixels in each
region) and ``dimmer_source.png`` (for one pair per type: crops of the sources and the fusions
where the MRI is dimmest, the region outlined).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def partial_correlation(f: np.ndarray, dim: np.ndarray, bright: np.ndarray) -> float:
    """r(f, dim | bright) over the given pixels (1-D arrays); 0 when undefined."""
    x = np.stack([np.ones_like(bright), bright], 1)

    def residual(v):
        coef, *_ = np.linalg.lstsq(x, v, rcond=None)
        return v - x @ coef

    rf, rd = residual(f), residual(dim)
    den = np.sqrt((rf**2).sum() * (rd**2).sum())
    return float((rf * rd).sum() / den) if den > 1e-9 else 0.0


def regions(a: np.ndarray, b: np.ndarray, margin: float, floor: float = 10.0) -> dict[str, np.ndarray]:
    """Masks where the anatomical image ``a`` is dimmer (``a_dim``) and where ``b`` is dimmer."""
    return {
        "a_dim": (b - a > margin) & (a > floor),
        "b_dim": (a - b > margin) & (b > floor),
    }


def _crop_box(mask: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window holding most of ``mask``."""
    h, w = mask.shape
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, corner = -1, (0, 0)
    for y in range(0, h - size + 1, 4):
        for x in range(0, w - size + 1, 4):
            s = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
            if s > best:
                best, corner = s, (y, x)
    return corner


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    from monai_emma.data.pairs import find_pairs, read_image
    from monai_emma.evaluation import classical_fusion_gray, grey_of, select_pairs, split_ids
    from monai_emma.fuse2d import fuse_slice_pair, network_fuser
    from monai_emma.io.png import save_montage
    from monai_emma.metrics import read_gray
    from monai_emma.model_source import resolve_fuser

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+")
    p.add_argument("--split", help="score the validation pairs of this split.json only")
    p.add_argument(
        "--model", action="append", default=[], metavar="LABEL=WEIGHTS", help="U-Fuser file or shipped set to compare"
    )
    p.add_argument("--rules", default="max,mean,laplacian", help="classical rules to compare")
    p.add_argument("--margin", type=float, default=25.0, help="grey levels by which a source must be dimmer")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--zoom", type=int, default=2, help="enlarge the crops (nearest neighbour)")
    p.add_argument("--output", default="dimmer-source")
    args = p.parse_args(argv)

    pairs = find_pairs(args.roots)
    if args.split:
        pairs = select_pairs(pairs, split_ids(args.split))
    models = {}
    for item in args.model:
        label, _, path = item.partition("=")
        models[label] = network_fuser(resolve_fuser(weights=path)[0])
    rules = [r for r in args.rules.split(",") if r]
    methods = list(models) + rules
    scores: dict[str, dict[str, dict[str, list[float]]]] = {}
    share: dict[str, dict[str, list[float]]] = {}
    examples: dict[str, tuple[float, list]] = {}
    for pair in tqdm(pairs, desc="pairs"):
        a, b = read_gray(pair.a), read_gray(pair.b)
        a_img, b_img = read_image(pair.a), read_image(pair.b)
        fused = {m: grey_of(fuse_slice_pair(fuse, a_img, b_img)) for m, fuse in models.items()}
        fused.update({r: classical_fusion_gray(r, a, b) for r in rules})
        masks = regions(a, b, args.margin)
        brain = (a > 10) | (b > 10)
        for name, mask in masks.items():
            share.setdefault(pair.pair, {}).setdefault(name, []).append(mask.sum() / max(brain.sum(), 1))
            if mask.sum() < 50:
                continue
            dim, bright = (a, b) if name == "a_dim" else (b, a)
            for m in methods:
                r = partial_correlation(fused[m][mask], dim[mask], bright[mask])
                scores.setdefault(pair.pair, {}).setdefault(m, {}).setdefault(name, []).append(r)
        size = masks["a_dim"].sum()
        if size > examples.get(pair.pair, (0, None))[0]:
            y, x = _crop_box(masks["a_dim"], args.crop)
            win = (slice(y, y + args.crop), slice(x, x + args.crop))
            outline = masks["a_dim"][win]
            edge = outline ^ np.roll(outline, 1, 0) | outline ^ np.roll(outline, 1, 1)
            a_marked = np.repeat(a[win][..., None] / 255.0, 3, 2)
            a_marked[edge] = (1.0, 0.8, 0.0)
            row = [a_marked, b[win] / 255.0] + [fused[m][win] / 255.0 for m in methods]
            row = [np.repeat(np.repeat(im, args.zoom, 0), args.zoom, 1) for im in row]
            examples[pair.pair] = (size, row + [pair.id])

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| pair type | region (share of brain pixels) | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for pair_type in sorted(scores):
        for name, label in (("a_dim", "MRI dimmer"), ("b_dim", "other dimmer")):
            cells = []
            for m in methods:
                vals = scores[pair_type].get(m, {}).get(name, [])
                cells.append(f"{np.mean(vals):.3f}" if vals else "–")
            frac = 100 * np.mean(share[pair_type][name])
            lines.append(f"| {pair_type} | {label} ({frac:.0f} %) | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "dimmer_source.md").write_text(table)
    print(table)
    rows = [examples[k][1][:-1] for k in sorted(examples)]
    save_montage(rows, out / "dimmer_source.png", titles=["MRI (region)", "other"] + methods)
    print("examples:", ", ".join(examples[k][1][-1] for k in sorted(examples)))
    print(f"wrote {out / 'dimmer_source.md'} and {out / 'dimmer_source.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
