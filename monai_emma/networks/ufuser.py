"""U-Fuser: the fusion network of EMMA (Zhao et al., CVPR 2024), in MONAI style."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_emma.networks.blocks import (
    RestormerCNNBlock,
    Workspace,
    autocast_dtype,
    reflect_conv,
    reflect_pad_cat,
    tensor_version,
)
from monai_emma.networks.official import load_official_state_dict, ufuser_key_from_official

__all__ = ["UFuser", "ufuser", "SupportsStateDict"]


class SupportsStateDict(Protocol):
    """Anything that hands out a state dict, e.g. a member of
    :class:`monai_emma.weights.UFuserWeights` (the networks layer does not import the weights)."""

    def get_state_dict(self, map_location: str | torch.device = "cpu") -> Mapping[str, Any]: ...


class UFuser(nn.Module):
    """EMMA's U-Fuser: two Restormer-CNN encoders, per-level fusion blocks and a U-Net decoder.

    Channel 0 of the input is the anatomical reference (MRI; the visible image for
    infrared/visible pairs; the official code's ``v``), channel 1 the other modality (CT, PET,
    SPECT or infrared; the official ``i``). The output is one fused channel in [0, 1].

    Any H and W are accepted: when a size is not a multiple of ``2 ** (len(features) - 1)`` the
    input is reflect-padded (split evenly on both sides) and the output cropped back. Sizes that
    already fit are not padded, because the channel attention is global and padding changes every
    output pixel.

    Inference fast path: in ``eval()`` mode with gradients disabled (``torch.no_grad()`` or
    ``torch.inference_mode()``), the forward pass uses weights merged on first use (the 1x1 and
    3x3 qkv convolutions composed into one, one-channel-per-head attention reduced to a single
    convolution, layer-norm affines folded into 1x1 convolutions). The merged weights are plain
    attributes, never part of ``state_dict()``, and are rebuilt automatically whenever any
    parameter changes (loading, optimiser steps). The output equals the plain path to float
    rounding (< 1e-5).

    Under ``torch.autocast`` (e.g. ``monai_emma.precision.autocast("bf16", "cpu")``) the
    inference path runs entirely in the autocast dtype: a copy of the network in that dtype,
    whose merged weights are computed in float32 and then rounded, kept like the merged weights
    and rebuilt when a parameter changes. The output comes back in the input's dtype. Training
    and gradient-enabled calls use the plain path, which autocast handles op by op.

    Args:
        spatial_dims: must be 2 (slice-wise fusion).
        in_channels: must be 2 (anatomical, other).
        out_channels: output channels (1 in EMMA).
        features: channels of the four levels.
        num_heads: attention heads in every Restormer-CNN block.
        ffn_expansion: expansion of the gated feed-forward.
        act: activation of the local branches and decoder upsampling (MONAI ``Act`` factory).
        out_act: final activation (``"sigmoid"`` keeps the output in [0, 1]; ``None`` for logits).

    Shape:
        (B, 2, H, W) -> (B, out_channels, H, W)

    Example:
        >>> import torch
        >>> from monai_emma.networks import UFuser
        >>> net = UFuser().eval()
        >>> with torch.no_grad():
        ...     fused = net(torch.rand(1, 2, 250, 301))
        >>> fused.shape
        torch.Size([1, 1, 250, 301])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        out_channels: int = 1,
        features: Sequence[int] = (8, 16, 32, 32),
        num_heads: int = 8,
        ffn_expansion: float = 1.0,
        act: str | tuple = "relu",
        out_act: str | tuple | None = "sigmoid",
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"UFuser fuses 2D slices: spatial_dims must be 2, got {spatial_dims}.")
        if in_channels != 2:
            raise ValueError(f"UFuser takes two source channels (anatomical, other); got in_channels={in_channels}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels.")
        self.features = features
        self.num_heads = num_heads
        levels = len(features)
        ins = (1, *features[:-1])

        def block(cin: int, cout: int) -> RestormerCNNBlock:
            return RestormerCNNBlock(cin, cout, num_heads, ffn_expansion, act=act)

        self.encoder_a = nn.ModuleList(block(ins[i], features[i]) for i in range(levels))
        self.encoder_b = nn.ModuleList(block(ins[i], features[i]) for i in range(levels))
        self.down_a = nn.ModuleList(reflect_conv(features[i], features[i], stride=2) for i in range(levels - 1))
        self.down_b = nn.ModuleList(reflect_conv(features[i], features[i], stride=2) for i in range(levels - 1))
        self.fusion = nn.ModuleList(block(2 * f, f) for f in features)
        # decoder[i] works at level i; the deepest takes the fused features alone, the others
        # the upsampled deeper output concatenated with the fused skip.
        self.decoder = nn.ModuleList(
            block(features[i] if i == levels - 1 else 2 * features[i], features[i]) for i in range(levels)
        )
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(features[i + 1], features[i], 4, 2, 1, bias=False), get_act_layer(act))
            for i in range(levels - 1)
        )
        self.head = reflect_conv(features[0], out_channels, bias=True)
        if out_act is None:
            self.out_act: nn.Module = nn.Identity()
        else:
            self.out_act = get_act_layer(out_act)
        self._fast_key: tuple | None = None
        self._fast_weights: list[Any] | None = None
        self._workspace = Workspace()
        self._low_precision_copies: dict[torch.dtype, tuple[tuple, UFuser]] = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_official(cls, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]) -> UFuser:
        """A default ``UFuser`` loaded from the official EMMA checkpoint (``EMMA.pth``).

        Args:
            path_or_state_dict: path of the official checkpoint, or a state dict with the official
                key names (a ``module.`` prefix from DataParallel is accepted).
        """
        net = cls()
        state = load_official_state_dict(path_or_state_dict)
        net.load_state_dict({ufuser_key_from_official(k): v for k, v in state.items()}, strict=True)
        return net

    @property
    def size_multiple(self) -> int:
        """H and W are padded internally to a multiple of this."""
        return 2 ** (len(self.features) - 1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"UFuser expects a (B, 2, H, W) tensor, got shape {tuple(x.shape)}.")
        if torch.compiler.is_exporting():  # torch.export / ONNX: one graph for every H, W >= 16
            return self._forward_export(x)
        h, w = x.shape[-2:]
        x, crop = self._pad(x)
        if self.training or torch.is_grad_enabled():
            out = self._forward_plain(x)
        elif (dtype := autocast_dtype(x.device.type)) is not None and dtype != x.dtype:
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = self._low_precision(dtype)._forward_fast(x.to(dtype)).to(x.dtype)
        else:
            out = self._forward_fast(x)
        if crop is not None:
            top, left = crop
            out = out[..., top : top + h, left : left + w]
        return out

    def _forward_export(self, x: torch.Tensor) -> torch.Tensor:
        """The graph ``torch.export`` records: always the reflect padding to a multiple of
        :attr:`size_multiple` (possibly zero), the plain path, the crop. With H, W >= 16 this is
        what :meth:`forward` computes for any size, so one exported graph serves them all."""
        m = self.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        top, left = ph // 2, pw // 2
        x = F.pad(x, (left, pw - left, top, ph - top), mode="reflect")
        return self._forward_plain(x)[..., top : top + h, left : left + w]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        m = self.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        # every level's reflect padding needs at least two pixels at the deepest level
        ph += m * max(0, 2 - (h + ph) // m)
        pw += m * max(0, 2 - (w + pw) // m)
        if ph == 0 and pw == 0:
            return x, None
        top, left = ph // 2, pw // 2
        pads = (left, pw - left, top, ph - top)
        mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
        return F.pad(x, pads, mode=mode), (top, left)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        levels = len(self.features)
        if x.device.type == "cpu":  # oneDNN's channels-last convolutions: ~15% faster training on CPU
            x = x.contiguous(memory_format=torch.channels_last)
        a, b = x[:, 0:1], x[:, 1:2]
        fused = []
        for i in range(levels):
            if i > 0:
                a, b = self.down_a[i - 1](a), self.down_b[i - 1](b)
            # official order: cat(i_feature, v_feature) = (other, anatomical)
            a, b = self.encoder_a[i](a), self.encoder_b[i](b)
            fused.append(self.fusion[i](torch.cat((b, a), dim=1)))
        out = self.decoder[-1](fused[-1])
        for i in range(levels - 2, -1, -1):
            out = self.decoder[i](torch.cat((self.up[i](out), fused[i]), dim=1))
        return self.out_act(self.head(out))

    # ------------------------------------------------------------------ inference fast path
    def _param_key(self) -> tuple:
        return tuple((p.data_ptr(), tensor_version(p), p.device, p.dtype) for p in self.parameters())

    def _merged(self) -> list[Any]:
        key = self._param_key()
        if self._fast_weights is None or key != self._fast_key:
            with torch.inference_mode(False), torch.no_grad():
                blocks = [*self.encoder_a, *self.encoder_b, *self.fusion, *self.decoder]
                self._fast_weights = [blk.merged_weights() for blk in blocks]
            self._fast_key = key
        return self._fast_weights

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._merged()
        levels = len(self.features)
        w_ea, w_eb = weights[:levels], weights[levels : 2 * levels]
        w_fu, w_de = weights[2 * levels : 3 * levels], weights[3 * levels :]
        ws = self._workspace
        ws.start((tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled()))
        a, b = x[:, 0:1], x[:, 1:2]
        fused = []
        for i in range(levels):
            if i > 0:
                a = F.conv2d(reflect_pad_cat(a, workspace=ws, role="down"), self.down_a[i - 1].weight, stride=2)
                b = F.conv2d(reflect_pad_cat(b, workspace=ws, role="down"), self.down_b[i - 1].weight, stride=2)
            a = self.encoder_a[i].forward_fast((a,), w_ea[i], ws)
            b = self.encoder_b[i].forward_fast((b,), w_eb[i], ws)
            fused.append(self.fusion[i].forward_fast((b, a), w_fu[i], ws))
        out = self.decoder[-1].forward_fast((fused[-1],), w_de[-1], ws)
        for i in range(levels - 2, -1, -1):
            out = self.decoder[i].forward_fast((self.up[i](out), fused[i]), w_de[i], ws)
        out = F.conv2d(reflect_pad_cat(out, workspace=ws, role="head"), self.head.weight, self.head.bias)
        return self.out_act(out).contiguous()

    def _low_precision(self, dtype: torch.dtype) -> UFuser:
        """This network in ``dtype`` for the inference path under autocast: its merged weights
        are computed in this network's precision and rounded once; rebuilt when a parameter
        changes."""
        key = self._param_key()
        cached = self._low_precision_copies.get(dtype)
        if cached is not None and cached[0] == key:
            return cached[1]
        merged = self._merged()
        with torch.inference_mode(False), torch.no_grad():
            low = copy.deepcopy(self).to(dtype)  # the copy carries no merged weights or buffers
            low._fast_weights = _cast_floats(merged, dtype)
            low._fast_key = low._param_key()
        self._low_precision_copies[dtype] = (key, low)
        return low

    def release_workspace(self) -> None:
        """Free the padded buffers the inference path keeps between calls (this thread's), and
        the low-precision copies."""
        self._workspace.clear()
        self._low_precision_copies = {}

    def __getstate__(self) -> dict[str, Any]:
        # merged weights and low-precision copies are derived data: never pickled or deep-copied
        state = dict(super().__getstate__())
        state.update(_fast_weights=None, _fast_key=None, _low_precision_copies={})
        return state

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch signature
        # moving or casting the module invalidates the merged weights and the buffers
        self._fast_weights, self._fast_key = None, None
        self._low_precision_copies = {}
        self._workspace.clear()
        return super()._apply(fn, recurse)


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (tensors in lists and dicts) with floating-point tensors cast to ``dtype``,
    keeping their memory format."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value


def ufuser(weights: SupportsStateDict | None = None, **kwargs: Any) -> UFuser:
    """Build a :class:`UFuser` in eval mode, with shipped weights or randomly initialised.

    Args:
        weights: e.g. ``monai_emma.weights.UFuserWeights.DEFAULT`` or ``.V1``; ``None``: random init.
        **kwargs: :class:`UFuser` arguments (must match the weights' architecture).

    Example:
        >>> from monai_emma.networks import ufuser
        >>> from monai_emma.weights import UFuserWeights
        >>> net = ufuser(weights=UFuserWeights.DEFAULT)  # doctest: +SKIP
    """
    net = UFuser(**kwargs)
    if weights is not None:
        net.load_state_dict(weights.get_state_dict())
    return net.eval()
