"""Ship a finished training run's weights as a named set, with its record.

    python scripts/ship_weights.py RUN_DIR --name v2 [--default] [--validation EVAL/summary.json] \\
        [--command "python pipelines/train.py ..."] [--hardware "..."] [--registry "models:/emma-ufuser/3"]

RUN_DIR is a run folder of ``monai-emma train`` or the pipeline (``RunLayout``). The set is added to
``monai_emma/weights/weights.json`` with every data root, the validation ids, recipe, epochs, wall
time, hardware, seed, first/last losses and (``--validation``, a ``monai-emma evaluate --split``
summary) the validation scores. ``--default`` makes it the default: its files become the EMMA
bundle's ``models/model.pt`` and ``models/sensors.pt`` (the one copy in the repository), the
previous default's files move into ``monai_emma/weights/`` under their set name, and the bundle's
``metadata.json`` records the new default. Without ``--default`` the files go to
``monai_emma/weights/``. Earlier sets stay loadable by name.
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
sys.path.insert(0, str(ROOT))

from monai_emma.engines.stages import FUSER, SENSORS, STAGES, RunLayout  # noqa: E402

WEIGHTS = ROOT / "monai_emma" / "weights"
MODELS = ROOT / "bundles" / "emma" / "models"
BUNDLE_FILES = {"ufuser": "model.pt", "sensors": "sensors.pt"}


def _history(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _package_file(kind: str, name: str) -> str:
    return f"emma_{kind}_{name}.pt"


def _validation(summary_file: Path) -> dict:
    """EMMA's mean scores per group of a ``monai-emma evaluate`` summary."""
    summary = json.loads(summary_file.read_text())
    return {
        group: {metric: round(mean, 4) for metric, (mean, _std) in by_method["emma"].items()}
        for group, by_method in summary["summary"].items()
        if "emma" in by_method
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="the set's name, e.g. v2 (never 'default')")
    parser.add_argument("--default", action="store_true", help="make this set the default (the bundle's models)")
    parser.add_argument("--validation", type=Path, help="summary.json of `monai-emma evaluate ... --split`")
    parser.add_argument("--command", default="", help="the command that produced the run (recorded)")
    parser.add_argument("--notes", default="")
    parser.add_argument("--hardware", help="what trained it (default: this machine's processor, CPU only)")
    parser.add_argument("--registry", help="where the run registered its models, e.g. models:/emma-ufuser/1")
    parser.add_argument("--results", help="where the set's scores are discussed, e.g. docs/results.md#...")
    args = parser.parse_args(argv)
    if args.name.lower() == "default":
        parser.error("'default' is an alias; name the set (e.g. v2) and pass --default")
    run = RunLayout(args.run_dir)
    cfg = json.loads(run.config_file.read_text())
    split = json.loads(run.split_file.read_text())
    info_path = WEIGHTS / "weights.json"
    record: dict = json.loads(info_path.read_text()) if info_path.exists() else {"format": 2, "sets": {}}

    new_files = {"ufuser": run.weights(FUSER), "sensors": run.weights(SENSORS)}
    if args.default:
        old = record.get("default")
        if old and old != args.name:  # the previous default leaves the bundle for the package folder
            for kind, bundle_name in BUNDLE_FILES.items():
                if _same_file(MODELS / bundle_name, new_files[kind]):
                    # e.g. a fine-tune keeps its sensors: one copy, the old set refers to the new one's
                    record["sets"][old][kind] = f"set:{args.name}"
                    continue
                shutil.move(MODELS / bundle_name, WEIGHTS / _package_file(kind, old))
                record["sets"][old][kind] = _package_file(kind, old)
        entries = {kind: f"bundle:{bundle_name}" for kind, bundle_name in BUNDLE_FILES.items()}
        targets = {kind: MODELS / bundle_name for kind, bundle_name in BUNDLE_FILES.items()}
    else:
        entries = {kind: _package_file(kind, args.name) for kind in BUNDLE_FILES}
        targets = {kind: WEIGHTS / entries[kind] for kind in BUNDLE_FILES}
    # state dicts only, saved fresh (no optimiser state, no pickled objects)
    torch.save(torch.load(run.weights(FUSER), weights_only=True), targets["ufuser"])
    shutil.copyfile(run.weights(SENSORS), targets["sensors"])

    stages = {}
    for stage in STAGES:
        hist = _history(run.history(stage))
        stages[stage.name] = {
            "epochs": len(hist),
            "wall_minutes": round(sum(r["seconds"] for r in hist) / 60, 1),
            "first_epoch": {k: round(v, 5) for k, v in hist[0].items() if k.startswith(("train_", "val_"))},
            "last_epoch": {k: round(v, 5) for k, v in hist[-1].items() if k.startswith(("train_", "val_"))},
        }
    roots = split["data"] if isinstance(split["data"], list) else [split["data"]]
    record["sets"][args.name] = {
        **entries,
        "data": roots,
        "pair_counts": split.get("counts", {}),
        "train_pairs": len(split["train"]),
        "val_pairs": split["val"],
        "recipe": cfg["recipe"],
        "config": cfg,
        "stages": stages,
        "validation": _validation(args.validation) if args.validation else {},
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
    if args.default:
        meta_path = ROOT / "bundles" / "emma" / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["shipped_weights"] = {
            "set": args.name,
            "data": roots,
            "train_pairs": len(split["train"]),
            "val_pairs": len(split["val"]),
            "recipe": cfg["recipe"],
            "sensor_epochs": stages[SENSORS.name]["epochs"],
            "fuser_epochs": stages[FUSER.name]["epochs"],
            "fuser_lr": cfg["fuser"]["lr"],
            "alpha": cfg["alpha"],
            "prior_weight": cfg.get("prior_weight", 0.0),
            "prior_gradient_weight": cfg.get("prior_gradient_weight", 1.0),
            "prior_gradient_weight_by_modality": cfg.get("prior_gradient_weight_by_modality", {}),
            "seed": cfg["seed"],
            "wall_minutes": {k: v["wall_minutes"] for k, v in stages.items()},
            "validation": record["sets"][args.name]["validation"].get("ALL", {}),
            "hardware": record["sets"][args.name]["hardware"],
            "command": args.command,
            "registry": args.registry or "",
            "record": "monai_emma/weights/weights.json",
        }
        meta_path.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    print(f"shipped {args.name}{' (default)' if args.default else ''}: {[str(p) for p in targets.values()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
