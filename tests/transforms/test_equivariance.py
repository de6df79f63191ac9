import torch
from monai.utils import set_determinism

from monai_emma.transforms import RandCircularShift, Reflection, Rotation, TransformGroup, rotate


def test_shift_and_inverse():
    x = torch.rand(3, 1, 20, 24)
    shift = RandCircularShift(3).set_random_state(seed=1)
    y = shift(x)
    assert y.shape == (9, 1, 20, 24)
    assert all(1 <= abs(dy) <= 19 and 1 <= abs(dx) <= 23 for dy, dx in shift.offsets)
    assert torch.equal(shift.inverse(y), x.repeat(3, 1, 1, 1))
    dy, dx = shift.offsets[0]
    assert torch.equal(y[:3, :, dy % 20, dx % 24], x[:, :, 0, 0])


def test_reflections_and_inverse_and_double_flip():
    x = torch.rand(2, 1, 9, 7)
    refl = Reflection(3)
    y = refl(x)
    assert torch.equal(y[:2], x.flip(-1)) and torch.equal(y[2:4], x.flip(-2)) and torch.equal(y[4:], x.flip(-2, -1))
    assert torch.equal(refl.inverse(y), x.repeat(3, 1, 1, 1))
    assert torch.equal(x.flip(-1).flip(-1), x)


def test_rotation_identity_quarter_turn_and_angles():
    x = torch.rand(2, 1, 15, 15)
    assert torch.allclose(rotate(x, 0.0), x, atol=1e-6)
    # a quarter turn counter-clockwise (as displayed) equals rot90 on (H, W)
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 15), torch.linspace(0, 1, 15), indexing="ij")
    smooth = torch.sin(3 * xx + 2 * yy)[None, None]
    back = rotate(rotate(smooth, 30.0), -30.0)
    assert torch.allclose(back[..., 4:11, 4:11], smooth[..., 4:11, 4:11], atol=0.02)
    assert Rotation(3).angles == [10.0, 130.0, 250.0]
    y = rotate(torch.ones(1, 1, 16, 16), 45.0)
    assert y[0, 0, 0, 0] == 0 and y[0, 0, 8, 8] == 1  # zero fill in the corners


def test_group_size_order_determinism_and_gradients():
    f = torch.rand(4, 1, 32, 32, requires_grad=True)
    group = TransformGroup(3, 3, 3)
    assert group.size == 10
    out = group.set_random_state(seed=7)(f)
    assert out.shape == (40, 1, 32, 32)
    assert torch.equal(out[:4], f)
    assert torch.equal(out[-4:], f.flip(-2, -1))
    again = TransformGroup(3, 3, 3).set_random_state(seed=7)(f)
    assert torch.equal(out, again)
    out.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert TransformGroup(0, 0, 0).size == 1 and TransformGroup(0, 0, 0)(f).shape == f.shape


def test_group_follows_monai_set_determinism():
    set_determinism(seed=3)
    a = TransformGroup(2, 0, 0)
    a(torch.rand(1, 1, 16, 16))
    set_determinism(seed=3)
    b = TransformGroup(2, 0, 0)
    b(torch.rand(1, 1, 16, 16))
    set_determinism(seed=None)
    assert a.shift.offsets == b.shift.offsets
