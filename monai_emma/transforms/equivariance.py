"""The transformation group of EMMA's equivariance loss, as differentiable batch transforms.

Every transform maps a batch (B, C, H, W) to a batch of ``n * B`` images: ``n`` transformed
copies stacked along the batch axis (copy-major: all images under the first element, then all
under the second, ...). They are MONAI ``Randomizable`` (``set_random_state``) and deterministic
under ``monai.utils.set_determinism`` or an explicit seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable

__all__ = ["RandCircularShift", "Rotation", "Reflection", "TransformGroup", "rotate"]


class RandCircularShift(Randomizable):
    """``num`` circular shifts (``torch.roll``) with row and column offsets drawn independently,
    without replacement, from ±[1, H-1] and ±[1, W-1] at every call.

    Args:
        num: number of shifted copies (0 gives an empty batch).
    """

    def __init__(self, num: int = 3) -> None:
        self.num = int(num)
        self.offsets: list[tuple[int, int]] = []
        # seeded from numpy's global state, so monai.utils.set_determinism fixes it
        self.set_random_state(seed=int(np.random.randint(2**31 - 1)))

    def randomize(self, data: tuple[int, int]) -> None:
        h, w = data
        if self.num > min(2 * (h - 1), 2 * (w - 1)):
            raise ValueError(f"cannot draw {self.num} distinct shifts for a {h}x{w} image")
        rows = np.concatenate([-np.arange(1, h), np.arange(1, h)])
        cols = np.concatenate([-np.arange(1, w), np.arange(1, w)])
        dy = self.R.choice(rows, self.num, replace=False)
        dx = self.R.choice(cols, self.num, replace=False)
        self.offsets = [(int(a), int(b)) for a, b in zip(dy, dx)]

    def __call__(self, x: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(tuple(x.shape[-2:]))
        if not self.offsets:
            return x[:0]
        return torch.cat([torch.roll(x, shifts=off, dims=(-2, -1)) for off in self.offsets])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo the last call: (n * B, ...) -> (n * B, ...) back in the original position."""
        parts = y.chunk(len(self.offsets))
        return torch.cat([torch.roll(p, shifts=(-a, -b), dims=(-2, -1)) for p, (a, b) in zip(parts, self.offsets)])


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (B, C, H, W) about the image centre by ``degrees`` (counter-clockwise as displayed),
    bilinear, zero fill, corners aligned. Differentiable."""
    b, _, h, w = x.shape
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # grid_sample maps each output pixel to an input pixel. With y pointing down, a turn that looks
    # counter-clockwise on screen sends input p to [[c, s], [-s, c]] p about the centre, so the
    # output-to-input map is its transpose, rescaled to normalised coordinates.
    sx, sy = (w - 1) / 2.0, (h - 1) / 2.0
    theta = torch.tensor(
        [[c, -s * sy / sx if sx else 0.0, 0.0], [s * sx / sy if sy else 0.0, c, 0.0]], dtype=x.dtype, device=x.device
    )
    grid = F.affine_grid(theta.expand(b, 2, 3), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class Rotation:
    """``num`` rotations about the centre at fixed angles ``10, 10 + 360/num, ...`` degrees
    (EMMA: 10°, 130°, 250°), bilinear, zero fill. Not invertible (corners are lost).

    Args:
        num: number of rotated copies.
        angles: explicit angles in degrees (overrides ``num``).
    """

    def __init__(self, num: int = 3, angles: Sequence[float] | None = None) -> None:
        if angles is None:
            angles = list(np.arange(10, 360, int(360 / num))) if num > 0 else []
        self.angles = [float(a) for a in angles]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.angles:
            return x[:0]
        return torch.cat([rotate(x, a) for a in self.angles])


class Reflection:
    """Up to three reflections: horizontal (left-right), vertical (up-down), both.

    Args:
        num: 0 to 3.
    """

    def __init__(self, num: int = 3) -> None:
        if not 0 <= num <= 3:
            raise ValueError(f"Reflection takes 0 to 3 elements, got {num}")
        self.dims = [(-1,), (-2,), (-2, -1)][:num]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return x[:0]
        return torch.cat([torch.flip(x, d) for d in self.dims])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        parts = y.chunk(len(self.dims))
        return torch.cat([torch.flip(p, d) for p, d in zip(parts, self.dims)])


class TransformGroup(Randomizable):
    """Identity plus shifts, rotations and reflections, stacked along the batch axis.

    ``TransformGroup(3, 3, 3)(f)`` returns ``cat([f, shifts(f), rotations(f), reflections(f)])``:
    (10 * B, C, H, W), the ``f_t`` of EMMA's equivariance loss.

    Args:
        shifts: number of random circular shifts (0 disables).
        rotations: number of fixed-angle rotations (0 disables).
        reflections: number of reflections, 0 to 3.
        include_identity: put ``f`` itself first.

    Example:
        >>> import torch
        >>> from monai_emma.transforms import TransformGroup
        >>> group = TransformGroup(3, 3, 3)
        >>> group.set_random_state(seed=0)  # doctest: +ELLIPSIS
        <...TransformGroup object at ...>
        >>> group(torch.rand(4, 1, 32, 32)).shape
        torch.Size([40, 1, 32, 32])
    """

    def __init__(self, shifts: int = 3, rotations: int = 3, reflections: int = 3, include_identity: bool = True):
        self.shift = RandCircularShift(shifts)
        self.rotation = Rotation(rotations)
        self.reflection = Reflection(reflections)
        self.include_identity = include_identity
        self.set_random_state(seed=int(np.random.randint(2**31 - 1)))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.shift.set_random_state(state=self.R)
        return self

    def randomize(self, data: tuple[int, int]) -> None:
        self.shift.randomize(data)

    @property
    def size(self) -> int:
        """Number of group elements applied (identity included)."""
        return int(self.include_identity) + self.shift.num + len(self.rotation.angles) + len(self.reflection.dims)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.randomize(tuple(x.shape[-2:]))
        parts = [x] if self.include_identity else []
        parts += [self.shift(x, randomize=False), self.rotation(x), self.reflection(x)]
        return torch.cat([p for p in parts if p.shape[0]])
