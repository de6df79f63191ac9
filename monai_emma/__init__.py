"""monai-emma: EMMA (Equivariant Multi-Modality Image Fusion) for MONAI.

Sub-packages load on first use (``import monai_emma`` stays quick, and ``monai_emma.bundle``
works in MONAI bundle expressions after ``$import monai_emma``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_SUBMODULES = (
    "baselines",
    "bundle",
    "cli",
    "data",
    "engines",
    "errors",
    "evaluation",
    "fuse2d",
    "fusion",
    "inferers",
    "io",
    "losses",
    "metrics",
    "model_source",
    "networks",
    "transforms",
    "weights",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
