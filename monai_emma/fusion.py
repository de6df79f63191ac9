"""Fusing an anatomical image with another modality: 2D images, NIfTI volumes, DICOM series.

The volume path (:func:`fuse_volumes`):

1. read both inputs (:func:`monai_emma.io.volumes.read_volume`);
2. scale each to [0, 1] on its own grid (:class:`~monai_emma.transforms.ModalityScale`; CT by a
   Hounsfield window, PET/SPECT by percentiles, MRI by robust percentiles);
3. resample the second modality onto the anatomical grid (MONAI ``ResampleToMatch``, zeros
   outside its field of view; no overlap at all is an error);
4. reorient to axial slices in display orientation and fuse slice by slice in batches
   (:class:`~monai_emma.inferers.FusionInferer`);
5. return the fused volume on the anatomical grid, in its voxel order.

The 2D path (:func:`fuse_images`) fuses luminance and recombines colour from the pixels of the
second image (pseudo-colour PET/SPECT), exactly like ``monai-emma fuse-folder``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from monai_emma.io.volumes import Volume, read_volume
from monai_emma.transforms.intensity import DEFAULT_INTENSITY, IntensityRule, ModalityScale

__all__ = [
    "FusionError",
    "FusionResult",
    "fuse_volumes",
    "fuse_images",
    "guess_modality",
    "default_intensity_table",
    "MODALITIES",
]

#: Second-modality names accepted by ``--modality``.
MODALITIES = ("ct", "pet", "spect", "ir")
_DICOM_MODALITY = {"CT": "ct", "PT": "pet", "NM": "spect", "ST": "spect"}


class FusionError(ValueError):
    """The inputs cannot be fused as asked; one line naming them and the problem."""


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
        coverage: the fraction of anatomical voxels inside the second modality's field of view.
        seconds: wall time of the whole fusion, reading included.
        notes: remarks worth showing the user (guessed modality, partial overlap…).
    """

    fused: np.ndarray
    anatomical: Volume
    other: Volume
    anatomical_scaled: np.ndarray
    other_scaled: np.ndarray
    modality: str
    coverage: float = 1.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def is_3d(self) -> bool:
        return self.anatomical.is_3d


def guess_modality(volume: Volume) -> tuple[str, str]:
    """The second modality from DICOM's ``Modality`` or, failing that, from the values (Hounsfield
    units go far below zero); returns ``(modality, how)``."""
    if volume.modality.upper() in _DICOM_MODALITY:
        return _DICOM_MODALITY[volume.modality.upper()], f"DICOM Modality {volume.modality}"
    if volume.is_3d and float(volume.array.min()) <= -500:
        return "ct", "values below -500 (Hounsfield units)"
    return "pet", "no --modality given; scaled as functional (PET/SPECT) uptake"


def _as_volume(x: Volume | str | os.PathLike, series_uid: str | Sequence[str] | None) -> Volume:
    return x if isinstance(x, Volume) else read_volume(x, series_uid)


def _stretch_slices(stack: np.ndarray) -> np.ndarray:
    """Min-max stretch every slice of a (rows, cols, slices) stack to [0, 1]."""
    lo = stack.min(axis=(0, 1), keepdims=True)
    hi = stack.max(axis=(0, 1), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (stack - lo) / span, 0.0).astype(np.float32)


