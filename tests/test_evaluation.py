import csv
import json

import numpy as np
import pytest
from PIL import Image

from monai_emma.cli import main
from monai_emma.evaluation import classical_fusion_gray, evaluate, grey_of
from monai_emma.metrics import METRIC_NAMES
from monai_emma.networks import UFuser


def test_evaluate_writes_tables_and_grid(phantom_root, tmp_path):
    out = tmp_path / "eval"
    res = evaluate(phantom_root, ["emma", "mean", "max"], output=out, grid_pairs=2, progress=False, net=UFuser())
    assert len(res.rows) == 8 * 3
    assert set(res.summary) == {"MRI_CT", "MRI_PET", "ALL"}
    assert set(res.summary["ALL"]) == {"emma", "mean", "max"}
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and set(METRIC_NAMES) <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["emma", "mean", "max"]
    md = (out / "summary.md").read_text()
    assert "| max |" in md and "**" in md
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] >= 5 * 64


def test_classical_rules_on_grey_sources():
    a = np.array([[0, 10], [255, 3]], np.float32)
    b = np.array([[1, 10], [0, 4]], np.float32)
    assert classical_fusion_gray("mean", a, b).tolist() == [[0, 10], [128, 4]]  # round half to even
    assert classical_fusion_gray("max", a, b).tolist() == [[1, 10], [255, 4]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    assert grey_of(rgb)[0, 0] == 76  # round(0.299 * 255)


def test_cli_evaluate_and_errors(phantom_root, tmp_path, capsys):
    assert main(["evaluate", str(phantom_root), "--methods", "mean,laplacian", "--output", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "grid.png").exists()
    out = tmp_path / "no-grid"
    assert main(["evaluate", str(phantom_root), "--methods", "max", "--output", str(out), "--grid-pairs", "0"]) == 0
    assert (out / "summary.json").is_file() and not (out / "grid.png").exists()
    assert main(["evaluate", str(phantom_root), "--methods", "median"]) == 2
    assert "unknown methods" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), "--methods", "mean"]) == 2


@pytest.mark.shared_data
def test_evaluate_on_a_shared_pair_folder(harvard_root, tmp_path):
    res = evaluate(harvard_root / "MRI_CT", ["mean", "max"], output=None, progress=False)
    ct11 = [r for r in res.rows if r["id"] == "MRI_CT/11" and r["method"] == "max"][0]
    assert ct11["VIF"] == pytest.approx(0.583266, rel=1e-4)


def test_evaluate_logs_to_mlflow_sqlite(phantom_root, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)  # artifacts of the default experiment location stay in tmp
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluate(phantom_root / "MRI_CT", ["mean", "max"], output=tmp_path / "e", progress=False, mlflow_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("emma-evaluate")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert "ALL.max.VIF" in metrics and "MRI_CT.mean.SSIM" in metrics
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"summary.md", "grid.png", "metrics.csv"} <= artifacts


def test_evaluate_with_the_learned_peer(phantom_root, tmp_path, monkeypatch, capsys):
    """``ifcnn`` runs from a snapshot given by path or environment variable; without one the
    command stops before reading any pair, naming what to set."""
    import torch

    from monai_emma.networks.ifcnn import IFCNN, IFCNN_WEIGHTS_ENV

    torch.manual_seed(0)
    snapshot = tmp_path / "IFCNN-MAX.pth"
    torch.save(IFCNN().state_dict(), snapshot)
    from monai_emma.networks.densefuse import DenseFuse

    dense = tmp_path / "densefuse_gray.model"
    torch.save(DenseFuse().state_dict(), dense)
    res = evaluate(
        phantom_root,
        ["ifcnn", "densefuse", "max"],
        output=tmp_path / "e",
        progress=False,
        peer_weights={"ifcnn": snapshot, "densefuse": dense},
    )
    for method in ("ifcnn", "densefuse"):
        peer = [r for r in res.rows if r["method"] == method]
        assert len(peer) == 8 and all(np.isfinite(r["VIF"]) and r["SD"] >= 0 for r in peer)
    assert set(res.summary["ALL"]) == {"ifcnn", "densefuse", "max"}
    assert "| ifcnn |" in (tmp_path / "e" / "summary.md").read_text()
    monkeypatch.setenv(IFCNN_WEIGHTS_ENV, str(snapshot))
    assert main(["evaluate", str(phantom_root), "--methods", "ifcnn", "--output", str(tmp_path / "env")]) == 0
    monkeypatch.delenv(IFCNN_WEIGHTS_ENV)
    capsys.readouterr()
    assert main(["evaluate", str(phantom_root), "--methods", "mean,ifcnn", "--output", str(tmp_path / "none")]) == 2
    assert IFCNN_WEIGHTS_ENV in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
