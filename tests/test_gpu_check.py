"""``benchmarks/gpu_check.py --device cpu --quick`` runs end to end and writes its JSON and table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_quick_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--output", str(tmp_path), "--seconds", "0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["throughput"]
    assert {(r["size"], r["batch"], r["dtype"], r["layout"]) for r in rows} == {
        (s, b, d, lay)
        for s in (64, 128)
        for b in (1, 2)
        for d in ("fp32", "bf16")
        for lay in ("contiguous", "channels_last")
    }
    assert all(r.get("slices_per_s", 0) > 0 for r in rows), [r for r in rows if "error" in r]
    for precision in ("fp32", "bf16"):
        step = report["train_step"][precision]
        assert step["precision"] == precision and step["s_per_step"] > 0
        assert step["sensor_params_with_grad"] == 0  # frozen pseudo-sensors
    assert report["pipeline"] == {"skipped": "no --data given"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| 128 | 2 | bf16 | channels_last |" in table


def test_a_cell_that_should_work_and_raises_fails_the_check(tmp_path):
    """The throughput rows record errors; `failures` turns the ones that should have worked into a
    failed check (exit 1), while an unsupported precision on a device stays a note."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(gpu_check)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    cpu = torch.device("cpu")
    ok_row = {"size": 64, "batch": 1, "dtype": "fp32", "layout": "contiguous", "slices_per_s": 10.0}
    bad_row = {"size": 64, "batch": 1, "dtype": "bf16", "layout": "contiguous", "error": "RuntimeError: boom"}
    report = {"throughput": [ok_row, bad_row], "train_step": {"fp32": {"s_per_step": 1.0}}}
    assert gpu_check.failures(report, cpu) == ["throughput 64 b1 bf16 contiguous: RuntimeError: boom"]
    report["train_step"]["bf16"] = {"error": "RuntimeError: dtype"}
    report["pipeline"] = {"ok": False, "error": "exit 1"}
    assert len(gpu_check.failures(report, cpu)) == 3
    assert gpu_check.should_work(cpu, "bf16") and gpu_check.should_work(torch.device("cuda"), "fp16")
