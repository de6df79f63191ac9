"""``monai-emma evaluate``: fuse a paired dataset with EMMA and the classical rules, score, report.

Scoring follows the reference evaluator (see ``docs/metrics.md``): sources are read as OpenCV
grey images (rounded Y); the classical rules run on those grey sources and are rounded to 8 bits;
EMMA's result is the 8-bit image ``fuse-folder`` writes (colour recombined for pseudo-colour
PET/SPECT), scored on its grey (Y) image.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from monai_emma.data.pairs import SlicePair, StudySlice, data_roots, find_pairs, read_image
from monai_emma.fuse2d import fuse_slice_pair, network_fuser
from monai_emma.metrics import METRIC_NAMES, fusion_metrics, read_gray
from monai_emma.networks.densefuse import densefuse_fuse_gray, load_densefuse
from monai_emma.networks.ifcnn import ifcnn_fuse_gray, load_ifcnn
from monai_emma.studies import Datalist

#: each learned peer: (loader taking a snapshot path or None, fuse(net, a_gray, b_gray, device) -> uint8)
_PEER_NETWORKS = {"ifcnn": (load_ifcnn, ifcnn_fuse_gray), "densefuse": (load_densefuse, densefuse_fuse_gray)}

__all__ = [
    "METHODS",
    "PEERS",
    "EvaluationResult",
    "evaluate",
    "select_pairs",
    "split_ids",
    "grey_of",
    "classical_fusion_gray",
]

METHODS = ("emma", "mean", "max", "laplacian", "wavelet")
PEERS = ("ifcnn", "densefuse")  # published learned networks, run from their released weights (not shipped)


def grey_of(image: np.ndarray) -> np.ndarray:
    """Grey value of an 8-bit (H, W) or RGB (H, W, 3) image as the reference reads a PNG of it."""
    import cv2

    if image.ndim == 2:
        return image.astype(np.float32)
    bgr = np.ascontiguousarray(image[..., ::-1]).astype(np.float32)
    return np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def classical_fusion_gray(rule: str, a_gray: np.ndarray, b_gray: np.ndarray) -> np.ndarray:
    """A classical rule on grey 0-255 sources, rounded and clipped to 8 bits (float32 result).

    ``mean`` is round((A+B)/2) and ``max`` max(A, B) exactly; ``laplacian`` and ``wavelet`` run on
    [0, 1] in float64 (:mod:`monai_emma.baselines`)."""
    from monai_emma.baselines import get_rule

    if rule == "mean":
        return np.round((a_gray.astype(np.float64) + b_gray) / 2).astype(np.float32)
    if rule == "max":
        return np.maximum(a_gray, b_gray).astype(np.float32)
    x = torch.from_numpy(np.stack([a_gray, b_gray]).astype(np.float64) / 255.0)[None]
    fused = get_rule(rule)(x)[0, 0].numpy() * 255.0
    return np.clip(np.round(fused), 0, 255).astype(np.float32)


@dataclass
class EvaluationResult:
    """Per-pair scores and per-pair-type summaries."""

    rows: list[dict] = field(default_factory=list)  # one per (pair, method)
    summary: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def _groups(row: dict) -> list[str]:
    """The summary groups a row belongs to: its pair type, ``ALL``, with several roots also
    ``<source>/<pair type>`` and ``<source>``, and for a study's slice its study (``MRI_CT/case2``)."""
    groups = [row["pair"], "ALL"]
    if row.get("source"):
        groups += [f"{row['source']}/{row['pair']}", row["source"]]
    if row.get("study"):
        groups.append(row["study"])
    return groups


def _summarise(rows: list[dict], methods: Sequence[str]) -> dict:
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    pair_types = sorted({r["pair"] for r in rows})
    sources = sorted({r["source"] for r in rows if r.get("source")})
    by_source = [f"{s}/{p}" for s in sources for p in pair_types] + sources
    studies = list(dict.fromkeys(r["study"] for r in rows if r.get("study")))  # in datalist order
    for g in pair_types + ["ALL"] + by_source + studies:
        scores = {}
        for m in methods:
            sel = [r for r in rows if r["method"] == m and g in _groups(r)]
            if sel:
                scores[m] = {
                    k: (float(np.mean([r[k] for r in sel])), float(np.std([r[k] for r in sel]))) for k in METRIC_NAMES
                }
        if scores:  # e.g. a root without MRI-PET pairs has no "<root>/MRI_PET" group
            out[g] = scores
    return out