def fuse_volumes(
    anatomical: Volume | str | os.PathLike,
    other: Volume | str | os.PathLike,
    model: torch.nn.Module | None = None,
    modality: str | None = None,
    anatomical_rule: IntensityRule | None = None,
    other_rule: IntensityRule | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    amp: bool = False,
    stretch: bool = False,
    progress: bool = False,
    anatomical_series: str | Sequence[str] | None = None,
    other_series: str | Sequence[str] | None = None,
    zero_empty: bool = True,
) -> FusionResult:
    """Fuse two 3D images (NIfTI, DICOM series or single DICOM slices) on the anatomical grid.

    Args:
        anatomical: MRI (the reference grid): a path or a :class:`~monai_emma.io.volumes.Volume`.
        other: CT, PET or SPECT, on any grid that overlaps the anatomical one.
        model: the 2D fuser (default: the shipped U-Fuser).
        modality: ``"ct"``, ``"pet"``, ``"spect"`` or ``"ir"``; guessed when omitted.
        anatomical_rule: intensity rule for the anatomical image (default: MRI percentiles).
        other_rule: intensity rule for the second modality (default: the modality's).
        device: where the network runs.
        batch_size: slices per network call (default: 4 on CPU, where larger batches are no
            faster, and 16 on CUDA; see ``benchmarks/bench_fuse_volume.py``).
        amp: mixed precision on CUDA.
        stretch: min-max stretch each fused slice (the papers' protocol) instead of clipping.
        progress: show a progress bar over slice batches.
        anatomical_series: SeriesInstanceUID when the anatomical folder holds several series.
        other_series: the same for the second input.
        zero_empty: the fused image is 0 where both scaled inputs are (no halo; see
            :mod:`monai_emma.transforms.empty`).

    Returns:
        A :class:`FusionResult` whose ``fused`` is float32 (X, Y, Z) in [0, 1].

    Raises:
        VolumeReadError: an input is missing or unreadable.
        FusionError: 2D mixed with 3D, or fields of view that do not overlap.

    Example:
        >>> result = fuse_volumes("mri.nii.gz", "pet.nii.gz", modality="pet")  # doctest: +SKIP
        >>> result.fused.shape == result.anatomical.array.shape  # doctest: +SKIP
        True
    """
    from monai_emma.inferers import FusionInferer
    from monai_emma.transforms.geometry import DisplayOrientation, coverage_mask, resample_to_grid

    t0 = time.perf_counter()
    a, b = _as_volume(anatomical, anatomical_series), _as_volume(other, other_series)
    if not (a.is_3d and b.is_3d):
        flat = a if not a.is_3d else b
        raise FusionError(
            f"{flat.path}: a 2D image cannot be fused with a 3D volume; give two 2D images or two volumes"
        )
    notes: list[str] = []
    if modality is None:
        modality, how = guess_modality(b)
        notes.append(f"modality {modality} ({how})")
    modality = modality.lower()
    if modality not in MODALITIES:
        raise FusionError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    a_scaled = ModalityScale("vis" if modality == "ir" else "mri", anatomical_rule)(a.array)
    b_scaled = ModalityScale(modality, other_rule)(b.array)

    inside = coverage_mask(b.array.shape, b.affine, a.array.shape, a.affine)
    coverage = float(inside.mean())
    if coverage == 0.0:
        raise FusionError(f"{a.path} and {b.path}: the fields of view do not overlap (check both affines)")
    if coverage < 0.999:
        notes.append(f"{b.path.name} covers {100 * coverage:.1f}% of the anatomical grid; 0 outside it")
    b_on_a = resample_to_grid(b_scaled, b.affine, a.array.shape, a.affine) * inside

    orient = DisplayOrientation(a.affine)
    stack = np.stack([orient.to_display(a_scaled), orient.to_display(b_on_a)])[None]  # (1, 2, H, W, D)
    if model is None:
        from monai_emma.model_source import resolve_fuser

        model, _ = resolve_fuser()
    dev = torch.device(device)
    batch_size = batch_size or (16 if dev.type == "cuda" else 4)
    model = model.to(dev).eval() if isinstance(model, torch.nn.Module) else model
    inferer = FusionInferer(
        sw_batch_size=batch_size, amp=amp, progress=progress, sw_device=dev, device="cpu", zero_empty=zero_empty
    )
    fused = inferer(torch.from_numpy(stack), model)[0, 0].numpy()
    if not np.isfinite(fused).all():
        raise FusionError(f"{a.path}: the network produced non-finite values")
    fused = _stretch_slices(fused) if stretch else np.clip(fused, 0.0, 1.0).astype(np.float32)
    return FusionResult(
        fused=orient.from_display(fused),
        anatomical=a,
        other=b,
        anatomical_scaled=a_scaled,
        other_scaled=b_on_a,
        modality=modality,
        coverage=coverage,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )


def fuse_images(
    anatomical: Volume | str | os.PathLike,
    other: Volume | str | os.PathLike,
    model: torch.nn.Module | None = None,
    modality: str | None = None,
    device: str | torch.device = "cpu",
    stretch: bool = False,
    resize: bool = False,
    zero_empty: bool = True,
) -> FusionResult:
    """Fuse two 2D images (PNG, JPEG, BMP, TIFF; grey or RGB) into the 8-bit image users see.

    Colour comes from the pixels: a second image in colour (pseudo-colour PET/SPECT) is fused on
    luminance and recombined with its Cb/Cr; otherwise the result is grey.

    Args:
        anatomical: the MRI (or visible) image.
        other: the CT/PET/SPECT (or infrared) image.
        model: the fuser (default: the shipped U-Fuser).
        modality: recorded in the result (2D images are 8-bit, so scaling is by 255).
        device: where the network runs.
        stretch: min-max stretch the fused luminance (the papers' protocol).
        resize: resample the second image to the anatomical size when they differ (otherwise an error).
        zero_empty: the fused image is 0 where both sources are.

    Returns:
        A :class:`FusionResult` whose ``fused`` is uint8 (H, W) or (H, W, 3).
    """
    from monai_emma.fuse2d import fuse_slice_pair, luminance, network_fuser

    t0 = time.perf_counter()
    a, b = _as_volume(anatomical, None), _as_volume(other, None)
    if a.is_3d or b.is_3d:
        vol = a if a.is_3d else b
        raise FusionError(f"{vol.path}: a 3D volume cannot be fused with a 2D image; give two 2D images or two volumes")
    for v in (a, b):
        if float(v.array.max()) > 255:
            raise FusionError(f"{v.path}: more than 8 bits per sample; convert to 8-bit or use NIfTI")
    b_img = b.array
    if a.array.shape[-2:] != b_img.shape[-2:]:
        if not resize:
            raise FusionError(
                f"{a.path} and {b.path}: sizes differ ({a.array.shape[-2]}x{a.array.shape[-1]} vs "
                f"{b_img.shape[-2]}x{b_img.shape[-1]}); pass --resize to resample the second image"
            )
        import cv2

        h, w = a.array.shape[-2:]
        b_img = np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_LINEAR) for ch in b_img])
    if model is None:
        from monai_emma.model_source import resolve_fuser

        model, _ = resolve_fuser()
    fused = fuse_slice_pair(network_fuser(model, device, zero_empty), a.array, b_img, stretch=stretch)
    return FusionResult(
        fused=fused,
        anatomical=a,
        other=b,
        anatomical_scaled=luminance(a.array),
        other_scaled=luminance(b_img),
        modality=(modality or "").lower(),
        seconds=time.perf_counter() - t0,
    )


def default_intensity_table() -> str:
    """The default intensity rules, one line per modality (for help texts and docs)."""
    return "; ".join(f"{m}: {r.describe()}" for m, r in DEFAULT_INTENSITY.items())
