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
