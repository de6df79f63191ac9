"""The per-slice fidelity report: a fusion that drops a modality is flagged for it, a good one is
not; the CLI writes the JSON and prints one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_emma.cli import main
from monai_emma.fidelity import fidelity_report, report_line
from monai_emma.fusion import fuse_images, fuse_volumes
from monai_emma.networks import SensorBank
from tests.conftest import PickChannel


def test_the_report_logic_with_identity_sensors(phantom_volume_files):
    """With sensors that return the fused image, the gain of a modality is 1 - |F - source| / |other -
    source|: an MRI-only "fusion" has exactly 0 for the CT, a mean fusion 0.5 for both."""
    files = phantom_volume_files["nifti"]
    identity = SensorBank(["mri", "ct"], preset="identity")
    mri_only = fidelity_report(fuse_volumes(files["mri"], files["ct"], model=PickChannel(0), modality="ct"), identity)
    scored = [s for s in mri_only.slices if s["scores"]]
    assert scored and all(s["flag"] == ["ct"] for s in scored)
    assert all(s["scores"]["ct"]["gain"] == pytest.approx(0.0, abs=1e-6) for s in scored)
    mean = fidelity_report(
        fuse_volumes(files["mri"], files["ct"], model=MeanFuser(), modality="ct", zero_empty=False), identity
    )
    gains = [s["scores"][m]["gain"] for s in mean.slices if s["scores"] for m in ("mri", "ct")]
    assert not mean.flagged and min(gains) == pytest.approx(0.5, abs=0.02)
    summary = mean.as_dict()["summary"]
    assert summary["scored"] == len(scored) and "through_plane_mean" in summary
    assert report_line(mri_only) == f"{len(scored)} of {len(scored)} slices flagged: " + ", ".join(
        str(s["index"]) for s in scored[:20]
    ) + (" …" if len(scored) > 20 else "")


class MeanFuser:
    def __call__(self, x):
        return x.mean(dim=1, keepdim=True)


@pytest.mark.shared_data
def test_shipped_sensors_flag_a_lost_modality_on_real_pairs(harvard_root):
    """On real development pairs the shipped U-Fuser keeps both modalities and an MRI-only
    "fusion" is flagged for the CT (the calibration of ``THRESHOLDS``)."""
    for stem in ("11", "22", "24"):
        a, b = harvard_root / "MRI_CT" / "MRI" / f"{stem}.png", harvard_root / "MRI_CT" / "CT" / f"{stem}.png"
        assert not fidelity_report(fuse_images(a, b, modality="ct")).flagged
        assert fidelity_report(fuse_images(a, b, model=PickChannel(0), modality="ct")).slices[0]["flag"] == ["ct"]


def test_cli_report_for_volumes_and_pairs(phantom_volume_files, phantom_root, tmp_path, capsys):
    files = phantom_volume_files["nifti"]
    report = tmp_path / "report.json"
    argv = ["fuse", str(files["mri"]), str(files["pet"]), "-o", str(tmp_path / "f.nii.gz"), "--quiet"]
    assert main([*argv, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["modalities"] == ["mri", "pet"] and len(data["slices"]) == data["summary"]["slices"]
    first = next(s for s in data["slices"] if s["scores"])
    assert set(first["scores"]["pet"]) == {"error", "error_without", "gain", "structure"} and "flag" in first
    assert "slices flagged" in out
    # an existing report is refused before any work
    assert main([*argv[:-1], "-o", str(tmp_path / "g.nii.gz"), "--report", str(report)]) == 2
    assert not (tmp_path / "g.nii.gz").exists()
    # fuse-folder: one entry per pair; the modality comes from the folder name
    pairs = tmp_path / "pairs.json"
    ff = ["fuse-folder", str(phantom_root / "MRI_PET" / "MRI"), str(phantom_root / "MRI_PET" / "PET")]
    assert main([*ff, str(tmp_path / "png"), "--quiet", "--report", str(pairs)]) == 0
    assert "pairs flagged" in capsys.readouterr().out
    assert [s["name"] for s in json.loads(pairs.read_text())["slices"]] == ["1", "2", "3", "4"]


def test_2d_pair_report_and_missing_sensor(phantom_root):
    res = fuse_images(
        phantom_root / "MRI_CT" / "MRI" / "1.png", phantom_root / "MRI_CT" / "CT" / "1.png", modality="ct"
    )
    report = fidelity_report(res)
    assert len(report.slices) == 1 and report.modalities == ("mri", "ct")
    res.modality = "ir"
    with pytest.raises(ValueError, match="no vis, ir sensor"):
        fidelity_report(res)
    assert np.isfinite(report.slices[0]["scores"]["ct"]["gain"])
