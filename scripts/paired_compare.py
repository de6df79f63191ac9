"""Paired comparison of EMMA weight sets scored by ``monai-emma evaluate`` on the same pairs.

    python scripts/paired_compare.py emma-eval/v3 emma-eval/v4B emma-eval/v4C \\
        --reference emma-eval/v3 --metrics VIF,Qabf,SSIM

The first folder is the base; every other folder's ``emma`` rows are matched to the base's pair
by pair (same ``pair`` and ``id``). For each pair type and pooled, prints the means, the relative
change and the paired t statistic (mean difference over its standard error). With
``--reference`` (a folder that also scored the rules and learned peers on the same pairs), each
set is also set against the best classical rule, the better learned peer and the max rule per
pair type: the margins issue 32 targets.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

RULES = ("mean", "laplacian", "wavelet")
PEERS = ("ifcnn", "densefuse")


def load(folder: str | Path) -> dict[str, dict[tuple[str, str], dict[str, float]]]:
    """``{method: {(pair type, id): {metric: value}}}`` of an evaluate folder's metrics.csv."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{folder}: no metrics.csv (run monai-emma evaluate --output {folder})")
    out: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(dict)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row["pair"], f"{row['source']}/{row['id']}", row.get("study", ""))
            out[row["method"]][key] = {k: float(v) for k, v in row.items() if _is_number(v) and k != "id"}
    return dict(out)


def _is_number(v: str) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def paired(base: list[float], other: list[float]) -> tuple[float, float, float, float]:
    """``(mean base, mean other, relative change, paired t)``; t is inf when every difference is equal."""
    n = len(base)
    d = [o - b for b, o in zip(base, other, strict=True)]
    md = sum(d) / n
    var = sum((x - md) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    t = md / math.sqrt(var / n) if var > 0 else (math.inf if md else 0.0)
    mb = sum(base) / n
    return mb, sum(other) / n, md / mb if mb else 0.0, t


def groups(keys, by_study: bool = False) -> dict[str, list]:
    """Keys grouped by pair type (or by study of a datalist evaluation), plus ``ALL``."""
    by: dict[str, list] = defaultdict(list)
    for key in sorted(keys):
        by[key[2] if by_study else key[0]].append(key)
    return {**by, "ALL": sorted(keys)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="evaluate folder of the base weights (emma rows)")
    p.add_argument("others", nargs="+", help="evaluate folders of the candidates")
    p.add_argument("--reference", help="evaluate folder with the rules and peers on the same pairs")
    p.add_argument("--metrics", default="VIF,Qabf,SSIM,MI")
    p.add_argument("--by-study", action="store_true", help="group a datalist evaluation by study")
    p.add_argument("--wins", action="store_true", help="with --by-study: only count the studies each metric rose in")
    args = p.parse_args(argv)
    metrics = args.metrics.split(",")
    base = load(args.base)["emma"]
    for folder in args.others:
        other = load(folder)["emma"]
        keys = set(base) & set(other)
        if len(keys) != len(base):
            raise SystemExit(f"{folder}: scored {len(keys)} of the base's {len(base)} pairs")
        print(f"\n{folder} against {args.base} ({len(keys)} pairs)")
        if args.wins:
            by = {g: ks for g, ks in groups(keys, True).items() if g != "ALL"}
            for m in metrics:
                up = sum(sum(other[k][m] - base[k][m] for k in ks) > 0 for ks in by.values())
                print(f"{m}: higher in {up} of {len(by)} studies")
            continue
        print("| pair type | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
        for group, ks in groups(keys, args.by_study).items():
            cells = []
            for m in metrics:
                mb, mo, rel, t = paired([base[k][m] for k in ks], [other[k][m] for k in ks])
                cells.append(f"{mb:.4f} → {mo:.4f} ({rel:+.2%}, t {t:+.1f})")
            print(f"| {group} | " + " | ".join(cells) + " |")
    if args.reference:
        ref = load(args.reference)
        sets = {args.base: base} | {f: load(f)["emma"] for f in args.others}
        print("\nmargins per pair type (relative difference of the means)")
        print("| set | pair type | vs best rule VIF/Qabf/SSIM | vs better peer VIF/Qabf/SSIM | vs max VIF/Qabf/SSIM |")
        print("|---|---|---|---|---|")
        for name, scores in sets.items():
            for group, ks in groups(scores, args.by_study).items():
                row = []
                for methods in (RULES, PEERS, ("max",)):
                    cell = []
                    for m in ("VIF", "Qabf", "SSIM"):
                        ours = sum(scores[k][m] for k in ks) / len(ks)
                        best = (
                            max(sum(ref[x][k][m] for k in ks) / len(ks) for x in methods if x in ref)
                            if any(x in ref for x in methods)
                            else float("nan")
                        )
                        cell.append(f"{ours / best - 1:+.2%}")
                    row.append(" / ".join(cell))
                print(f"| {name} | {group} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
