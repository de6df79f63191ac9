"""Export the U-Fuser for deployment outside PyTorch: ONNX with dynamic batch, height and width.

``torch.export`` records one graph for every size (:meth:`UFuser._forward_export`: the reflect
padding to a multiple of 8 is always in the graph, possibly zero), which the ONNX exporter
translates; ONNX Runtime then fuses any H, W >= 16. Needs ``pip install "monai-emma[export]"``
(onnx, onnxscript; onnxruntime to run or check the file).

TorchScript is not offered: scripting fails on the network's Python-side padding logic, tracing
would freeze the padding for one input size, and TorchScript is in maintenance in PyTorch 2.x.
Use ONNX, or ``torch.export`` (the bundle's ``export.json`` writes a ``.pt2``).

Example:
    >>> from monai_emma.networks import ufuser  # doctest: +SKIP
    >>> path = export_onnx(ufuser(weights="default"), "ufuser.onnx")  # doctest: +SKIP
    >>> check_onnx(path, ufuser(weights="default"), [(1, 256, 256), (2, 97, 131)])  # doctest: +SKIP
    6.9e-07
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["MIN_SIZE", "export_onnx", "check_onnx"]

#: the smallest height and width an exported graph accepts
MIN_SIZE = 16


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs {module}, which is not installed: pip install 'monai-emma[export]'"
        ) from err


def export_onnx(
    net: torch.nn.Module, path: str | os.PathLike, opset: int = 18, max_size: int = 8192, optimize: bool = True
) -> Path:
    """Write the U-Fuser as ONNX with input ``image`` (B, 2, H, W) and output ``pred`` (B, 1, H, W),
    B, H and W dynamic (H, W from :data:`MIN_SIZE` to ``max_size``). Written to a temporary name
    first, so a failed export leaves nothing.

    Raises:
        ImportError: onnx or onnxscript missing (the message names the extra).
    """
    _require("onnx"), _require("onnxscript")
    net = net.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=MIN_SIZE, max=max_size)
    width = torch.export.Dim("width", min=MIN_SIZE, max=max_size)
    example = torch.rand(2, 2, 96, 128, device=next(net.parameters()).device)  # batch 2: not specialised
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:  # networks import nothing above them, so the atomic write is spelt out here
        with torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                tmp,
                dynamo=True,
                input_names=["image"],
                output_names=["pred"],
                dynamic_shapes=({0: batch, 2: height, 3: width},),
                opset_version=opset,
                optimize=optimize,
                external_data=False,
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make a shared model file private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_onnx(
    path: str | os.PathLike, net: torch.nn.Module, sizes: Sequence[tuple[int, int, int]], seed: int = 0
) -> float:
    """The largest absolute difference between ONNX Runtime and PyTorch over random inputs of
    ``sizes`` ``(B, H, W)``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    net = net.eval()
    for b, h, w in sizes:
        x = torch.rand(b, 2, h, w, generator=gen)
        with torch.no_grad():
            ref = net(x.to(next(net.parameters()).device)).float().cpu().numpy()
        out = session.run(["pred"], {"image": x.numpy()})[0]
        if out.shape != ref.shape:
            raise AssertionError(f"{path}: output {out.shape} for input {tuple(x.shape)}, expected {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
