"""A fusion in the browser: one self-contained HTML file that opens offline in any browser.

The page shows the anatomical image, the second modality (hot colour map), the fused image and
the viewer-style overlay side by side, in axial, coronal and sagittal views linked by a
crosshair (click any view to move it), with slice sliders, a display window for the grey images,
and the overlay's opacity and threshold. With a fidelity report it adds a per-slice chart of the
fidelity gains, flagged slices in red; a click on it goes to that slice.

Why not NiiVue or another WebGL viewer: the page is a plain 2D canvas, so it draws wherever a
browser runs, WebGL or not (headless test browsers, remote desktops, locked-down hospital PCs),
weighs a few kilobytes of script, and ships no third-party code. The volumes are embedded as
8-bit, zlib-compressed, base64 data and unpacked by the browser's own ``DecompressionStream``
(Chromium 80+, Firefox 113+, Safari 16.4+).

Example:
    >>> from monai_emma.fusion import fuse_volumes  # doctest: +SKIP
    >>> write_viewer(fuse_volumes("mri.nii.gz", "pet.nii.gz"), "fused.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from monai_emma.fidelity import FidelityReport
    from monai_emma.io.result import FusionResult

__all__ = ["viewer_html", "write_viewer"]

#: the largest side of a view on screen, CSS pixels
DISPLAY_PX = 300


def _display_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (rows, columns, slices) of a volume in display orientation."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    from monai_emma.transforms.geometry import DISPLAY_AXCODES

    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(DISPLAY_AXCODES))
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(spacing[axis])
    return out[0], out[1], out[2]


def _stacks(result: FusionResult) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """The three images as (slices, rows, columns) in [0, 1], and their (slice, row, column) spacing."""
    if result.is_3d:
        from monai_emma.transforms.geometry import to_display

        affine = result.anatomical.affine
        sources = {"anatomical": result.anatomical_scaled, "other": result.other_scaled, "fused": result.fused}
        views = {name: to_display(np.asarray(v, np.float32), affine) for name, v in sources.items()}
        sr, sc, sz = _display_spacing(affine)
        return {k: np.moveaxis(v, -1, 0) for k, v in views.items()}, (sz, sr, sc)
    fused = np.asarray(result.fused, np.float64) / 255.0
    if fused.ndim == 3:  # a 2D colour result: its luminance
        from monai_emma.transforms.colour import rgb_to_ycbcr

        fused = rgb_to_ycbcr(fused, -1)[..., 0]
    views = {"anatomical": result.anatomical_scaled, "other": result.other_scaled, "fused": fused}
    return {k: np.asarray(v, np.float32)[None] for k, v in views.items()}, (1.0, 1.0, 1.0)


def _pack(v: np.ndarray) -> str:
    u8 = np.round(np.clip(np.nan_to_num(v), 0.0, 1.0) * 255.0).astype(np.uint8)
    return base64.b64encode(zlib.compress(np.ascontiguousarray(u8).tobytes(), 6)).decode("ascii")


def viewer_html(result: FusionResult, report: FidelityReport | dict | None = None, title: str | None = None) -> str:
    """The viewer page of a fusion, as one HTML string (see the module docstring).

    Args:
        result: from :func:`~monai_emma.fusion.fuse_volumes` or :func:`~monai_emma.fusion.fuse_images`.
        report: its fidelity report (:func:`~monai_emma.fidelity.fidelity_report`) for the chart.
        title: the page title (default: the inputs' names).
    """
    from monai_emma.io.outputs import OverlayStyle

    stacks, spacing = _stacks(result)
    base = {"ct": "CT", "vis": "visible"}.get(result.anatomical_modality, "MRI")
    other = (result.modality or "other").upper()
    title = title or f"EMMA fusion: {result.anatomical.path.name} + {result.other.path.name}"
    rep = report.as_dict() if hasattr(report, "as_dict") else report
    start = 0
    if stacks["fused"].shape[0] > 1:  # the slice with the most of both sources; flags are one click away
        content = ((stacks["anatomical"] > 0.05) & (stacks["other"] > 0.05)).sum(axis=(1, 2))
        start = int(np.argmax(content))
    threshold = OverlayStyle().scaled_threshold(result) if result.modality in ("pet", "spect") else 0.3
    data: dict[str, Any] = {
        "shape": list(stacks["fused"].shape),
        "spacing": [round(float(s), 5) for s in spacing],
        "labels": {"anatomical": base, "other": other, "fused": "EMMA fused", "overlay": f"overlay ({other})"},
        "notes": [*result.notes, f"{base} {result.anatomical.path.name}", f"{other} {result.other.path.name}"],
        "start": [start],
        "threshold": int(round(255 * float(threshold))),
        "display_px": DISPLAY_PX,
        "report": rep,
        "volumes": {k: _pack(v) for k, v in stacks.items()},
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # nothing closes the script
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


def write_viewer(
    result: FusionResult,
    path: str | os.PathLike,
    report: FidelityReport | dict | None = None,
    overwrite: bool = False,
    title: str | None = None,
) -> Path:
    """Write :func:`viewer_html` to ``path`` (atomically: a temporary name first).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from monai_emma.io.atomic import atomic_path

    page = viewer_html(result, report, title)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
