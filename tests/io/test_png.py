import numpy as np
import pytest
from PIL import Image

from monai_emma.io.atomic import atomic_path
from monai_emma.io.png import save_montage, save_png, to_uint8


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 1.0, 2.0]))
    assert out.tolist() == [0, 0, 0, 2, 255, 255]  # round half to even


def test_save_png_round_trip(tmp_path):
    img = np.linspace(0, 1, 64 * 32).reshape(64, 32)
    path = save_png(img, tmp_path / "a.png")
    back = np.asarray(Image.open(path))
    assert back.shape == (64, 32) and back.dtype == np.uint8
    assert np.array_equal(back, to_uint8(img))
    with pytest.raises(FileExistsError, match="a.png"):
        save_png(img, path, overwrite=False)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_montage_mixes_grey_and_colour(tmp_path):
    grey = np.zeros((20, 30))
    colour = np.ones((10, 10, 3))
    path = save_montage([[grey, colour], [colour]], tmp_path / "m.png", titles=["a", "b"])
    arr = np.asarray(Image.open(path))
    assert arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[0] == 16 + 2 * (20 + 4) and arr.shape[1] == 2 * (30 + 4)
    assert arr[16:26, 34:44].min() == 255  # the white colour cell landed in row 0, column 1
