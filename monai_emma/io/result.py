"""What a fusion produced (shared by the fusion functions, the dictionary transforms and the writers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_emma.io.volumes import Volume

__all__ = ["FusionResult"]


@dataclass
class FusionResult:
    """What a fusion produced.

    Attributes:
        fused: 3D: float32 (X, Y, Z) in [0, 1] on the anatomical grid and voxel order; 2D: uint8
            (H, W) grey or (H, W, 3) colour, the image that ``fuse-folder`` writes.
        anatomical: the anatomical input.
        other: the second input (on its own grid).
        anatomical_scaled: the anatomical image in [0, 1] as the network saw it (anatomical grid).
        other_scaled: the second modality in [0, 1] on the anatomical grid.
        modality: the second modality used for scaling (``"ct"``, ``"pet"``, ``"spect"``, ``"ir"``).
        other_units: the second modality's units before scaling when converted (``"SUVbw"``).
        other_scale: the second modality's values (in those units) that became 0 and 1.
        coverage: the fraction of anatomical voxels inside the second modality's field of view.
        seconds: wall time of the whole fusion, reading included.
        notes: remarks worth showing the user (guessed modality, partial overlap…).
        registration: the :class:`~monai_emma.transforms.registration.Registration` applied to the
            second modality (``--register``), or None.
        anatomical_modality: ``"mri"``, ``"ct"`` (PET/CT, SPECT/CT) or ``"vis"`` (infrared pairs).
        anatomical_scale: the anatomical image's values (HU for a CT base) that became 0 and 1.
        scaling: how each image was scaled, ``{"anatomical": "...", "other": "..."}`` (for notes).
    """

    fused: np.ndarray
    anatomical: Volume
    other: Volume
    anatomical_scaled: np.ndarray
    other_scaled: np.ndarray
    modality: str
    other_units: str = ""
    other_scale: tuple[float, float] = (0.0, 1.0)
    coverage: float = 1.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    registration: Any = None
    anatomical_modality: str = "mri"
    anatomical_scale: tuple[float, float] = (0.0, 1.0)
    scaling: dict[str, str] = field(default_factory=dict)

    @property
    def is_3d(self) -> bool:
        return self.anatomical.is_3d
