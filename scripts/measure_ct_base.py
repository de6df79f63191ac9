"""What the shipped weights do with CT in the anatomical channel (PET/CT, SPECT/CT).

    python scripts/measure_ct_base.py --data ../shared/data/harvard ../shared/data/aanlib \\
        --split emma-runs/v21/split.json --json ct_base.json

The shipped U-Fuser learnt with MRI in channel 0. Two measurements, VIF, Qabf and SSIM (the
literature's definitions, :func:`monai_emma.metrics.fusion_metrics`) for EMMA and the mean, max
and Laplacian rules on the same inputs:

1. **The phantom** (synthetic head, 180 mm, 1.5 mm MRI voxels): CT + PET and CT + SPECT with the
   CT as the base (the fusion a PET/CT user runs), next to MRI + PET and MRI + SPECT of the same
   head, on the axial slices through the head (every fourth one).
2. **Development slices with CT in channel 0.** The atlas has no PET/CT pairs, but its MRI-CT
   pairs are co-registered: each validation pair is fused both ways, F(MRI, CT) as trained and
   F(CT, MRI) with the CT as the base. If the network tolerated a CT base, both orders would
   score alike (the metrics are symmetric in the two sources).

Prints tables (means over slices/pairs) and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("VIF", "Qabf", "SSIM")
RULES = ("mean", "max", "laplacian")


def _scores(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from monai_emma.metrics import fusion_metrics

    to8 = lambda x: np.round(np.clip(x, 0, 1) * 255.0)  # noqa: E731
    return fusion_metrics(to8(fused), to8(a), to8(b), list(METRICS))


def _rules(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    from monai_emma.baselines import get_rule

    x = torch.from_numpy(np.stack([a, b])[None].astype(np.float32))
    return {r: get_rule(r)(x)[0, 0].numpy() for r in RULES}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {m: round(float(np.mean([r[m] for r in rows])), 4) for m in METRICS}


def phantom(net) -> dict:
    from monai_emma.data.phantom import write_phantom_nifti
    from monai_emma.fusion import fuse_volumes
    from monai_emma.transforms.geometry import to_display

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_phantom_nifti(Path(tmp), head_mm=180.0, mri_spacing=1.5)
        for base, other in (("ct", "pet"), ("ct", "spect"), ("mri", "pet"), ("mri", "spect")):
            if base == "ct":  # the CT as the anatomical grid and channel 0
                r = fuse_volumes(files["ct"], files[other], model=net, modality=other, precision="fp32")
            else:
                r = fuse_volumes(files["mri"], files[other], model=net, modality=other, precision="fp32")
            stacks = [to_display(v, r.anatomical.affine) for v in (r.fused, r.anatomical_scaled, r.other_scaled)]
            f, a, b = (np.asarray(s, np.float32) for s in stacks)
            content = ((a > 0.05).mean(axis=(0, 1)) > 0.05) & ((b > 0.05).mean(axis=(0, 1)) > 0.02)
            keep = [k for k in range(f.shape[-1]) if content[k]]
            rows: dict[str, list] = {"emma": [], **{x: [] for x in RULES}}
            for k in keep[::4]:
                rows["emma"].append(_scores(f[..., k], a[..., k], b[..., k]))
                for name, img in _rules(a[..., k], b[..., k]).items():
                    rows[name].append(_scores(img, a[..., k], b[..., k]))
            out[f"{base.upper()} + {other.upper()}"] = {
                "slices": len(rows["emma"]),
                "anatomical_rule": r.notes and [n for n in r.notes if "anatomical" in n],
                **{name: _mean(v) for name, v in rows.items()},
            }
    return out


def swapped(net, roots: list[str], split: str | None) -> dict:
    from monai_emma.data.pairs import find_pairs, read_image
    from monai_emma.fuse2d import luminance, network_fuser

    pairs = [p for p in find_pairs(roots) if p.pair == "MRI_CT"]
    if split:
        ids = set(json.loads(Path(split).read_text())["val"])
        pairs = [p for p in pairs if p.id in ids]
    fuse = network_fuser(net, "cpu", precision="fp32")
    rows: dict[str, list] = {"emma F(MRI, CT)": [], "emma F(CT, MRI)": [], **{x: [] for x in RULES}}
    for p in pairs:
        mri, ct = luminance(read_image(p.a)), luminance(read_image(p.b))
        rows["emma F(MRI, CT)"].append(_scores(fuse(mri, ct), mri, ct))
        rows["emma F(CT, MRI)"].append(_scores(fuse(ct, mri), mri, ct))
        for name, img in _rules(mri, ct).items():
            rows[name].append(_scores(img, mri, ct))
    return {"pairs": len(pairs), **{name: _mean(v) for name, v in rows.items()}}


def _table(title: str, block: dict) -> str:
    lines = [f"**{title}**", "", "| method | VIF | Qabf | SSIM |", "|---|---|---|---|"]
    for name, v in block.items():
        if isinstance(v, dict):
            lines.append(f"| {name} | {v['VIF']:.3f} | {v['Qabf']:.3f} | {v['SSIM']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="*", default=[], help="Harvard-style roots with MRI_CT pairs (optional)")
    p.add_argument("--split", help="a run's split.json: only its validation pairs")
    p.add_argument("--weights", default="default", help="a shipped set by name")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    from monai_emma.networks import ufuser
    from monai_emma.weights import get_weights

    net = ufuser(weights=get_weights(args.weights)).eval()
    torch.set_grad_enabled(False)
    results = {"phantom": phantom(net)}
    for title, block in results["phantom"].items():
        print(_table(f"phantom {title} ({block['slices']} slices)", block), "\n")
    if args.data:
        results["swapped"] = swapped(net, args.data, args.split)
        print(_table(f"MRI-CT pairs, both channel orders ({results['swapped']['pairs']} pairs)", results["swapped"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
