"""Writing a :class:`~monai_emma.io.result.FusionResult`: PNG, NIfTI or a derived DICOM series, an
optional colour rendering and a preview montage. Shared by ``monai-emma fuse`` and the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from monai_emma.io.result import FusionResult

__all__ = [
    "output_format",
    "rendering_path",
    "colour_path",
    "OverlayStyle",
    "preview_slices",
    "save_preview",
    "write_fusion",
    "fusion_targets",
    "check_output",
    "OUTPUT_FORMATS",
]

OUTPUT_FORMATS = ("png", "nifti", "dicom")
_PNG_SUFFIXES = (".png",)


def output_format(path: str | os.PathLike, requested: str | None = None) -> str:
    """The output format: ``requested`` if given, else from the path's suffix.

    Raises:
        ValueError: unknown format or a path whose suffix says nothing.
    """
    if requested:
        if requested not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {requested!r}; choose {', '.join(OUTPUT_FORMATS)}")
        return requested
    name = Path(path).name.lower()
    if name.endswith(_PNG_SUFFIXES):
        return "png"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise ValueError(f"{path}: cannot tell the output format from the name; use .png, .nii.gz or --output-format dicom")


def check_output(output: str | os.PathLike, fmt: str, is_3d: bool, anatomical_kind: str) -> None:
    """That an output format fits the inputs, checkable before anything is read (``input_kind``).

    Raises:
        ValueError: PNG for volumes, NIfTI or DICOM for 2D images, DICOM without a DICOM
            anatomical series.
    """
    if is_3d and fmt == "png":
        raise ValueError(f"{output}: PNG output is for 2D inputs; use .nii.gz or --output-format dicom for volumes")
    if not is_3d and fmt != "png":
        raise ValueError(f"{output}: 2D inputs are written as PNG")
    if fmt == "dicom" and anatomical_kind != "dicom":
        raise ValueError(
            f"{output}: DICOM output needs a DICOM anatomical series (the anatomical input is {anatomical_kind})"
        )


def fusion_targets(
    output: str | os.PathLike,
    fmt: str,
    colour: bool = False,
    overlay: bool = False,
    preview: str | os.PathLike | None = None,
    registered: bool = False,
) -> dict[str, Path]:
    """Every file :func:`write_fusion` may write for these options, by label (``fused``,
    ``colour``, ``overlay``, ``preview``, ``transform``): known before any input is read, so a
    command can check them all first.

    Example:
        >>> sorted(fusion_targets("f.nii.gz", "nifti", colour=True, registered=True).values())
        [PosixPath('f.nii.gz'), PosixPath('f_colour.nii.gz'), PosixPath('f_registration.tfm')]
    """
    targets = {"fused": Path(output)}
    if colour:
        targets["colour"] = rendering_path(output, fmt, "colour")
    if overlay:
        targets["overlay"] = rendering_path(output, fmt, "overlay")
    if preview:
        targets["preview"] = Path(preview)
    if registered:  # the transform that aligned the second modality, for ITK/Slicer
        targets["transform"] = rendering_path(output, fmt, "registration").with_suffix("").with_suffix(".tfm")
    return targets


def rendering_path(output: str | os.PathLike, fmt: str, label: str) -> Path:
    """Where a rendering goes: ``x.png`` → ``x_<label>.png``; ``x.nii.gz`` or a DICOM folder ``x``
    → ``x_<label>.nii.gz``."""
    out = Path(output)
    name = out.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(f"{name}_{label}{'.png' if fmt == 'png' else '.nii.gz'}")


def colour_path(output: str | os.PathLike, fmt: str) -> Path:
    """Where the colour rendering goes (:func:`rendering_path` with ``colour``)."""
    return rendering_path(output, fmt, "colour")


@dataclass(frozen=True)
class OverlayStyle:
    """How to draw the viewer-style overlay (:func:`~monai_emma.transforms.colour.overlay`).

    Args:
        colormap: colour map of the functional image.
        threshold: the functional value below which no colour is drawn, in its units before
            scaling (SUV when converted, else stored values); ``None``: SUV 2.5 when in SUV, else
            30 % of the way through its scaling window.
        opacity: weight of the colour where drawn.
    """

    colormap: str = "hot"
    threshold: float | None = None
    opacity: float = 0.5

    def scaled_threshold(self, result: FusionResult) -> float:
        """The threshold on the [0, 1] scale of ``result.other_scaled``."""
        lo, hi = result.other_scale
        value = self.threshold
        if value is None:
            if result.other_units != "SUVbw":
                return 0.3
            value = 2.5
        return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0)) if hi > lo else 0.0


def preview_slices(stack: np.ndarray, count: int = 4) -> list[int]:
    """Evenly spaced slice indices across the foreground of a (rows, columns, slices) stack."""
    profile = stack.reshape(-1, stack.shape[-1]).mean(axis=0)
    filled = np.flatnonzero(profile > 0.1 * profile.max()) if profile.max() > 0 else np.arange(stack.shape[-1])
    lo, hi = (int(filled[0]), int(filled[-1])) if filled.size else (0, stack.shape[-1] - 1)
    picks = np.linspace(lo, hi, count + 2)[1:-1] if hi - lo + 1 > count else np.arange(lo, hi + 1)
    return sorted({int(round(p)) for p in picks})


def save_preview(
    result: FusionResult, path: str | os.PathLike, renderings: dict[str, np.ndarray] | None = None
) -> Path:
    """A montage of sources and fused images: one row per slice (3D) or the pair (2D).

    Args:
        result: the fusion.
        path: PNG to write (atomically).
        renderings: more columns, ``{title: RGB}`` in the layout of ``result.fused`` plus a last
            axis of 3 (the colour rendering, the overlay).
    """
    from monai_emma.io.png import save_montage

    renderings = renderings or {}
    mod = (result.modality or "other").upper()
    titles = ["anatomical", mod, "EMMA fused", *renderings]
    if not result.is_3d:
        row = [result.anatomical_scaled, result.other_scaled, result.fused, *renderings.values()]
        return save_montage([row], path, titles=titles)
    from monai_emma.transforms.geometry import to_display

    affine = result.anatomical.affine
    views = [to_display(v, affine) for v in (result.anatomical_scaled, result.other_scaled, result.fused)]
    views += [to_display(r, affine) for r in renderings.values()]
    rows = [[v[:, :, k] for v in views] for k in preview_slices(views[0])]
    return save_montage(rows, path, titles=titles)


def write_fusion(
    result: FusionResult,
    output: str | os.PathLike,
    fmt: str | None = None,
    colormap: str | None = None,
    preview: str | os.PathLike | None = None,
    overwrite: bool = False,
    overlay: OverlayStyle | None = None,
    stage: Callable[[Path], Path] | None = None,
) -> dict[str, Path]:
    """Write a fusion result; every file goes to a temporary name first.

    Args:
        result: from :func:`~monai_emma.fusion.fuse_volumes` or :func:`~monai_emma.fusion.fuse_images`.
        output: ``.png`` (2D), ``.nii``/``.nii.gz`` (3D) or a folder for ``fmt="dicom"``.
        fmt: ``"png"``, ``"nifti"`` or ``"dicom"``; from the suffix when omitted.
        colormap: also write a colour rendering (colour-mapped second modality with the fused
            luminance) to :func:`colour_path`.
        preview: also write a montage PNG there.
        overwrite: replace existing outputs.
        overlay: also write the viewer-style overlay (grey fusion, thresholded semi-transparent
            colour of the functional image) to :func:`rendering_path` with ``overlay``.
        stage: where to write each target instead (e.g. :meth:`~monai_emma.io.atomic.OutputSet.path`,
            so that a command publishes all its outputs together); the targets are returned.

    Returns:
        ``{"fused": path, "colour": path, "overlay": path, "preview": path, "transform": path}``
        for what was written (``transform``: the registration as an ITK ``.tfm``, when registered).

    Raises:
        ValueError: a format that does not fit the inputs (PNG for volumes, NIfTI for 2D images,
            DICOM without a DICOM anatomical series).
        FileExistsError: an output exists and ``overwrite`` is false (checked before writing anything).
    """
    from monai_emma import __version__
    from monai_emma.transforms.colour import colourise
    from monai_emma.transforms.colour import overlay as paint_overlay

    fmt = output_format(output, fmt)
    a = result.anatomical
    check_output(output, fmt, result.is_3d, a.kind)
    renderings: dict[str, np.ndarray] = {}
    grey = None
    if result.is_3d:
        grey = result.fused
    elif result.fused.ndim == 2:  # a 2D colour result already carries the second image's colour
        grey = result.fused.astype(np.float64) / 255.0
    if colormap and grey is not None:
        renderings["colour"] = colourise(grey, result.other_scaled, colormap)
    if overlay is not None:
        luminance = grey if grey is not None else _luma(result.fused)
        renderings["overlay"] = paint_overlay(
            luminance, result.other_scaled, overlay.colormap, overlay.scaled_threshold(result), overlay.opacity
        )
    targets = fusion_targets(
        output, fmt, "colour" in renderings, "overlay" in renderings, preview, result.registration is not None
    )
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite and stage is None:
        raise FileExistsError(f"{existing[0]}: output exists (use --overwrite to replace it)")
    where = {label: (stage(p) if stage else p) for label, p in targets.items()}

    base = {"ct": "CT", "vis": "VIS"}.get(result.anatomical_modality, "MR")
    mods = f"{(a.modality or base).upper()} + {(result.modality or 'other').upper()}"
    if result.other_units:
        mods += f" ({result.other_units})"
    description = f"EMMA fusion (monai-emma {__version__}) of {mods}"
    if fmt == "png":
        from monai_emma.io.png import save_png

        save_png(result.fused, where["fused"])
        for label, image in renderings.items():
            save_png(image, where[label])
    else:
        from monai_emma.io.nifti import save_nifti_like

        if fmt == "nifti":
            save_nifti_like(result.fused, a, where["fused"], overwrite=True, description=description)
        else:
            from monai_emma.io.dicom import write_derived_series

            uids = tuple(u for u in (a.series_uid, result.other.series_uid) if u)
            write_derived_series(
                result.fused,
                a,
                where["fused"],
                description=description,
                series_description=f"EMMA fused {mods}",
                overwrite=True,
                source_uids=uids,
            )
        for label, image in renderings.items():
            save_nifti_like(image, a, where[label], overwrite=True, description=f"{description}, {label}")
    if preview:
        save_preview(result, where["preview"], renderings)
    if "transform" in targets:
        from monai_emma.transforms.registration import write_transform

        write_transform(result.registration, where["transform"])
    return targets


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Y in [0, 1] of an 8-bit RGB image."""
    from monai_emma.transforms.colour import rgb_to_ycbcr

    return rgb_to_ycbcr(np.asarray(rgb, np.float64) / 255.0, -1)[..., 0]
