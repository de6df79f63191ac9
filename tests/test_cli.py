import numpy as np
from PIL import Image

from monai_emma.cli import main


def test_help_and_no_command(capsys):
    assert main([]) == 1
    assert "demo" in capsys.readouterr().out


def test_demo_writes_montage(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path), "--size", "64"]) == 0
    img = np.asarray(Image.open(tmp_path / "demo_montage.png"))
    assert img.shape[0] > 3 * 64 and img.shape[1] >= 3 * 64
    out = capsys.readouterr().out
    assert "ct:" in out and "spect:" in out
