"""scripts/paired_compare.py: paired t per metric and pair type between two ``evaluate`` folders."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("paired_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, rows: list[tuple[str, str, str, float, float, float]]) -> Path:
    folder.mkdir()
    with (folder / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pair", "source", "id", "method", "VIF", "Qabf", "SSIM"])
        for pair, ident, method, vif, qabf, ssim in rows:
            w.writerow([pair, "root", ident, method, vif, qabf, ssim])
    return folder


def test_paired_t_matches_its_definition(compare):
    base, other = [1.0, 2.0, 3.0, 4.0], [1.5, 2.1, 3.4, 4.2]
    d = [o - b for b, o in zip(base, other, strict=True)]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    mb, mo, rel, t = compare.paired(base, other)
    assert (mb, mo) == (2.5, pytest.approx(2.8)) and rel == pytest.approx(0.3 / 2.5)
    assert t == pytest.approx(mean / (sd / 2))
    assert compare.paired([1.0, 2.0], [1.0, 2.0])[3] == 0.0
    assert compare.paired([1.0, 2.0], [2.0, 3.0])[3] == math.inf  # every pair rose by the same


def test_tables_per_pair_type_and_margins(compare, tmp_path, capsys):
    rows = [("MRI_CT", "ct/1", "emma", 0.5, 0.6, 1.3), ("MRI_CT", "ct/2", "emma", 0.6, 0.7, 1.4)]
    rows += [("MRI_PET", "pet/1", "emma", 0.8, 0.7, 1.3), ("MRI_PET", "pet/2", "emma", 0.7, 0.8, 1.2)]
    rows += [(p, i, "max", 0.9, 0.6, 1.4) for p, i, *_ in rows[:4]]
    rows += [(p, i, "laplacian", 0.4, 0.5, 1.35) for p, i, *_ in rows[:4]]
    base = _write(tmp_path / "base", rows)
    better = [(p, i, m, v + 0.05 * (n + 1), q, s) for n, (p, i, m, v, q, s) in enumerate(rows)]
    other = _write(tmp_path / "other", better)
    assert compare.main([str(base), str(other), "--reference", str(base), "--metrics", "VIF,SSIM"]) == 0
    out = capsys.readouterr().out
    ct = next(line for line in out.splitlines() if line.startswith("| MRI_CT | 0.5500"))
    assert "0.5500 → 0.6250 (+13.64%, t +" in ct and "1.3500 → 1.3500 (+0.00%, t +0.0)" in ct
    assert "| ALL |" in out
    # margins: base MRI_CT SSIM 1.35 against the Laplacian rule's 1.35 and the max rule's 1.4
    margins = next(line for line in out.splitlines() if line.startswith(f"| {base} | MRI_CT |"))
    assert "+0.00%" in margins.split("|")[3] and "-3.57%" in margins.split("|")[5]


def test_a_candidate_missing_pairs_is_refused(compare, tmp_path):
    base = _write(tmp_path / "base", [("MRI_CT", "1", "emma", 0.5, 0.6, 1.3), ("MRI_CT", "2", "emma", 0.5, 0.6, 1.3)])
    short = _write(tmp_path / "short", [("MRI_CT", "1", "emma", 0.5, 0.6, 1.3)])
    with pytest.raises(SystemExit, match="scored 1 of the base's 2 pairs"):
        compare.main([str(base), str(short)])
    with pytest.raises(SystemExit, match="no metrics.csv"):
        compare.main([str(base), str(tmp_path / "nowhere")])
