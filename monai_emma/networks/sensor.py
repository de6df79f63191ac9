"""Pseudo-sensor: the U-Net that maps a fused image back to one source modality."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_emma.networks.blocks import autocast_dtype, tensor_version
from monai_emma.networks.official import load_official_state_dict, sensor_key_from_official

__all__ = ["PseudoSensor", "SENSOR_PRESETS"]

#: Channel widths per level of the named presets.
SENSOR_PRESETS: dict[str, tuple[int, ...]] = {
    # the official 5-level UNet5 of EMMA: 39,397,761 parameters
    "paper": (64, 128, 256, 512, 1024),
    # an eighth of the width: ~0.6M parameters, trains on a CPU
    "lite": (8, 16, 32, 64, 128),
}


class PseudoSensor(nn.Module):
    """A U-Net "pseudo-sensor" A_m of EMMA: fused image -> source image of modality m.

    Each level is two conv-norm-act units (MONAI :class:`~monai.networks.blocks.Convolution`,
    3x3, zero padding, biased convolutions); max-pooling goes down, a transposed convolution
    (kernel 4, stride 2, no bias) and the activation go up, the skip is concatenated after the
    upsampled features, and a 3x3 convolution with a sigmoid gives the output. With
    ``preset="paper"`` it is the official 5-level U-Net (64 to 1024 channels) and loads the
    released ``Ai.pth`` / ``Av.pth`` through :meth:`from_official`.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels (1: a fused grey image).
        out_channels: output channels (1).
        features: channels per level; overrides ``preset``.
        preset: ``"paper"`` or ``"lite"`` (see :data:`SENSOR_PRESETS`).
        act: activation (MONAI ``Act`` factory).
        norm: normalisation (MONAI ``Norm`` factory).

    Shape:
        (B, in_channels, H, W) -> (B, out_channels, H, W), H and W divisible by
        ``2 ** (levels - 1)`` (16 for five levels).

    Frozen sensors (``eval()`` and no parameter requiring gradients, as in EMMA's stage 2 and in
    the fidelity report) run a faster path: batch norm folded into the convolutions (computed
    once, refreshed when a parameter or statistic changes) and channels-last feature maps. Its
    output equals the plain path to float rounding, and gradients still reach the *input*, which
    is how stage 2 trains the U-Fuser through the sensors.

    Example:
        >>> import torch
        >>> from monai_emma.networks import PseudoSensor
        >>> sensor = PseudoSensor(preset="lite")
        >>> sensor(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] | None = None,
        preset: str = "lite",
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"PseudoSensor works on 2D slices: spatial_dims must be 2, got {spatial_dims}.")
        if features is None:
            if preset not in SENSOR_PRESETS:
                raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(SENSOR_PRESETS)}.")
            features = SENSOR_PRESETS[preset]
        features = tuple(int(f) for f in features)
        self.features = features
        levels = len(features)

        def double_conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                Convolution(spatial_dims, cin, cout, kernel_size=3, act=act, norm=norm, bias=True),
                Convolution(spatial_dims, cout, cout, kernel_size=3, act=act, norm=norm, bias=True),
            )

        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            double_conv(in_channels if i == 0 else features[i - 1], features[i]) for i in range(levels)
        )
        self.up = nn.ModuleList(
            Convolution(
                spatial_dims,
                features[i + 1],
                features[i],
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                bias=False,
                act=act,
                norm=None,
            )
            for i in range(levels - 1)
        )
        self.decoder = nn.ModuleList(double_conv(2 * features[i], features[i]) for i in range(levels - 1))
        self.head = nn.Conv2d(features[0], out_channels, 3, padding=1)
        self.out_act = get_act_layer("sigmoid")
        self._folded_key: tuple | None = None
        self._folded: list[list[tuple[torch.Tensor, torch.Tensor | None]]] | None = None

    @classmethod
    def from_official(cls, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]) -> PseudoSensor:
        """A ``"paper"`` sensor loaded from an official checkpoint (``Ai.pth`` or ``Av.pth``) or a
        state dict with the official names (``module.`` prefix accepted)."""
        net = cls(preset="paper")
        state = load_official_state_dict(path_or_state_dict)
        net.load_state_dict({sensor_key_from_official(k): v for k, v in state.items()}, strict=True)
        return net

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        if x.ndim != 4 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"PseudoSensor expects (B, C, H, W) with H, W divisible by {m}; got {tuple(x.shape)}.")
        if not self.training and self._foldable() and not any(p.requires_grad for p in self.parameters()):
            return self._forward_frozen(x)
        skips = []
        for i, enc in enumerate(self.encoder):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](torch.cat((self.up[i](x), skips[i]), dim=1))
        return self.out_act(self.head(x))

    # ------------------------------------------------------------------ frozen fast path
    def _units(self) -> list[nn.Module]:
        """The conv-norm-act units, encoder then decoder."""
        return [unit for level in (*self.encoder, *self.decoder) for unit in level]

    def _foldable(self) -> bool:
        for unit in self._units():
            norm = getattr(unit.adn, "N", None) if hasattr(unit, "adn") else None
            if norm is not None and not (isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats):
                return False
        return True

    def _folded_weights(self, dtype: torch.dtype | None) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """(weight, bias) of every unit with its batch norm folded in, channels-last, per level
        (encoder levels, then decoder levels), cast to ``dtype`` (autocast's) when given; rebuilt
        when a parameter or statistic changed."""
        state = (*self.parameters(), *self.buffers())
        key = (tuple((t.data_ptr(), tensor_version(t), t.device, t.dtype) for t in state), dtype)
        if self._folded is None or key != self._folded_key:
            with torch.inference_mode(False), torch.no_grad():
                folded = [[_fold(unit) for unit in level] for level in (*self.encoder, *self.decoder)]
                if dtype is not None:  # rounded once here, not by autocast at every call
                    folded = [[(w.to(dtype), b if b is None else b.to(dtype)) for w, b in lv] for lv in folded]
            self._folded, self._folded_key = folded, key
        return self._folded

    def _forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        folded = self._folded_weights(autocast_dtype(x.device.type))
        enc, dec = folded[: len(self.encoder)], folded[len(self.encoder) :]

        def level(x: torch.Tensor, units: nn.Module, weights) -> torch.Tensor:
            for unit, (w, b) in zip(units, weights):
                conv = unit.conv
                x = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
                act = getattr(unit.adn, "A", None)
                # the convolution's output is not needed for its backward pass: ReLU can overwrite it
                x = F.relu_(x) if type(act) is nn.ReLU else (act(x) if act is not None else x)
            return x

        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, units in enumerate(self.encoder):
            x = level(x if i == 0 else self.pool(x), units, enc[i])
            skips.append(x)
        x = skips.pop()
        for i in range(len(self.decoder) - 1, -1, -1):
            x = level(torch.cat((self.up[i](x), skips[i]), dim=1), self.decoder[i], dec[i])
        return self.out_act(self.head(x)).contiguous()

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # folded weights are derived: never pickled or copied
        state.update(_folded=None, _folded_key=None)
        return state

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch signature
        self._folded, self._folded_key = None, None  # moved or cast: fold again
        return super()._apply(fn, recurse)


def _fold(unit: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolution of a MONAI ``Convolution`` unit with its (eval-mode) batch norm folded in."""
    conv = unit.conv
    weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    norm = getattr(unit.adn, "N", None)
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.running_var.detach().add(norm.eps).rsqrt()
        shift = -norm.running_mean.detach() * scale
        if norm.affine:
            scale, shift = scale * norm.weight.detach(), shift * norm.weight.detach() + norm.bias.detach()
        bias = shift if bias is None else bias * scale + shift
        weight = weight * scale.reshape(-1, 1, 1, 1)
    return weight.contiguous(memory_format=torch.channels_last), bias
