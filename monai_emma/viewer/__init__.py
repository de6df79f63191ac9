"""A fusion in the browser: one self-contained HTML file that opens offline in any browser.

The page shows the anatomical image, the second modality (hot colour map), the fused image and
the viewer-style overlay side by side, in axial, coronal and sagittal views linked by a
crosshair (click any view to move it), with orientation letters on every view, slice sliders, a
display window for the grey images in the anatomical image's units (HU for a CT base, the
source's values for MRI), the overlay's opacity and a threshold in the second modality's units
(SUV when converted, HU for CT), and a read-out of every image's value at the crosshair. With a
fidelity report it adds a per-slice chart of the fidelity gains with axes and each modality's
flag threshold, flagged slices in red; a click on it goes to that slice.

Why not NiiVue or another WebGL viewer: the page is a plain 2D canvas, so it draws wherever a
browser runs, WebGL or not (headless test browsers, remote desktops, locked-down hospital PCs),
weighs a few kilobytes of script, and ships no third-party code. The volumes are embedded as
8-bit, zlib-compressed, base64 data and unpacked by the browser's own ``DecompressionStream``
(Chromium 80+, Firefox 113+, Safari 16.4+). Each image's byte ``b`` stands for the value
``lo + b / 255 * (hi - lo)`` in its units; the page carries ``lo``, ``hi`` and the units of each.

Safe by construction: the template is filled in one pass (inserted text is never scanned again
for slots), every text is HTML-escaped, and the data sit in one ``application/json`` script
element with ``<``, ``>``, ``&``, U+2028 and U+2029 written as JSON escapes, so no file name,
title or DICOM text can end the element or run script; the page's script puts data into the
document with ``textContent`` only.

Page size: a 1 mm head makes a page of tens of megabytes; ``voxel_mm`` (e.g. 2.0) averages
blocks of voxels down to at most that size, which divides the page by about the block volume.
:func:`describe_page` gives the written file's size for a message.

Example:
    >>> from monai_emma.fusion import fuse_volumes  # doctest: +SKIP
    >>> path = write_viewer(fuse_volumes("mri.nii.gz", "pet.nii.gz"), "fused.html", voxel_mm=2.0)  # doctest: +SKIP
    >>> describe_page(path)  # doctest: +SKIP
    'fused.html (3.1 MB)'
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from monai_emma.fidelity import FidelityReport
    from monai_emma.io.result import FusionResult

__all__ = ["viewer_html", "write_viewer", "describe_page", "DISPLAY_PX"]

#: the largest side of a view on screen, CSS pixels
DISPLAY_PX = 300

#: the template's slots: ``__TITLE__`` (HTML-escaped text) and ``__DATA__`` (the JSON data)
_SLOTS = re.compile(r"__(TITLE|DATA)__")
#: characters written as JSON escapes inside the data element: nothing there can close or
#: comment out the script element, and U+2028/U+2029 cannot end a line of script
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_UNSAFE = re.compile("[<>&\u2028\u2029]")
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


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


def _orientation() -> dict[str, list[str]]:
    """The patient directions at the two ends (index 0, last index) of each display axis.

    An axis code of :data:`~monai_emma.transforms.geometry.DISPLAY_AXCODES` names the direction
    in which its index grows (``"P"``: rows run anterior to posterior), so index 0 lies at the
    opposite direction.
    """
    from monai_emma.transforms.geometry import DISPLAY_AXCODES

    rows, cols, slices = ([_OPPOSITE[code], code] for code in DISPLAY_AXCODES.upper())
    return {"rows": rows, "cols": cols, "slices": slices}


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


def _block_factors(spacing: tuple[float, float, float], voxel_mm: float | None) -> tuple[int, int, int]:
    """Voxels per block along each axis so that a block is at most ``voxel_mm`` (1: unchanged)."""
    if voxel_mm is None:
        return 1, 1, 1
    if not (isinstance(voxel_mm, (int, float)) and math.isfinite(voxel_mm) and voxel_mm > 0):
        raise ValueError(f"voxel_mm must be a positive number of millimetres, got {voxel_mm!r}")
    f = [max(1, int(math.floor(voxel_mm / s + 1e-6))) if s > 0 else 1 for s in spacing]
    return f[0], f[1], f[2]


def _block_mean(v: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The mean of each block of ``factors`` voxels (a smaller last block where a size does not divide)."""
    out = np.asarray(v, np.float32)
    for axis, f in enumerate(factors):
        if f <= 1:
            continue
        n = out.shape[axis]
        starts = np.arange(0, n, f)
        counts = np.diff(np.append(starts, n)).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = -1
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    return out