def _markdown(summary: dict, methods: Sequence[str]) -> str:
    lines = [
        "# Fusion metrics",
        "",
        "Mean ± std per pair type; **bold** = best per column. SSIM uses data_range=2 (as published).",
        "",
    ]
    for group, by_method in summary.items():
        lines += [f"## {group if group != 'ALL' else 'All pairs (each pair weighs the same)'}", ""]
        lines.append("| method | " + " | ".join(METRIC_NAMES) + " |")
        lines.append("|---|" + "---|" * len(METRIC_NAMES))
        best = {k: max(v[k][0] for v in by_method.values()) for k in METRIC_NAMES}
        for m in methods:
            if m not in by_method:
                continue
            cells = []
            for k in METRIC_NAMES:
                mean, std = by_method[m][k]
                cell = f"{mean:.3f} ± {std:.3f}"
                cells.append(f"**{cell}**" if np.isclose(mean, best[k]) else cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _print_table(summary: dict, methods: Sequence[str], skip: Sequence[str] = ()) -> None:
    for group, by_method in summary.items():
        if group in skip:  # e.g. one table per study: those go to the files only
            continue
        print(f"\n{group}")
        print(f"{'method':<10}" + "".join(f"{k:>11}" for k in METRIC_NAMES))
        best = {k: max(v[k][0] for v in by_method.values()) for k in METRIC_NAMES}
        for m in methods:
            if m in by_method:
                cells = []
                for k in METRIC_NAMES:
                    mean = by_method[m][k][0]
                    cells.append(f"{mean:>10.3f}{'*' if np.isclose(mean, best[k]) else ' '}")
                print(f"{m:<10}" + "".join(cells))


def select_pairs(pairs: Sequence[SlicePair], ids: Sequence[str]) -> list[SlicePair]:
    """The pairs whose ids are listed, in the order found.

    Raises:
        PairDataError: an id matches no pair (naming up to five of them).
    """
    from monai_emma.data.pairs import PairDataError

    wanted = set(ids)
    missing = sorted(wanted - {p.id for p in pairs})
    if missing:
        raise PairDataError(
            f"{len(missing)} listed pair(s) not found under the given data roots: {', '.join(missing[:5])} "
            "(give the same roots, in the same order, as the training run)"
        )
    return [p for p in pairs if p.id in wanted]


def split_ids(split_file: str | os.PathLike, part: str = "val") -> list[str]:
    """The ``part`` ids (``val`` or ``train``) of a run's ``split.json``.

    Raises:
        PairDataError: the file is missing or is not a split record.
    """
    from monai_emma.data.pairs import PairDataError

    path = Path(split_file)
    try:
        record = json.loads(path.read_text())
        return list(record[part])
    except FileNotFoundError as err:
        raise PairDataError(f"{path}: no such split file") from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PairDataError(f"{path}: not a split record (expected JSON with a {part!r} list of pair ids)") from err


def _sources(pair: SlicePair | StudySlice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(a_img, b_img, a_gray, b_gray)``: both images (C, H, W) on their 0-255 scale and their grey
    values as the reference evaluator reads them. A study's slice is scored as the 8-bit images a
    PNG of each channel would hold."""
    if isinstance(pair, StudySlice):
        eight = np.round(np.clip(np.asarray(pair.image, np.float32), 0, 1) * 255)
        return eight[0:1], eight[1:2], eight[0], eight[1]
    return read_image(pair.a), read_image(pair.b), read_gray(pair.a), read_gray(pair.b)


def evaluate(
    root: str | os.PathLike | Sequence[str | os.PathLike] | Datalist,
    methods: Sequence[str] = METHODS,
    weights: str | os.PathLike | None = None,
    output: str | os.PathLike | None = "emma-eval",
    grid_pairs: int = 4,
    device: str = "cpu",
    progress: bool = True,
    net: torch.nn.Module | None = None,
    mlflow_uri: str | None = None,
    ids: Sequence[str] | None = None,
    zero_empty: bool = True,
    precision: str = "fp32",
    peer_weights: Mapping[str, str | os.PathLike | None] | None = None,
    key: str = "validation",
) -> EvaluationResult:
    """Fuse every pair under ``root`` with each method, score it, and write reports to ``output``.

    Args:
        root: Harvard- or IVF-style folder, or several (see :func:`monai_emma.data.pairs.find_pairs`);
            with several, the summary also has one group per root and per root and pair type. Or a
            :class:`~monai_emma.studies.Datalist` (or the path of a datalist's ``.json`` file): the
            axial slices with foreground of the studies of its list ``key``, scored per slice (ids
            ``MRI_CT/case2/z017``), summarised per pair type, over all, and per study (preprocessed
            studies cached in the datalist's ``cache_dir``, else ``<output>/cache``).
        methods: any of ``emma``, ``mean``, ``max``, ``laplacian``, ``wavelet``, and the learned
            peers ``ifcnn`` (IFCNN-MAX, :mod:`monai_emma.networks.ifcnn`) and ``densefuse``
            (:mod:`monai_emma.networks.densefuse`), run on the grey sources like the rules.
        weights: U-Fuser state dict for ``emma``, or a shipped set by name (default: the shipped default).
        output: folder for ``metrics.csv``, ``summary.json``, ``summary.md``, ``grid.png`` (None: no files).
        grid_pairs: pairs shown in the comparison grid (0: no grid).
        net: a U-Fuser to use instead of ``weights``.
        mlflow_uri: log the summary and files to this MLflow tracking URI.
        ids: score only these pair ids (e.g. a run's validation pairs, :func:`split_ids`); with a
            datalist, study ids (``MRI_CT/case2``).
        zero_empty: EMMA's output is 0 where both sources are (as ``fuse-folder`` writes it).
        precision: EMMA's inference precision, ``"fp32"`` (default: the reference scores), ``"bf16"``
            or ``"auto"``.
        peer_weights: released snapshot per peer, e.g. ``{"ifcnn": "IFCNN-MAX.pth"}`` (default: the
            environment variables ``EMMA_IFCNN_WEIGHTS``, ``EMMA_DENSEFUSE_WEIGHTS``).
        key: the datalist's list to score (default ``validation``).
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in METHODS + PEERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS + PEERS)}")
    # peers load before any pair is read: a missing snapshot fails at once
    peers = {m: _PEER_NETWORKS[m][0]((peer_weights or {}).get(m)) for m in methods if m in _PEER_NETWORKS}
    if isinstance(root, str | os.PathLike) and str(root).lower().endswith(".json"):
        root = Datalist(Path(root))
    if isinstance(root, Datalist):
        cache = root.cache_dir if root.cache_dir is not None else None if output is None else Path(output) / "cache"
        pairs: list[SlicePair | StudySlice] = root.slices(key, ids, cache, progress)
        sources = [str(root.path)]
    else:
        pairs = find_pairs(root)
        if ids is not None:
            pairs = select_pairs(pairs, ids)
        sources = data_roots(root)
    emma = None
    if "emma" in methods:
        if net is None:
            from monai_emma.model_source import resolve_fuser

            net, _ = resolve_fuser(weights=weights)
        emma = network_fuser(net, device, zero_empty=zero_empty, precision=precision)
    from monai_emma.metrics import warm_up

    warm_up()
    result = EvaluationResult()
    grid_rows = []
    for i, pair in enumerate(tqdm(pairs, desc="evaluate", disable=not progress)):
        a_img, b_img, a_gray, b_gray = _sources(pair)
        images = {}
        for m in methods:
            if m == "emma":
                out8 = fuse_slice_pair(emma, a_img, b_img)
                images[m] = out8
                fused_gray = grey_of(out8)
            elif m in peers:
                images[m] = _PEER_NETWORKS[m][1](peers[m], a_gray, b_gray, device)
                fused_gray = images[m].astype(np.float32)
            else:
                fused_gray = classical_fusion_gray(m, a_gray, b_gray)
                images[m] = fused_gray.astype(np.uint8)
            scores = fusion_metrics(fused_gray, a_gray, b_gray)
            row = {"pair": pair.pair, "source": pair.source, "id": pair.id, "method": m, **scores}
            if isinstance(pair, StudySlice):
                row["study"] = pair.study
            result.rows.append(row)
        if i % max(1, len(pairs) // max(grid_pairs, 1)) == 0 and len(grid_rows) < grid_pairs:
            b_show = np.moveaxis(b_img, 0, -1).astype(np.uint8) if b_img.shape[0] == 3 else b_img[0].astype(np.uint8)
            grid_rows.append([a_gray.astype(np.uint8), b_show] + [images[m] for m in methods])
    result.summary = _summarise(result.rows, methods)
    if progress:
        _print_table(result.summary, methods, skip={r["study"] for r in result.rows if r.get("study")})
    if output is not None:
        from monai_emma.io.atomic import atomic_path
        from monai_emma.io.png import save_montage

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as f:
            study = ["study"] if any(r.get("study") for r in result.rows) else []
            writer = csv.DictWriter(f, fieldnames=["pair", "source", *study, "id", "method", *METRIC_NAMES])
            writer.writeheader()
            writer.writerows(result.rows)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "root": sources,
                        "pairs": len(pairs),
                        "methods": list(methods),
                        "summary": result.summary,
                    },
                    indent=1,
                )
            )
        with atomic_path(out / "summary.md") as tmp:
            tmp.write_text(_markdown(result.summary, methods))
        names = {"csv": "metrics.csv", "json": "summary.json", "md": "summary.md"}
        if grid_rows:  # --grid-pairs 0: no picture
            save_montage(grid_rows, out / "grid.png", titles=["A", "B", *methods])
            names["grid"] = "grid.png"
        result.files = {k: out / v for k, v in names.items()}
    if mlflow_uri is not None:
        _log_mlflow(result, mlflow_uri, sources, methods)
    return result


def _log_mlflow(result: EvaluationResult, uri: str, roots: list[str], methods) -> None:
    from monai_emma.extras import require, scoped_tracking_uri

    mlflow = require("mlflow", "logging the evaluation to MLflow")

    with scoped_tracking_uri(uri):
        _log_evaluation(mlflow, result, roots, methods)


def _log_evaluation(mlflow, result: EvaluationResult, roots: list[str], methods) -> None:
    mlflow.set_experiment("emma-evaluate")
    with mlflow.start_run(run_name="evaluate " + "+".join(Path(r).name for r in roots)):
        mlflow.log_params({"root": ", ".join(roots), "methods": ",".join(methods)})
        for group, by_method in result.summary.items():
            for m, scores in by_method.items():
                mlflow.log_metrics({f"{group}.{m}.{k}": v[0] for k, v in scores.items()})
        for path in result.files.values():
            mlflow.log_artifact(str(path))
