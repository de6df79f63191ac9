"""16-bit greyscale PNG and TIFF: scaled by their own range, in fuse, fuse-folder and the readers."""

import numpy as np
import pytest
import torch
from PIL import Image

from monai_emma.cli import main
from monai_emma.fusion import fuse_images
from monai_emma.io.volumes import read_volume
from monai_emma.networks import UFuser
from tests.conftest import PickChannel


def _pair16(folder, suffix=".png"):
    """A 16-bit MRI-like and CT-like pair on a 12-bit range (as scanners export)."""
    yy, xx = np.mgrid[0:48, 0:64]
    head = ((yy - 24) ** 2 / 20**2 + (xx - 32) ** 2 / 26**2) < 1
    mri = (head * (1200 + 20 * xx)).astype(np.uint16)
    ct = (head * (300 + 3000 * (((yy - 24) ** 2 / 20**2 + (xx - 32) ** 2 / 26**2) > 0.7))).astype(np.uint16)
    paths = []
    for name, arr in (("mri", mri), ("ct", ct)):
        path = folder / f"{name}{suffix}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths, (mri, ct)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_by_their_own_range(tmp_path, suffix):
    (a, b), (mri, _) = _pair16(tmp_path, suffix)
    vol = read_volume(a)
    assert vol.source_range == (0.0, float(mri.max()), 16)
    expected = (mri.astype(np.float64) - 0) / mri.max() * 255
    np.testing.assert_allclose(vol.array[0], expected, atol=1e-3)
    result = fuse_images(a, b, model=PickChannel(0), precision="fp32")  # the anatomical image as fused
    assert any("16-bit image scaled by its own range [0, " in n for n in result.notes)
    np.testing.assert_allclose(result.fused.astype(float), np.round(expected), atol=1)


def test_fuse_and_fuse_folder_take_16_bit_pairs(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(UFuser().state_dict(), weights)
    a_dir, b_dir = tmp_path / "MRI", tmp_path / "CT"
    a_dir.mkdir(), b_dir.mkdir()
    (a, b), _ = _pair16(tmp_path)
    a.rename(a_dir / "1.png"), b.rename(b_dir / "1.png")
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a_dir / "1.png"), str(b_dir / "1.png"), "-o", str(out), "--weights", str(weights)]) == 0
    assert np.asarray(Image.open(out)).dtype == np.uint8
    assert main(["fuse-folder", str(a_dir), str(b_dir), str(tmp_path / "folder"), "--weights", str(weights)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "folder" / "1.png")), np.asarray(Image.open(out)))


def test_broken_16_bit_png_is_one_line_and_writes_nothing(tmp_path, capsys):
    (a, b), _ = _pair16(tmp_path)
    data = a.read_bytes()
    a.write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "out" / "fused.png"
    assert main(["fuse", str(a), str(b), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mri.png" in err[0] and "not a readable image" in err[0]
    assert not out.parent.exists()
