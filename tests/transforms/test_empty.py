import numpy as np
import torch

from monai_emma.transforms import EMPTY_TOLERANCE, ZeroWhereEmptyd, zero_where_empty


def test_zero_where_every_source_is_empty_only():
    sources = torch.zeros(2, 2, 4, 4)
    sources[0, 0, 0, 0] = 0.5  # the MRI has signal here
    sources[0, 1, 1, 1] = 0.5  # the other modality here
    sources[1, :, 2, 2] = EMPTY_TOLERANCE * 0.9  # below half a grey level: still empty
    fused = torch.full((2, 1, 4, 4), 0.7)
    out = zero_where_empty(fused, sources)
    assert out[0, 0, 0, 0] == 0.7 and out[0, 0, 1, 1] == 0.7  # either source with signal keeps the pixel
    assert out[0, 0].sum() == 2 * 0.7 and out[1].abs().sum() == 0
    assert torch.equal(fused, torch.full((2, 1, 4, 4), 0.7))  # the input is untouched
    # numpy and 3D (B, C, H, W, D) volumes behave the same
    vol = np.zeros((1, 2, 3, 3, 2), np.float32)
    vol[0, 1, 0, 0, 1] = 0.2
    got = zero_where_empty(np.ones((1, 1, 3, 3, 2), np.float32), vol)
    assert got.dtype == np.float32 and got.sum() == 1 and got[0, 0, 0, 0, 1] == 1


def test_dictionary_version_on_channel_first_samples():
    image = torch.zeros(2, 3, 3)
    image[1, 1, 1] = 1.0
    d = ZeroWhereEmptyd("pred", source_key="image")({"image": image, "pred": torch.ones(1, 3, 3)})
    assert d["pred"].sum() == 1 and d["pred"][0, 1, 1] == 1
