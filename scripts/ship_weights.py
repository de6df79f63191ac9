"""Copy a finished training run's weights into the package (``monai_emma/weights``) with a record.

    python scripts/ship_weights.py RUN_DIR --name v2 [--default] [--command "python pipelines/train.py ..."]

Writes ``emma_ufuser_<name>.pt``, ``emma_sensors_<name>.pt`` and adds the set to ``weights.json``
with every data root, the validation ids, recipe, epochs, wall time, hardware, seed and the
first/last losses. ``--default`` makes it the default set: the bundle's ``models/`` then link to
its files and the bundle's ``metadata.json`` records it (``shipped_weights``). Earlier sets stay
loadable by name.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _history(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="the set's name, e.g. v2 (never 'default')")
    parser.add_argument("--default", action="store_true", help="make this set the default (bundle models too)")
    parser.add_argument("--results", help="what the set scores, e.g. 'docs/results.md#shipped-weights-v2'")
    parser.add_argument("--command", default="", help="the command that produced the run (recorded)")
    parser.add_argument("--notes", default="")
    parser.add_argument("--hardware", help="what trained it (default: this machine's processor, CPU only)")
    parser.add_argument("--registry", help="where the run registered its models, e.g. models:/emma-ufuser/1")
    args = parser.parse_args(argv)
    if args.name == "default":
        parser.error("'default' is an alias; name the set (e.g. v2) and pass --default")
    run = args.run_dir
    cfg = json.loads((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    dest = ROOT / "monai_emma" / "weights"
    files = {"ufuser": f"emma_ufuser_{args.name}.pt", "sensors": f"emma_sensors_{args.name}.pt"}
    # state dicts only, saved fresh (no optimiser state, no pickled objects)
    torch.save(torch.load(run / "stage2_fuser" / "ufuser.pt", weights_only=True), dest / files["ufuser"])
    shutil.copyfile(run / "stage1_sensors" / "sensors.pt", dest / files["sensors"])
    record: dict = {"format": 2, "default": args.name, "sets": {}}
    info_path = dest / "weights.json"
    if info_path.exists():
        record = json.loads(info_path.read_text())
    roots = split["data"] if isinstance(split["data"], list) else [split["data"]]
    stages = {}
    for stage, sub in (("sensors", "stage1_sensors"), ("fuser", "stage2_fuser")):
        hist = _history(run / sub / f"history_{stage}.csv")
        stages[stage] = {
            "epochs": len(hist),
            "wall_minutes": round(sum(r["seconds"] for r in hist) / 60, 1),
            "first_epoch": {k: round(v, 5) for k, v in hist[0].items() if k.startswith(("train_", "val_"))},
            "last_epoch": {k: round(v, 5) for k, v in hist[-1].items() if k.startswith(("train_", "val_"))},
        }
    record["sets"][args.name] = {
        **files,
        "data": roots,
        "pair_counts": split.get("counts", {}),
        "train_pairs": len(split["train"]),
        "val_pairs": split["val"],
        "recipe": cfg["recipe"],
        "config": cfg,
        "stages": stages,
        "hardware": args.hardware or f"{platform.processor() or platform.machine()}, CPU only",
        "registry": args.registry or "",
        "torch": torch.__version__,
        "command": args.command,
        "notes": args.notes,
        "results": args.results or "",
    }
    if args.default:
        record["default"] = args.name
    info_path.write_text(json.dumps(record, indent=2) + "\n")
    if args.default:  # the bundle's models/ link to the default set: record it in metadata.json too
        models = ROOT / "bundles" / "emma" / "models"
        for link, kind in (("model.pt", "ufuser"), ("sensors.pt", "sensors")):
            (models / link).unlink(missing_ok=True)
            (models / link).symlink_to(Path("../../../monai_emma/weights") / files[kind])
        meta_path = ROOT / "bundles" / "emma" / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["shipped_weights"] = {
            "set": args.name,
            "data": roots,
            "train_pairs": len(split["train"]),
            "val_pairs": len(split["val"]),
            "recipe": cfg["recipe"],
            "sensor_epochs": stages["sensors"]["epochs"],
            "fuser_epochs": stages["fuser"]["epochs"],
            "fuser_lr": cfg["fuser"]["lr"],
            "alpha": cfg["alpha"],
            "prior_weight": cfg.get("prior_weight", 0.0),
            "prior_gradient_weight": cfg.get("prior_gradient_weight", 1.0),
            "seed": cfg["seed"],
            "wall_minutes": {k: v["wall_minutes"] for k, v in stages.items()},
            "hardware": record["sets"][args.name]["hardware"],
            "command": args.command,
            "registry": args.registry or "",
            "record": "monai_emma/weights/weights.json",
        }
        meta_path.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    print(f"shipped {args.name}: {[str(dest / f) for f in files.values()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
