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


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from monai_emma.io.atomic import atomic_dir

    old = os.umask(0o022)
    try:
        path = save_png(np.zeros((4, 4)), tmp_path / "p.png")
        with atomic_dir(tmp_path / "series") as folder:
            (folder / "1.dcm").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "series").stat().st_mode) == 0o755


def test_atomic_dir_replaces_only_on_success(tmp_path):
    from monai_emma.io.atomic import atomic_dir

    target = tmp_path / "series"
    with atomic_dir(target) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(FileExistsError, match="series: output exists"):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as folder:
            (folder / "b").write_text("2")
            raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["a"]  # the old series is intact
    with atomic_dir(target, overwrite=True) as folder:
        (folder / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["series"]
