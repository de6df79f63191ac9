import numpy as np
import torch

from monai_emma.transforms import (
    RandForegroundPatchd,
    RGBToYCbCrd,
    ScaleToUnitd,
    is_colour,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)


def test_ycbcr_round_trip_below_one_grey_level():
    rgb = torch.rand(3, 64, 64)
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    assert (back - rgb).abs().max() < 1 / 255
    arr = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    assert np.abs(ycbcr_to_rgb(rgb_to_ycbcr(arr)) - arr).max() < 1 / 255


def test_y_matches_opencv_bt601_weights():
    rgb = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    ycc = rgb_to_ycbcr(rgb)
    assert abs(ycc[0].item() - 0.299) < 1e-7
    assert abs(ycc[2].item() - (0.5 + 0.713 * (1 - 0.299))) < 1e-6  # Cr


def test_colour_detection_and_dict_transform():
    grey3 = np.repeat(np.random.default_rng(1).random((1, 8, 8)), 3, 0) * 255
    colour = grey3.copy()
    colour[0] += 30
    assert not is_colour(grey3) and is_colour(colour)
    d = ScaleToUnitd(["x"])({"x": colour})
    d = RGBToYCbCrd(["x"])(d)
    assert d["x"].shape == (1, 8, 8) and d["x_cbcr"].shape == (2, 8, 8) and d["x_is_colour"]


def test_foreground_patches_avoid_background():
    img = torch.zeros(1, 128, 128)
    img[:, 90:110, 10:30] = 1.0  # a small bright object in a black image
    crop = RandForegroundPatchd(["a", "b"], (32, 32), background_prob=0.0)
    hits = 0
    for seed in range(20):
        crop.set_random_state(seed=seed)
        out = crop({"a": img, "b": img * 0.5})
        assert out["a"].shape == (1, 32, 32)
        assert torch.equal(out["a"] * 0.5, out["b"])  # same window for every key
        hits += int(out["a"].sum() > 0)
    assert hits == 20


def test_patch_larger_than_image_is_padded():
    crop = RandForegroundPatchd(["a"], (16, 16))
    crop.set_random_state(seed=0)
    assert crop({"a": torch.rand(1, 10, 12)})["a"].shape == (1, 16, 16)
