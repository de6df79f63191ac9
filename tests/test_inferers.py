import pytest
import torch

from monai_emma.inferers import FusionInferer
from monai_emma.networks import UFuser


def test_fusion_inferer_equals_slice_by_slice():
    torch.manual_seed(0)
    net = UFuser().eval()
    vol = torch.rand(1, 2, 24, 40, 5)
    out = FusionInferer(sw_batch_size=2)(vol, net)
    with torch.inference_mode():
        ref = torch.stack([net(vol[..., k]) for k in range(5)], -1)
    assert out.shape == (1, 1, 24, 40, 5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # slicing along another axis gives that axis' slices
    out0 = FusionInferer(spatial_dim=0, sw_batch_size=4)(vol.permute(0, 1, 4, 2, 3), net)
    torch.testing.assert_close(out0.permute(0, 1, 3, 4, 2), ref, atol=1e-6, rtol=0)


def test_fusion_inferer_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected a \\(B, 2, H, W, D\\) volume"):
        FusionInferer()(torch.rand(1, 3, 8, 8, 2), UFuser().eval())


def test_fusion_inferer_bf16_precision():
    torch.manual_seed(0)
    net = UFuser().eval()
    vol = torch.rand(1, 2, 32, 32, 3)
    ref = FusionInferer(sw_batch_size=3)(vol, net)
    low = FusionInferer(sw_batch_size=3, precision="bf16")(vol, net)
    assert low.dtype == torch.float32 and 0 < (low - ref).abs().max() < 0.05
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        FusionInferer(precision="fp8")
