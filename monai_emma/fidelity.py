"""Per-slice fidelity: can each modality still be recovered from the fused image?

EMMA's pseudo-sensors were trained to map a fused image back to each source modality. Given a
fusion, each fused slice goes through the sensor of the anatomical modality and of the other
modality; where a sensor cannot recover its source, the fusion has lost that modality there.
Scores per slice and modality, inside the slice's foreground (any source above 5 % of its
range):

* ``error``: mean absolute difference between the sensed image and the source (both in [0, 1]);
* ``error_without``: the same when the sensor sees the *other* source alone (what it can guess of
  this modality without it);
* ``gain``: ``1 - error / error_without``: how much better the modality comes back from the fused
  image than without it (1: perfectly; 0: no better, the modality is lost; exactly 0 when the
  "fusion" is the other source alone);
* ``structure``: Pearson correlation between the sensed image and the source.

A slice is flagged for a modality whose ``gain`` falls below that modality's threshold
(:data:`THRESHOLDS`, calibrated on the development pairs with ``scripts/calibrate_fidelity.py``:
see ``docs/usage.md``). For volumes the
report adds the through-plane consistency of each slice: how much more the fused image changes
from the previous slice than either source does (mean absolute difference inside the foreground,
on the [0, 1] scale; near 0 or negative is consistent).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_emma.io.result import FusionResult

__all__ = [
    "THRESHOLDS",
    "FOREGROUND",
    "FidelityReport",
    "slice_fidelity",
    "fidelity_report",
    "write_report",
    "report_line",
    "default_sensors",
]

#: a slice's pixels where any source exceeds this value (on [0, 1]) are its foreground
FOREGROUND = 0.05
#: slices with fewer foreground pixels than this share are not scored
MIN_FOREGROUND = 0.01
#: flag a modality when its recovery ``gain`` falls below this; calibrated with the v2 weights on the
#: 158 validation pairs (``docs/usage.md``); infrared/visible are not calibrated (no IR/VIS sensors
#: are shipped), so their value is only a placeholder for user-trained sensors
THRESHOLDS = {"mri": 0.2, "ct": 0.37, "pet": 0.1, "spect": 0.12, "vis": 0.2, "ir": 0.2}


def _pad16(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    return torch.nn.functional.pad(x, (0, pw, 0, ph)), (h, w)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else 0.0


@torch.no_grad()
def slice_fidelity(
    fused: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    modalities: tuple[str, str],
    sensors: torch.nn.Module,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Scores of one fused slice (all (H, W) in [0, 1]) against its two sources.

    Returns:
        ``{"foreground": share, "scores": {modality: {"error", "error_without", "gain", "structure"}},
        "flag": [lost modalities]}``;
        ``scores`` is empty (and nothing flagged) for a slice with too little foreground.
    """
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    fg = (a > FOREGROUND) | (b > FOREGROUND)
    share = float(fg.mean())
    out: dict[str, Any] = {"foreground": round(share, 4), "scores": {}, "flag": []}
    if share < MIN_FOREGROUND:
        return out
    # each sensor sees the fused slice, and the other source alone (what it recovers without its modality)
    stack = np.stack([fused, fused, b, a]).astype(np.float32)[:, None]
    x, (h, w) = _pad16(torch.from_numpy(stack))
    sensed = sensors(x, [*modalities, *modalities])[:, 0, :h, :w].cpu().numpy()
    sources = (np.asarray(a, np.float64)[fg], np.asarray(b, np.float64)[fg])
    for k, modality in enumerate(modalities):
        recovered, truth = sensed[k][fg].astype(np.float64), sources[k]
        without = sensed[2 + k][fg].astype(np.float64)
        error, error_without = float(np.abs(recovered - truth).mean()), float(np.abs(without - truth).mean())
        gain = 1.0 - error / error_without if error_without > 1e-6 else 0.0
        out["scores"][modality] = {
            "error": round(error, 5),
            "error_without": round(error_without, 5),
            "gain": round(gain, 5),
            "structure": round(_pearson(recovered, truth), 5),
        }
        if gain < thresholds.get(modality, 0.2):
            out["flag"].append(modality)
    return out


def default_sensors(sensors=None):
    if sensors is not None:
        return sensors.eval()
    from monai_emma.networks import pseudo_sensors
    from monai_emma.weights import SensorWeights

    return pseudo_sensors(weights=SensorWeights.DEFAULT)


