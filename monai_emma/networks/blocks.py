"""Building blocks of the U-Fuser: the Restormer-CNN block and its parts.

Every block has two numerically equivalent forward paths:

* ``forward`` - the plain path used for training; it mirrors the published EMMA topology
  layer by layer, so gradients and parameters are exactly those of the paper's model;
* ``forward_fast`` - an inference-only path that runs on weights merged once by
  ``merged_weights()`` (see :mod:`monai_emma.networks.ufuser` for when it is used). The merges
  are exact algebra (composition of bias-free linear maps, folding a layer norm's affine part
  into the following 1x1 convolution), so the two paths agree to float rounding.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = [
    "ChannelLayerNorm",
    "ChannelAttention",
    "GatedFeedForward",
    "GlobalBranch",
    "ResidualConvBlock",
    "RestormerCNNBlock",
    "reflect_conv",
    "Workspace",
    "padded_buffer",
    "reflect_border_",
    "reflect_pad_cat",
    "autocast_dtype",
    "tensor_version",
]


def reflect_conv(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with one pixel of reflect padding (the padding EMMA uses almost everywhere)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias, padding_mode="reflect")


_SMALL_MAP = 64 * 64


def tensor_version(t: torch.Tensor) -> int:
    """The in-place version counter of ``t``; inference tensors (made under
    ``torch.inference_mode()``, e.g. a network loaded there) have none and count as version 0."""
    return 0 if t.is_inference() else t._version


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` casts to on ``device_type`` now, or None when it is off
    (the inference paths then run in the input's dtype)."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class Workspace:
    """Padded inference buffers kept from one forward pass to the next, per thread.

    Allocating a fresh multi-megabyte buffer for every padding costs a page fault per 4 KiB the
    first time it is written, which on small CPUs can take as long as the convolution that reads
    it. The fast path therefore asks for its padded buffers by a *role* (a key unique among the
    buffers alive at the same time) and gets the same memory back on every call with the same
    shapes. Buffers belong to the calling thread, so concurrent forward passes never share one,
    and a call with another input shape drops the old set.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {}  # buffers are scratch memory: never pickled, copied or saved

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()

    def start(self, signature: tuple) -> None:
        """Begin a forward pass; a new ``signature`` (input shape, dtype, device, mode) frees the
        buffers of the previous one."""
        if getattr(self._local, "signature", None) != signature:
            self._local.signature = signature
            self._local.buffers = {}

    def clear(self) -> None:
        """Free every buffer this thread holds."""
        self._local.signature, self._local.buffers = None, {}

    def get(self, role: Any, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (role, shape, like.dtype, like.device)  # a pass may mix dtypes (autocast): never share
        buf = buffers.get(key)
        if buf is None:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)
            buffers[key] = buf
        return buf


def padded_buffer(
    like: torch.Tensor, channels: int, workspace: Workspace | None = None, role: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """An uninitialised channels-last (B, channels, H + 2, W + 2) buffer for a one-pixel reflect
    padding of maps shaped like ``like``, and its (B, channels, H, W) interior view.

    Inference code writes a result straight into the interior (``out=``), then calls
    :func:`reflect_border_`, so that padding costs no extra pass over the map. With a
    ``workspace`` the buffer is the one kept for ``role`` (see :class:`Workspace`)."""
    b, _, h, w = like.shape
    shape = (b, channels, h + 2, w + 2)
    if workspace is not None:
        out = workspace.get(role, shape, like)
    else:
        out = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)
    return out, out[:, :, 1:-1, 1:-1]


def reflect_border_(out: torch.Tensor) -> torch.Tensor:
    """Fill the one-pixel border of a padded buffer by reflecting its interior (in place)."""
    out[:, :, 0, 1:-1].copy_(out[:, :, 2, 1:-1])
    out[:, :, -1, 1:-1].copy_(out[:, :, -3, 1:-1])
    out[:, :, :, 0].copy_(out[:, :, :, 2])
    out[:, :, :, -1].copy_(out[:, :, :, -3])
    return out


def reflect_pad_cat(*tensors: torch.Tensor, workspace: Workspace | None = None, role: Any = "pad") -> torch.Tensor:
    """Concatenate (B, C_i, H, W) tensors along channels and reflect-pad by one pixel, in one
    channels-last buffer (one copy per input instead of a ``cat`` and a ``pad``); the buffer is
    ``workspace``'s for ``role`` when a workspace is given."""
    first = tensors[0]
    _, _, h, w = first.shape
    if len(tensors) == 1 and h * w <= _SMALL_MAP:
        # small maps: one padding kernel beats the five copies below
        return F.pad(first.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1), mode="reflect")
    out, inner = padded_buffer(first, sum(t.shape[1] for t in tensors), workspace, role)
    start = 0
    for t in tensors:
        inner[:, start : start + t.shape[1]].copy_(t)
        start += t.shape[1]
    return reflect_border_(out)