def _sig(x: float) -> float:
    """``x`` to 7 significant digits (float32 noise off fitted bounds: -99.99998 -> -100)."""
    return float(f"{float(x):.7g}")


def _fit_scale(raw: np.ndarray, scaled: np.ndarray) -> tuple[float, float] | None:
    """The (lo, hi) with ``scaled = (raw - lo) / (hi - lo)`` where neither is clipped (least squares),
    or None when the two arrays do not determine it."""
    raw, scaled = np.asarray(raw), np.asarray(scaled)
    if raw.shape != scaled.shape or raw.size == 0:
        return None
    step = max(1, raw.size // 500_000)
    r = raw.reshape(-1)[::step].astype(np.float64)
    s = scaled.reshape(-1)[::step].astype(np.float64)
    keep = np.isfinite(r) & np.isfinite(s) & (s > 1e-3) & (s < 1 - 1e-3)
    r, s = r[keep], s[keep]
    if r.size < 2 or float(s.max() - s.min()) < 1e-3:
        return None
    slope, lo = np.polyfit(s, r, 1)
    if not (np.isfinite(slope) and np.isfinite(lo)) or slope <= 0:
        return None
    return _sig(lo), _sig(lo + slope)


def _anatomical_scale(result: FusionResult) -> tuple[float, float]:
    """The anatomical image's values (HU for a CT base, the file's values for MRI) that became 0 and 1.

    Taken from ``result.anatomical_scale`` when the result carries it, else fitted from the
    anatomical input and its scaled image, else the modality's default rule.
    """
    scale = getattr(result, "anatomical_scale", None)
    if scale is not None and len(scale) == 2 and tuple(float(v) for v in scale) != (0.0, 1.0) and scale[1] > scale[0]:
        return float(scale[0]), float(scale[1])
    fitted = _fit_scale(result.anatomical.array, result.anatomical_scaled)
    if fitted is not None:
        return fitted
    from monai_emma.transforms.intensity import DEFAULT_INTENSITY, intensity_bounds

    rule = DEFAULT_INTENSITY.get(result.anatomical_modality, DEFAULT_INTENSITY["mri"])
    lo, hi = intensity_bounds(result.anatomical.array, rule)
    return float(lo), float(hi)


def _scales(result: FusionResult) -> dict[str, dict[str, Any]]:
    """Per image, the values in its units that bytes 0 and 255 stand for, and the units."""
    if result.is_3d:
        a_lo, a_hi = _anatomical_scale(result)
        o_lo, o_hi = (float(v) for v in result.other_scale)
        a_units = "HU" if result.anatomical_modality == "ct" else ""
        o_units = result.other_units or ("HU" if result.modality == "ct" else "")
    else:  # 2D images: their stored 8-bit values (or the range of a deeper image that became 0-255)
        ranges = []
        for vol in (result.anatomical, result.other):
            rng = getattr(vol, "source_range", None)
            ranges.append((float(rng[0]), float(rng[1])) if rng else (0.0, 255.0))
        (a_lo, a_hi), (o_lo, o_hi) = ranges
        a_units = o_units = ""
    if not o_hi > o_lo:
        o_lo, o_hi = 0.0, 1.0
    if not a_hi > a_lo:
        a_lo, a_hi = 0.0, 1.0
    return {
        "anatomical": {"lo": _sig(a_lo), "hi": _sig(a_hi), "units": a_units},
        "other": {"lo": _sig(o_lo), "hi": _sig(o_hi), "units": o_units},
        "fused": {"lo": 0.0, "hi": 1.0, "units": ""},
    }


def _pack(v: np.ndarray) -> str:
    u8 = np.round(np.clip(np.nan_to_num(v), 0.0, 1.0) * 255.0).astype(np.uint8)
    return base64.b64encode(zlib.compress(np.ascontiguousarray(u8).tobytes(), 6)).decode("ascii")


def _finite(x: Any) -> Any:
    """``x`` with non-finite floats as None (JSON has no NaN), tuples as lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return _finite(x.item())
    return x


def _text(s: str) -> str:
    """``s`` as valid Unicode (undecodable file-name bytes come as lone surrogates)."""
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def _script_json(data: Any) -> str:
    """JSON that is safe as the content of a ``<script type="application/json">`` element."""
    text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: _JSON_ESCAPES[m.group()], text)


def _fill(template: str, values: dict[str, str]) -> str:
    """The template with every slot replaced in one pass: inserted text is never scanned for slots."""
    return _SLOTS.sub(lambda m: values[m.group(1)], template)


def viewer_html(
    result: FusionResult,
    report: FidelityReport | dict | None = None,
    title: str | None = None,
    voxel_mm: float | None = None,
) -> str:
    """The viewer page of a fusion, as one HTML string (see the module docstring).

    Args:
        result: from :func:`~monai_emma.fusion.fuse_volumes` or :func:`~monai_emma.fusion.fuse_images`.
        report: its fidelity report (:func:`~monai_emma.fidelity.fidelity_report`) for the chart.
        title: the page title (default: the inputs' names); any text, shown as text.
        voxel_mm: volumes only: average blocks of voxels so that the views' voxels are at most this
            size in mm (e.g. 2.0 for a page about an eighth of a 1 mm volume's); the spacing follows,
            so the views keep their aspect ratio, and the chart keeps the report's slices. ``None``:
            full resolution. Ignored for 2D pairs.

    Raises:
        ValueError: ``voxel_mm`` is not a positive number.
    """
    from monai_emma.io.outputs import OverlayStyle

    stacks, spacing = _stacks(result)
    factors = _block_factors(spacing, voxel_mm) if result.is_3d else (1, 1, 1)
    if factors != (1, 1, 1):
        stacks = {k: _block_mean(v, factors) for k, v in stacks.items()}
        spacing = (spacing[0] * factors[0], spacing[1] * factors[1], spacing[2] * factors[2])
    base = {"ct": "CT", "vis": "visible"}.get(result.anatomical_modality, "MRI")
    other = (result.modality or "other").upper()
    title = _text(title or f"EMMA fusion: {result.anatomical.path.name} + {result.other.path.name}")
    rep = report.as_dict() if hasattr(report, "as_dict") else report
    start = 0
    if stacks["fused"].shape[0] > 1:  # the slice with the most of both sources; flags are one click away
        content = ((stacks["anatomical"] > 0.05) & (stacks["other"] > 0.05)).sum(axis=(1, 2))
        start = int(np.argmax(content))
    threshold = OverlayStyle().scaled_threshold(result) if result.modality in ("pet", "spect") else 0.3
    notes = [*result.notes, f"{base} {result.anatomical.path.name}", f"{other} {result.other.path.name}"]
    if factors != (1, 1, 1):
        notes.append(
            f"shown at {' x '.join(f'{s:.3g}' for s in (spacing[1], spacing[2], spacing[0]))} mm "
            f"(blocks of {factors[1]} x {factors[2]} x {factors[0]} voxels averaged)"
        )
    data: dict[str, Any] = {
        "shape": list(stacks["fused"].shape),
        "spacing": [round(float(s), 5) for s in spacing],
        "factors": list(factors),
        "labels": {"anatomical": base, "other": other, "fused": "EMMA fused", "overlay": f"overlay ({other})"},
        "scales": _scales(result),
        "orient": _orientation() if result.is_3d else None,
        "notes": [_text(n) for n in notes],
        "start": [start],
        "threshold": int(round(255 * float(threshold))),
        "display_px": DISPLAY_PX,
        "report": rep,
        "volumes": {k: _pack(v) for k, v in stacks.items()},
    }
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    return _fill(template, {"TITLE": html.escape(title, quote=True), "DATA": _script_json(data)})


def write_viewer(
    result: FusionResult,
    path: str | os.PathLike,
    report: FidelityReport | dict | None = None,
    overwrite: bool = False,
    title: str | None = None,
    voxel_mm: float | None = None,
) -> Path:
    """Write :func:`viewer_html` to ``path`` (atomically: a temporary name first).

    Args:
        result: the fusion.
        path: the ``.html`` file.
        report: its fidelity report, for the chart.
        overwrite: replace an existing file.
        title: the page title.
        voxel_mm: the largest voxel size shown (see :func:`viewer_html`); ``None``: full resolution.

    Returns:
        ``path``; :func:`describe_page` (or ``path.stat().st_size``) gives its size.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from monai_emma.io.atomic import atomic_path

    page = viewer_html(result, report, title, voxel_mm=voxel_mm)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return Path(path)


def describe_page(path: str | os.PathLike) -> str:
    """A written page's name and size for a message, e.g. ``fused.html (3.1 MB)``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "v.html"
        ...     _ = p.write_bytes(b"x" * 2_500_000)
        ...     describe_page(p)
        'v.html (2.5 MB)'
    """
    size = Path(path).stat().st_size
    text = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    return f"{Path(path).name} ({text})"