@dataclass
class FidelityReport:
    """What :func:`fidelity_report` returns (``as_dict()`` is the JSON layout)."""

    modalities: tuple[str, str]
    slices: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    units: str = ""  # the second modality's units when converted (``"SUVbw"``)
    registration: dict[str, Any] | None = None  # the transform applied to the second modality (--register)

    @property
    def flagged(self) -> list[int]:
        return [s["index"] for s in self.slices if s["flag"]]

    def as_dict(self) -> dict[str, Any]:
        scored = [s for s in self.slices if s["scores"]]
        summary: dict[str, Any] = {
            "slices": len(self.slices),
            "scored": len(scored),
            "flagged": self.flagged,
            "thresholds": {m: self.thresholds[m] for m in self.modalities},
        }
        for m in self.modalities:
            values = [s["scores"][m]["gain"] for s in scored]
            summary[f"{m}_gain_min"] = round(min(values), 5) if values else None
            summary[f"{m}_gain_median"] = round(float(np.median(values)), 5) if values else None
        steps = [s["through_plane"] for s in self.slices if s.get("through_plane") is not None]
        if steps:
            summary["through_plane_mean"] = round(float(np.mean(steps)), 5)
            summary["through_plane_max"] = round(float(np.max(steps)), 5)
        out: dict[str, Any] = {"modalities": list(self.modalities)}
        if self.units:
            out["units"] = {self.modalities[1]: self.units}
        if self.registration is not None:
            out["registration"] = self.registration
        return {**out, "summary": summary, "slices": self.slices}


def fidelity_report(
    result: FusionResult,
    sensors: torch.nn.Module | None = None,
    thresholds: dict[str, float] | None = None,
    progress: bool = False,
) -> FidelityReport:
    """Per-slice fidelity of a fusion (axial slices in display orientation for volumes; one slice
    for a 2D pair), with the shipped pseudo-sensors unless ``sensors`` is given.

    ``progress`` shows a bar over the slices (a 1 mm head takes about a minute on 2 cores).

    Example:
        >>> result = fuse_volumes("mri.nii.gz", "pet.nii.gz")  # doctest: +SKIP
        >>> report = fidelity_report(result)  # doctest: +SKIP
        >>> report.flagged  # doctest: +SKIP
        [41, 42]
    """
    from monai_emma.transforms.colour import rgb_to_ycbcr
    from monai_emma.transforms.geometry import to_display

    bank = default_sensors(sensors)
    anatomical = "vis" if result.modality == "ir" else result.anatomical_modality
    modality = result.modality or "pet"
    missing = [m for m in (anatomical, modality) if m not in bank.modalities]
    if missing:
        raise ValueError(f"the pseudo-sensors have no {', '.join(missing)} sensor; give sensors that do")
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    report = FidelityReport((anatomical, modality), thresholds=thresholds, units=result.other_units)
    if result.registration is not None:
        report.registration = result.registration.to_dict()
    if result.is_3d:
        affine = result.anatomical.affine
        stacks = [to_display(v, affine) for v in (result.fused, result.anatomical_scaled, result.other_scaled)]
    else:
        fused = result.fused.astype(np.float64) / 255.0
        if fused.ndim == 3:  # 2D colour result: its luminance
            fused = rgb_to_ycbcr(fused, -1)[..., 0]
        stacks = [v[..., None] for v in (fused, result.anatomical_scaled, result.other_scaled)]
    f, a, b = (np.asarray(s, np.float32) for s in stacks)
    from tqdm.auto import tqdm

    for k in tqdm(range(f.shape[-1]), desc="report", unit="slice", disable=not progress or f.shape[-1] == 1):
        entry = {"index": k, **slice_fidelity(f[..., k], a[..., k], b[..., k], report.modalities, bank, thresholds)}
        if k > 0 and result.is_3d:
            fg = ((a[..., k] > FOREGROUND) | (b[..., k] > FOREGROUND)) | (
                (a[..., k - 1] > FOREGROUND) | (b[..., k - 1] > FOREGROUND)
            )
            if fg.mean() >= MIN_FOREGROUND:
                steps = [float(np.abs(v[..., k][fg] - v[..., k - 1][fg]).mean()) for v in (f, a, b)]
                entry["through_plane"] = round(steps[0] - max(steps[1], steps[2]), 5)
        report.slices.append(entry)
    return report


def report_line(report: FidelityReport, unit: str = "slices") -> str:
    """One line for the terminal, e.g. ``2 of 96 slices flagged: 41, 42``."""
    flagged = report.flagged
    scored = sum(1 for s in report.slices if s["scores"])
    listing = f": {', '.join(str(i) for i in flagged[:20])}{' …' if len(flagged) > 20 else ''}" if flagged else ""
    return f"{len(flagged)} of {scored} {unit} flagged{listing}"


def write_report(report: FidelityReport | dict, path: str | os.PathLike) -> Path:
    """The report as JSON (written atomically)."""
    from monai_emma.io.atomic import atomic_path

    data = report.as_dict() if isinstance(report, FidelityReport) else report
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
    return Path(path)
