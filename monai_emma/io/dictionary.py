"""MONAI dictionary transforms at both ends of the inference pipeline: reading a fusion job's two
inputs and writing its result. The steps between them are MONAI's and the package's own transforms
(see :func:`monai_emma.fusion.fusion_preprocessing` and the bundle's ``inference.json``).

A job is a dictionary ``{"anatomical": path, "other": path, "modality": "ct"|"pet"|..., "name": ...}``
(``modality`` may be missing: it is then guessed).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_emma.errors import FusionError
from monai_emma.io.result import FusionResult
from monai_emma.io.volumes import (
    ANATOMICAL_MODALITIES,
    MODALITIES,
    Volume,
    as_volume,
    guess_anatomical_modality,
    guess_modality,
)
from monai_emma.transforms.geometry import DISPLAY_AXCODES
from monai_emma.transforms.intensity import SCALED

__all__ = ["DISPLAY_AXCODES", "LoadFusionPaird", "ToSUVd", "SaveFusiond", "result_from_data", "SUV_MODES"]

#: ``ToSUVd`` modes: convert PET DICOM in BQML when its tags allow (with a note), always (an error
#: naming the tag otherwise), or never
SUV_MODES = ("auto", "on", "off")

# a 2D image's (row, column, 1) grid placed in display orientation, so reorienting changes nothing
_AFFINE_2D = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


class LoadFusionPaird(MapTransform):
    """Read a fusion job's anatomical image and second modality as channel-first MetaTensors.

    3D inputs (any volume format of :func:`~monai_emma.io.volumes.read_volume`, a DICOM series folder
    or file) give ``(1, X, Y, Z)`` float32 in their own
    units with their voxel-to-RAS affines. 2D images (PNG, JPEG, BMP, TIFF) give their luminance
    Y / 255 as ``(1, H, W, 1)``, the scale of the training slices, marked as scaled (so
    :class:`~monai_emma.transforms.ModalityScaled` leaves it), on a grid already in display
    orientation; the images themselves (``<anatomical>_image``, ``<other>_image``, (C, H, W) 0-255)
    are kept for the colour recombination. Our reader is used rather than MONAI's ``LoadImaged`` alone because it checks
    DICOM series (several series, missing or uneven slices) and non-finite values, and says what
    is wrong in one line naming the file.

    Also sets: ``<modality_key>`` (guessed from DICOM tags or Hounsfield values when missing, with
    a note), ``anatomical_modality`` (given, else ``"ct"`` for a CT base of PET/CT or SPECT/CT,
    from DICOM ``Modality`` or Hounsfield values, ``"vis"`` for infrared pairs, ``"mri"``), ``coverage`` (the
    share of the anatomical grid inside the second image's field of view), ``notes``, ``kind``
    (``"volume"`` or ``"slices"``) and ``<key>_volume`` (the :class:`~monai_emma.io.volumes.Volume`
    read, which the writers need).

    Args:
        keys: the anatomical key, then the second modality's key.
        modality_key: where the job's modality is (and goes).
        series_key: optional SeriesInstanceUID(s) for DICOM folders holding several series.
        resize: 2D only: resample the second image to the anatomical size when they differ.

    Raises:
        VolumeReadError: an input is missing or unusable.
        FusionError: 2D mixed with 3D, an unknown modality, 2D sizes that differ, fields of view
            that do not overlap.
    """

    def __init__(
        self,
        keys: KeysCollection = ("anatomical", "other"),
        modality_key: str = "modality",
        series_key: str = "series_uid",
        resize: bool = False,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError("LoadFusionPaird takes two keys: the anatomical image, then the other modality")
        self.modality_key, self.series_key, self.resize = modality_key, series_key, resize

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        a_key, b_key = self.keys
        series = d.get(self.series_key)
        a, b = as_volume(d[a_key], series), as_volume(d[b_key], series)
        if a.is_3d != b.is_3d:
            flat = a if not a.is_3d else b
            raise FusionError(
                f"{flat.path}: a 2D image cannot be fused with a 3D volume; give two 2D images or two volumes"
            )
        notes: list[str] = list(d.get("notes") or [])
        notes.extend(note for vol in (a, b) for note in vol.notes)  # e.g. pydicom's warnings, summed up
        modality = str(d.get(self.modality_key) or "").lower()
        if not modality and a.is_3d:  # 2D slices need none: they are scaled by 255 whatever they show
            modality, how = guess_modality(b)
            notes.append(f"modality {modality} ({how})")
        if modality and modality not in MODALITIES:
            raise FusionError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        anatomical = str(d.get("anatomical_modality") or "").lower()
        if not anatomical:
            anatomical = "vis" if modality == "ir" else "mri"
            if a.is_3d:
                anatomical, how = guess_anatomical_modality(a)
                if anatomical != "mri":
                    notes.append(f"anatomical image {anatomical.upper()} ({how})")
        if anatomical not in ANATOMICAL_MODALITIES:
            raise FusionError(
                f"unknown anatomical modality {anatomical!r}; choose one of {', '.join(ANATOMICAL_MODALITIES)}"
            )
        if anatomical == "ct" and modality == "ct":
            raise FusionError(f"{a.path} and {b.path}: both are CT; fuse CT with MRI, PET or SPECT")
        coverage = 1.0
        if a.is_3d:
            from monai_emma.transforms.geometry import coverage_mask

            for vol in (a, b):
                if vol.nonfinite:
                    notes.append(f"{vol.path.name}: {vol.nonfinite} NaN/infinite voxel(s) treated as no data (0)")
            valid = np.isfinite(b.array) if b.nonfinite else None
            coverage = float(coverage_mask(b.array.shape, b.affine, a.array.shape, a.affine, valid).mean())
            if coverage == 0.0:
                raise FusionError(f"{a.path} and {b.path}: the fields of view do not overlap (check both affines)")
            if coverage < 0.999:
                notes.append(f"{b.path.name} covers {100 * coverage:.1f}% of the anatomical grid; 0 outside it")
            for key, vol in ((a_key, a), (b_key, b)):
                d[key] = MetaTensor(
                    torch.from_numpy(np.ascontiguousarray(vol.array, np.float32))[None],
                    affine=torch.as_tensor(vol.affine, dtype=torch.float64),
                    meta={"filename_or_obj": str(vol.path)},
                )
        else:
            from monai_emma.fuse2d import luminance

            for v in (a, b):
                if v.source_range is not None:
                    lo, hi, bits = v.source_range
                    notes.append(f"{v.path.name}: {bits}-bit image scaled by its own range [{lo:g}, {hi:g}]")
                if float(v.array.max()) > 255:
                    raise FusionError(f"{v.path}: more than 8 bits per sample; convert to 8-bit or use NIfTI")
            b_img = self._same_size(a, b)
            for key, vol, img in ((a_key, a, a.array), (b_key, b, b_img)):
                d[key] = MetaTensor(
                    torch.from_numpy(luminance(img))[None, :, :, None],
                    affine=torch.as_tensor(_AFFINE_2D),
                    meta={"filename_or_obj": str(vol.path), SCALED: True},
                )
            d[f"{a_key}_image"], d[f"{b_key}_image"] = a.array, b_img
        d[f"{a_key}_volume"], d[f"{b_key}_volume"] = a, b
        d[self.modality_key] = modality
        d["anatomical_modality"] = anatomical
        d["coverage"], d["notes"], d["kind"] = coverage, notes, "volume" if a.is_3d else "slices"
        return d

    def _same_size(self, a: Volume, b: Volume) -> np.ndarray:
        if a.array.shape[-2:] == b.array.shape[-2:]:
            return b.array
        if not self.resize:
            raise FusionError(
                f"{a.path} and {b.path}: sizes differ ({a.array.shape[-2]}x{a.array.shape[-1]} vs "
                f"{b.array.shape[-2]}x{b.array.shape[-1]}); pass --resize to resample the second image"
            )
        import cv2

        h, w = a.array.shape[-2:]
        return np.stack([cv2.resize(ch, (w, h), interpolation=cv2.INTER_LINEAR) for ch in b.array])


class ToSUVd(MapTransform):
    """Convert a PET DICOM series to body-weight SUV (:mod:`monai_emma.io.suv`) before intensity
    scaling, so that a PET window is in SUV (e.g. ``0,8``).

    Sets ``<key>_units`` (``"SUVbw"``) and ``suv`` (the :class:`~monai_emma.io.suv.SUVInfo`), and
    adds a note.

    Args:
        keys: the PET image (``"other"``); its :class:`~monai_emma.io.volumes.Volume` is read from
            ``<key>_volume``.
        mode: ``"auto"``: convert a PET DICOM series in BQML whose tags are complete, otherwise
            leave it (a note says why); ``"on"``: convert or fail naming the tag; ``"off"``: never.
        modality_key: where the job's modality is.
    """

    def __init__(self, keys: KeysCollection = "other", mode: str = "auto", modality_key: str = "modality") -> None:
        super().__init__(keys)
        if mode not in SUV_MODES:
            raise ValueError(f"SUV mode must be one of {SUV_MODES}, not {mode!r}")
        self.mode, self.modality_key = mode, modality_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_emma.io.suv import SUVError, suv_info

        d = dict(data)
        if self.mode == "off":
            return d
        for key in self.key_iterator(d):
            vol = d[f"{key}_volume"]
            is_pet = str(d.get(self.modality_key, "")).lower() == "pet"
            if not (is_pet and vol.kind == "dicom" and vol.headers):
                if self.mode == "on":
                    raise FusionError(
                        f"{vol.path}: --suv needs a PET DICOM series (this is {vol.kind}, {d.get(self.modality_key)})"
                    )
                continue
            try:
                info = suv_info(vol.headers)
            except SUVError as err:
                if self.mode == "on":
                    raise FusionError(f"{vol.path}: no SUV: {err}") from None
                d.setdefault("notes", []).append(
                    f"{vol.path.name}: not converted to SUV ({err}); scaled by percentiles"
                )
                continue
            d[key] = d[key] * info.factor
            d[f"{key}_units"], d["suv"] = "SUVbw", info
            d.setdefault("notes", []).append(f"{vol.path.name}: {info.describe()}")
        return d


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, np.float32)


def result_from_data(d: Mapping[Hashable, object], pred_key: str = "pred", seconds: float = 0.0) -> FusionResult:
    """A :class:`~monai_emma.io.result.FusionResult` from a job after inference and
    post-processing (``pred``, ``anatomical`` and ``other`` back in the anatomical file's voxel
    order). 2D jobs give the 8-bit image ``fuse-folder`` writes (colour recombined)."""
    a, b = d["anatomical_volume"], d["other_volume"]
    fused = _numpy(d[pred_key])[0]
    a_scaled, b_scaled = _numpy(d["anatomical"])[0], _numpy(d["other"])[0]
    if d["kind"] == "slices":
        from monai_emma.fuse2d import to_8bit

        fused, a_scaled, b_scaled = fused[..., 0], a_scaled[..., 0], b_scaled[..., 0]
        a_img = d.get("anatomical_image")
        fused = to_8bit(fused, np.asarray(d["other_image"]), None if a_img is None else np.asarray(a_img))
    return FusionResult(
        fused=fused,
        anatomical=a,
        other=b,
        anatomical_scaled=a_scaled,
        other_scaled=b_scaled,
        modality=str(d["modality"]),
        other_units=str(d.get("other_units", "")),
        other_scale=tuple(float(v) for v in d.get("other_scale", (0.0, 1.0))),
        coverage=float(d.get("coverage", 1.0)),
        seconds=seconds,
        notes=list(d.get("notes") or []),
        registration=d.get("registration"),
        anatomical_modality=str(d.get("anatomical_modality") or "mri"),
        anatomical_scale=tuple(float(v) for v in d.get("anatomical_scale", (0.0, 1.0))),
        scaling=dict(d.get("scaling") or {}),
    )


class SaveFusiond(MapTransform):
    """Write a job's fused image with :func:`~monai_emma.io.outputs.write_fusion`: NIfTI (the
    anatomical grid and header), a derived DICOM series, or PNG for 2D jobs; optionally a colour
    rendering (PET/SPECT) and a preview montage. Files go to temporary names first.

    Writes ``<output_dir>/<name><ext>`` (``name`` from ``name_key``; ``/`` makes sub-folders) and
    records what it wrote in ``d["files"]``.

    Args:
        keys: the fused image (``"pred"``), in the anatomical file's voxel order.
        output_dir: the folder.
        output_format: ``"nifti"`` or ``"dicom"`` for volumes (2D jobs always give PNG).
        colormap: colour rendering of PET/SPECT jobs (``None``: none).
        preview: also write ``<name>_preview.png``.
        name_key: the job's name.
        overwrite: replace existing outputs.
        overlay: also write the viewer-style overlay of PET/SPECT jobs (``<name>_overlay``).
        overlay_threshold: its threshold in the functional image's units (``None``: the default of
            :class:`~monai_emma.io.outputs.OverlayStyle`).
        overlay_opacity: its colour weight.
        overlay_colormap: its colour map.
        report: also write the per-slice fidelity report (``<name>_report.json``, see
            :mod:`monai_emma.fidelity`); its one-line summary goes to ``d["report"]``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "eval",
        output_format: str = "nifti",
        colormap: str | None = "jet",
        preview: bool = True,
        name_key: str = "name",
        overwrite: bool = True,
        overlay: bool = False,
        overlay_threshold: float | None = None,
        overlay_opacity: float = 0.5,
        overlay_colormap: str = "hot",
        report: bool = False,
    ) -> None:
        super().__init__(keys)
        self.report = report
        self._sensors = None  # the shipped pseudo-sensors, loaded on the first report
        from monai_emma.io.outputs import OverlayStyle

        self.overlay = OverlayStyle(overlay_colormap, overlay_threshold, overlay_opacity) if overlay else None
        if output_format not in ("nifti", "dicom"):
            raise ValueError(f"output_format must be 'nifti' or 'dicom' (2D jobs give PNG), not {output_format!r}")
        self.output_dir, self.output_format = Path(output_dir), output_format
        self.colormap, self.preview, self.name_key, self.overwrite = colormap, preview, name_key, overwrite

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_emma.io.outputs import write_fusion

        d = dict(data)
        for key in self.key_iterator(d):
            result = result_from_data(d, key)
            name = str(d.get(self.name_key) or Path(str(result.anatomical.path)).stem)
            volume = d["kind"] == "volume"
            fmt = self.output_format if volume else "png"
            out = self.output_dir / (name + {"nifti": ".nii.gz", "dicom": "", "png": ".png"}[fmt])
            out.parent.mkdir(parents=True, exist_ok=True)
            functional = result.modality in ("pet", "spect")
            colour = self.colormap if volume and functional else None
            preview = self.output_dir / f"{name}_preview.png" if self.preview and volume else None
            overlay = self.overlay if functional else None
            written = write_fusion(
                result, out, fmt=fmt, colormap=colour, preview=preview, overwrite=self.overwrite, overlay=overlay
            )
            d["files"] = {k: str(v) for k, v in written.items()}
            if self.report:
                from monai_emma.fidelity import default_sensors, fidelity_report, report_line, write_report

                if self._sensors is None:
                    self._sensors = default_sensors()
                fidelity = fidelity_report(result, sensors=self._sensors)
                d["files"]["report"] = str(write_report(fidelity, self.output_dir / f"{name}_report.json"))
                d["report"] = report_line(fidelity)
        return d