def _channel_matmul_add(residual: torch.Tensor, mix: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``residual + mix @ v`` over channels, per sample, in channels-last layout.

    Args:
        residual: (B, C, H, W), channels-last.
        mix: (B, C, K) per-sample channel mixing matrices.
        v: (B, K, H, W) or (B, K, H*W) with channels as the fastest axis.
    """
    b, c, h, w = residual.shape
    res = residual.permute(0, 2, 3, 1).reshape(b, h * w, c)
    vt = v.reshape(b, v.shape[1], h * w).transpose(1, 2)
    out = torch.baddbmm(res, vt, mix.transpose(1, 2))
    return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channel axis of a (B, C, H, W) tensor, with weight and bias.

    Equal to normalising every pixel's C-vector: ``(x - mean) / sqrt(var + eps) * weight + bias``
    with the biased variance.

    Args:
        channels: number of channels C.
        eps: added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channel_layer_norm(x, self.weight, self.bias, self.eps)


def _channel_layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps)
    return y.permute(0, 3, 1, 2)


def _channel_norm_parts(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The centred pixels (B*H*W, C) and their reciprocal standard deviations (B*H*W, 1) of a
    channels-last ``x`` with up to 16 channels; ``None`` for other tensors.

    ``F.layer_norm`` reduces each pixel's few channels with a slow scalar loop; for up to 16
    channels two matrix-vector products (mean, then variance of the centred values) are faster.
    Same two-pass formula, so the result matches to float rounding.
    """
    c = x.shape[1]
    if c > 16 or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    t = x.permute(0, 2, 3, 1).reshape(-1, c)
    avg = torch.full((c, 1), 1.0 / c, dtype=x.dtype, device=x.device)
    cen = t - t @ avg
    return cen, ((cen * cen) @ avg).add_(eps).rsqrt_()


def _channel_layer_norm_fast(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Channel layer norm for channels-last tensors on the inference path (see
    :func:`_channel_norm_parts`)."""
    parts = _channel_norm_parts(x, eps)
    if parts is None:
        return _channel_layer_norm(x, weight, bias, eps)
    b, c, h, w = x.shape
    cen, scale = parts
    y = cen.mul_(scale)
    if weight is not None:
        y = torch.addcmul(bias, y, weight) if bias is not None else y.mul_(weight)
    return y.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _normalise_into_padded(x: torch.Tensor, eps: float, workspace: Workspace | None = None) -> torch.Tensor:
    """Affine-free channel layer norm of ``x`` written into a reflect-padded channels-last buffer."""
    parts = _channel_norm_parts(x, eps)
    if parts is None:
        return reflect_pad_cat(_channel_layer_norm(x, None, None, eps), workspace=workspace, role="ffn_in")
    b, c, h, w = x.shape
    cen, scale = parts
    out, inner = padded_buffer(x, c, workspace, "ffn_in")
    torch.mul(cen.view(b, h, w, c), scale.view(b, h, w, 1), out=inner.permute(0, 2, 3, 1))
    return reflect_border_(out)


class ChannelAttention(nn.Module):
    """Multi-head *transposed* (channel) self-attention of Restormer, as used by EMMA.

    q, k and v come from a bias-free 1x1 convolution followed by a bias-free 3x3 convolution
    (zero padding); q and k are L2-normalised over the pixels, each head's channel-by-channel
    affinity is scaled by a learnable temperature and soft-maxed, and the attended values are
    projected by a 1x1 convolution.

    Args:
        channels: number of channels C (divisible by ``num_heads``).
        num_heads: number of heads.
    """

    def __init__(self, channels: int, num_heads: int = 8) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv_pointwise = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.qkv_spatial = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_spatial(self.qkv_pointwise(x)).chunk(3, dim=1)
        q = F.normalize(q.reshape(b, self.num_heads, -1, h * w), dim=-1)
        k = F.normalize(k.reshape(b, self.num_heads, -1, h * w), dim=-1)
        v = v.reshape(b, self.num_heads, -1, h * w)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """The 1x1 and 3x3 qkv convolutions composed into one 3x3 convolution (exact: both are
        bias-free and the zero padding of the 3x3 commutes with the 1x1)."""
        qkv = torch.einsum("omyx,mi->oiyx", self.qkv_spatial.weight, self.qkv_pointwise.weight[:, :, 0, 0])
        c = self.proj.weight.shape[0]
        proj = self.proj.weight[:, :, 0, 0]
        out = {"qkv": qkv, "proj": proj, "temperature": self.temperature.reshape(1, self.num_heads, 1, 1)}
        if c == self.num_heads:
            # One channel per head: each head's softmax runs over a single entry and is exactly 1,
            # so the attention output is proj(v); fold proj into the v part of the qkv conv.
            out["value_proj"] = torch.einsum("om,miyx->oiyx", proj, qkv[2 * c :])
        return out

    def forward_fast(self, x: torch.Tensor, residual: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return ``residual + self(x)`` from merged weights (no grad)."""
        if "value_proj" in w:
            return torch.add(residual, F.conv2d(x, w["value_proj"], padding=1))
        b, c, h, wd = x.shape
        heads = self.num_heads
        qkv = F.conv2d(x, w["qkv"], padding=1).reshape(b, 3, c, h * wd)
        q = qkv[:, 0].reshape(b, heads, c // heads, h * wd)
        k = qkv[:, 1].reshape(b, heads, c // heads, h * wd)
        # normalise before the product (as the plain path does) so huge activations stay finite
        q = q / q.norm(dim=-1, keepdim=True).clamp_min_(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min_(1e-12)
        attn = ((q @ k.transpose(-2, -1)) * w["temperature"]).softmax(dim=-1)
        # proj o blockdiag(attn): one C x C matrix per sample, applied to v in a single bmm.
        mix = torch.einsum("ohi,bhij->bohj", w["proj"].reshape(c, heads, c // heads), attn).reshape(b, c, c)
        return _channel_matmul_add(residual, mix, qkv[:, 2])


class GatedFeedForward(nn.Module):
    """Gated-GELU feed-forward of Restormer: 1x1 expand to 2 * hidden, grouped 3x3 (reflect
    padding, two channels per group), ``gelu(x1) * x2``, 1x1 project back.

    Args:
        channels: input and output channels.
        expansion: hidden channels = ``int(channels * expansion)``.
    """

    def __init__(self, channels: int, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden, bias=False, padding_mode="reflect")
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class GlobalBranch(nn.Module):
    """Transformer half of a Restormer-CNN block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``.

    Args:
        channels: number of channels.
        num_heads: attention heads.
        ffn_expansion: expansion of the gated feed-forward.
    """

    def __init__(self, channels: int, num_heads: int = 8, ffn_expansion: float = 1.0) -> None:
        super().__init__()
        self.attn_norm = ChannelLayerNorm(channels)
        self.attn = ChannelAttention(channels, num_heads)
        self.ffn_norm = ChannelLayerNorm(channels)
        self.ffn = GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))

    def merged_weights(self) -> dict[str, Any]:
        ffn = self.ffn
        hidden = ffn.project_out.weight.shape[1]
        # ffn norm affine -> project_in (1x1) -> grouped 3x3 (reflect) composed into one dense 3x3
        # conv with a bias; exact because reflect padding commutes with per-pixel affine maps.
        w_in = ffn.project_in.weight[:, :, 0, 0] * self.ffn_norm.weight
        b_in = ffn.project_in.weight[:, :, 0, 0] @ self.ffn_norm.bias
        dw = ffn.dwconv.weight
        per_group = dw.shape[1]
        dense = torch.zeros(dw.shape[0], dw.shape[0], 3, 3, dtype=dw.dtype, device=dw.device)
        for o in range(dw.shape[0]):
            g0 = (o // per_group) * per_group
            dense[o, g0 : g0 + per_group] = dw[o]
        w_full = torch.einsum("ojyx,ji->oiyx", dense, w_in)
        b_full = torch.einsum("ojyx,j->o", dense, b_in)
        return {
            "attn": self.attn.merged_weights(),
            "ffn_gate_w": w_full[:hidden].contiguous(memory_format=torch.channels_last),
            "ffn_gate_b": b_full[:hidden].contiguous(),
            "ffn_value_w": w_full[hidden:].contiguous(memory_format=torch.channels_last),
            "ffn_value_b": b_full[hidden:].contiguous(),
            "ffn_out": ffn.project_out.weight[:, :, 0, 0],
        }

    def forward_fast(self, x: torch.Tensor, w: dict[str, Any], workspace: Workspace | None = None) -> torch.Tensor:
        n = self.attn_norm
        x = self.attn.forward_fast(_channel_layer_norm_fast(x, n.weight, n.bias, n.eps), x, w["attn"])
        y = _normalise_into_padded(x, self.ffn_norm.eps, workspace)
        # two convolutions, not one C -> 2C: GELU over a channel slice of a channels-last map
        # falls off the vectorised path and costs more than the convolution it saves
        g = F.gelu(F.conv2d(y, w["ffn_gate_w"], w["ffn_gate_b"])).mul_(F.conv2d(y, w["ffn_value_w"], w["ffn_value_b"]))
        return _channel_matmul_add(x, w["ffn_out"].expand(x.shape[0], -1, -1), g)


class ResidualConvBlock(nn.Module):
    """``x + conv2(act(conv1(x)))`` with 3x3 reflect-padded convolutions carrying biases.

    Args:
        channels: input and output channels.
        act: activation factory name or (name, kwargs) (MONAI ``Act``).
    """

    def __init__(self, channels: int, act: str | tuple = "relu") -> None:
        super().__init__()
        self.conv1 = reflect_conv(channels, channels, bias=True)
        self.act = get_act_layer(act)
        self.conv2 = reflect_conv(channels, channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))

    def forward_fast(
        self,
        padded: torch.Tensor,
        x: torch.Tensor,
        out: torch.Tensor | None = None,
        workspace: Workspace | None = None,
        role: Any = "res",
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Inference path on a reflect-padded input.

        Args:
            padded: (B, C, H + 2, W + 2) channels-last, the one-pixel reflect padding of ``x``.
            x: (B, C, H, W), the block input (the interior of ``padded``).
            out: optional (B, C, H, W) view to write the result into; its padding is then the
                caller's job.
            workspace: keeps the block's two padded buffers (roles ``(role, "mid")`` and
                ``(role, "out")``) between calls.

        Returns:
            ``(padded result, result)``; the padded result is ``None`` when ``out`` is given.
        """
        y = F.conv2d(padded, self.conv1.weight, self.conv1.bias)
        mid, mid_inner = padded_buffer(x, y.shape[1], workspace, (role, "mid"))
        if isinstance(self.act, nn.ReLU):
            torch.clamp_min(y, 0.0, out=mid_inner)
        else:
            mid_inner.copy_(self.act(y))
        y = F.conv2d(reflect_border_(mid), self.conv2.weight, self.conv2.bias)
        if out is not None:
            return None, torch.add(y, x, out=out)
        res, res_inner = padded_buffer(x, y.shape[1], workspace, (role, "out"))
        torch.add(y, x, out=res_inner)
        return reflect_border_(res), res_inner


class RestormerCNNBlock(nn.Module):
    """EMMA's Restormer-CNN block.

    A 3x3 embedding convolution, then in parallel a global (channel-attention transformer) branch
    and a local branch of two residual conv blocks, concatenated and merged by a 3x3 convolution.

    Args:
        in_channels: input channels.
        out_channels: output (and working) channels.
        num_heads: attention heads of the global branch.
        ffn_expansion: expansion of the gated feed-forward.
        num_local_blocks: residual conv blocks in the local branch.
        act: activation of the local branch (MONAI ``Act`` factory).

    Shape:
        (B, in_channels, H, W) -> (B, out_channels, H, W)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_heads: int = 8,
        ffn_expansion: float = 1.0,
        num_local_blocks: int = 2,
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        self.embed = reflect_conv(in_channels, out_channels)
        self.global_branch = GlobalBranch(out_channels, num_heads, ffn_expansion)
        self.local_branch = nn.Sequential(*[ResidualConvBlock(out_channels, act) for _ in range(num_local_blocks)])
        self.merge = reflect_conv(out_channels * 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        return self.merge(torch.cat((self.global_branch(x), self.local_branch(x)), dim=1))

    def merged_weights(self) -> dict[str, Any]:
        return {"global": self.global_branch.merged_weights()}

    def forward_fast(
        self, inputs: Sequence[torch.Tensor], w: dict[str, Any], workspace: Workspace | None = None
    ) -> torch.Tensor:
        """Inference path from :meth:`merged_weights`; ``inputs`` are concatenated along channels.

        Every padded buffer is consumed inside this call, so one ``workspace`` can serve all
        blocks in turn."""
        x = F.conv2d(reflect_pad_cat(*inputs, workspace=workspace, role="embed_in"), self.embed.weight)
        c = x.shape[1]
        g = self.global_branch.forward_fast(x, w["global"], workspace)
        # the local branch writes its result straight into the merge convolution's padded input
        merge_in, merge_inner = padded_buffer(x, 2 * c, workspace, "merge_in")
        padded, loc = reflect_pad_cat(x, workspace=workspace, role="local_in"), x
        last = len(self.local_branch) - 1
        for k, blk in enumerate(self.local_branch):
            target = merge_inner[:, c:] if k == last else None
            padded, loc = blk.forward_fast(padded, loc, out=target, workspace=workspace, role=("local", k))
        if last < 0:
            merge_inner[:, c:].copy_(x)
        merge_inner[:, :c].copy_(g)
        return F.conv2d(reflect_border_(merge_in), self.merge.weight)
