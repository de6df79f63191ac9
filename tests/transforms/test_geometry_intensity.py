import itertools

import numpy as np
import pytest
import torch

from monai_emma.transforms import IntensityRule, ModalityScale, ModalityScaled
from monai_emma.transforms.geometry import DISPLAY_AXCODES, coverage_mask, to_display


@pytest.mark.parametrize(
    "perm,signs", list(itertools.product(itertools.permutations(range(3)), [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)]))
)
def test_display_orientation_round_trip_and_convention(perm, signs):
    from monai.data import MetaTensor
    from monai.transforms import Compose, Invertd, Orientationd

    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, list(perm)] * np.asarray(signs) * [1.0, 2.0, 3.0]
    vol = np.zeros((5, 6, 7))
    # mark the most anterior-right-superior voxel: it must show at row 0, column 0, last slice
    world = affine[:3, :3] @ np.stack(np.meshgrid(*(np.arange(n) for n in vol.shape), indexing="ij")).reshape(3, -1)
    corner = np.unravel_index(np.argmax(world[1] * 1e6 + world[0] * 1e3 + world[2]), vol.shape)  # A, then R, then S
    vol[corner] = 1
    assert to_display(vol, affine)[0, 0, -1] == 1, (perm, signs)
    # the pipeline's MONAI Orientationd gives the same stack, and Invertd undoes it exactly
    ramp = np.arange(210.0).reshape(5, 6, 7)
    pre = Compose([Orientationd("x", axcodes=DISPLAY_AXCODES, labels=None)])
    d = pre({"x": MetaTensor(torch.from_numpy(ramp)[None], affine=torch.as_tensor(affine))})
    assert np.array_equal(d["x"][0].numpy(), to_display(ramp, affine))
    d["pred"] = d["x"] * 2
    back = Invertd("pred", transform=pre, orig_keys="x", nearest_interp=False)(d)
    assert np.array_equal(back["pred"][0].numpy(), 2 * ramp)


def test_resample_and_coverage():
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatchd

    vol = np.zeros((10, 10, 10), np.float32)
    vol[5, 5, 5] = 1
    shifted = np.eye(4)
    shifted[:3, 3] = 1.0  # target voxel i sits at world i + 1

    def resample(src, src_affine, shape, dst_affine):
        d = {
            "src": MetaTensor(torch.from_numpy(src)[None], affine=torch.as_tensor(src_affine)),
            "dst": MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(dst_affine)),
        }
        return ResampleToMatchd("src", key_dst="dst", padding_mode="zeros")(d)["src"][0].numpy()

    out = resample(vol, np.eye(4), (10, 10, 10), shifted)
    assert [tuple(p) for p in np.argwhere(out > 0.5)] == [(4, 4, 4)]
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    assert resample(np.ones((8, 8, 8), np.float32), np.eye(4), (4, 4, 4), coarse).min() == pytest.approx(1)
    inside = coverage_mask((10, 10, 10), np.eye(4), (10, 10, 10), shifted)
    assert inside.sum() == 9**3 and not inside[-1].any()


def test_modality_scaling_defaults():
    ct = ModalityScale("ct")(np.array([-1000.0, -100.0, 100.0, 300.0, 1500.0]))
    np.testing.assert_allclose(ct, [0, 0, 0.5, 1, 1])
    pet = np.zeros(1000)
    pet[500:] = np.linspace(0.1, 10, 500)
    scaled = ModalityScale("pet")(pet)
    assert scaled[0] == 0 and scaled.max() == 1 and scaled[500] == pytest.approx(0.1 / np.percentile(pet[500:], 99.5))
    mri = np.concatenate([np.full(10000, 5.0), np.linspace(100, 200, 1000)])  # dark background is ignored
    scaled = ModalityScale("mri")(mri)
    assert scaled[:10000].max() == 0 and scaled[-1] == 1 and 0.4 < np.median(scaled[10000:]) < 0.6
    const = ModalityScale("mri")(np.full((4, 4), 7.0))
    assert np.isfinite(const).all()
    t = ModalityScale("ct", IntensityRule("window", 0, 10))(torch.tensor([5.0, 20.0]))
    assert torch.allclose(t, torch.tensor([0.5, 1.0]))
    d = ModalityScaled(["a", "b"], ["mri", "ct"])({"a": mri, "b": np.array([100.0])})
    assert d["b"][0] == pytest.approx(0.5)


def test_intensity_rule_validation():
    with pytest.raises(ValueError, match="low < high"):
        IntensityRule("window", 5, 5)
    with pytest.raises(ValueError, match="percentiles"):
        IntensityRule("percentile", -1, 50)
    with pytest.raises(ValueError, match="unknown modality"):
        ModalityScale("xray")
