"""Fusing an anatomical image with another modality: NIfTI volumes, DICOM series, 2D images.

Every fusion runs one MONAI pipeline, the one the bundle's ``inference.json`` spells out:

* :func:`fusion_preprocessing`: read both inputs (:class:`~monai_emma.io.dictionary.LoadFusionPaird`),
  scale each to [0, 1] on its own grid (:class:`~monai_emma.transforms.ModalityScaled`: CT by a
  Hounsfield window, PET/SPECT by percentiles, MRI by robust percentiles; 2D 8-bit images by 255),
  resample the second modality onto the anatomical grid (MONAI ``ResampleToMatchd``, zeros outside
  its field of view), reorient to axial slices in display orientation (MONAI ``Orientationd``)
  and stack the 2-channel ``image``;
* :class:`~monai_emma.inferers.FusionInferer`: the U-Fuser slice by slice, in batches;
* :func:`fusion_postprocessing`: empty background stays empty, clip (or stretch), and back to the
  anatomical file's voxel order (MONAI ``Invertd``).

:func:`fuse_volumes` and :func:`fuse_images` return a :class:`FusionResult`; ``fuse-folder`` and
``evaluate`` use the per-pair 2D path of :mod:`monai_emma.fuse2d`, which gives the same images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from monai_emma.errors import FusionError, transform_cause
from monai_emma.io.preprocessing import fusion_preprocessing
from monai_emma.io.result import FusionResult
from monai_emma.io.volumes import MODALITIES, Volume, VolumeReadError, as_volume, guess_modality
from monai_emma.precision import INFERENCE_PRECISIONS, auto_note, check_precision, resolve_precision
from monai_emma.transforms.intensity import DEFAULT_INTENSITY, IntensityRule

__all__ = [
    "FusionError",
    "FusionResult",
    "fusion_preprocessing",
    "fusion_postprocessing",
    "fuse_volumes",
    "fuse_images",
    "guess_modality",
    "default_intensity_table",
    "MODALITIES",
]


def fusion_postprocessing(preprocessing, zero_empty: bool = True, stretch: bool = False):
    """The MONAI ``Compose`` after the inferer: ``pred`` zero where every source is, clipped to
    [0, 1] (or stretched per slice), then ``pred``, ``anatomical`` and ``other`` back in the
    anatomical file's voxel order (``Invertd`` of ``preprocessing``)."""
    from monai.transforms import Compose, Invertd

    from monai_emma.transforms.empty import ZeroWhereEmptyd
    from monai_emma.transforms.output_range import FusedRanged

    keys = ("pred", "other", "anatomical")  # the original key last: inverting it uses up its trace
    return Compose(
        [
            ZeroWhereEmptyd("pred", source_key="image", enabled=zero_empty),
            FusedRanged("pred", stretch=stretch),
            Invertd(keys, transform=preprocessing, orig_keys=["anatomical"] * 3, nearest_interp=False),
        ]
    )


def _fuse(
    job: dict,
    model: torch.nn.Module | None,
    device: str | torch.device,
    batch_size: int | None,
    amp: bool,
    progress: bool,
    zero_empty: bool,
    stretch: bool,
    preprocessing,
    precision: str = "fp32",
) -> FusionResult:
    from monai_emma.inferers import FusionInferer
    from monai_emma.io.dictionary import result_from_data

    t0 = time.perf_counter()
    try:
        d = preprocessing(job)
    except RuntimeError as err:  # MONAI wraps transform errors: show ours (one line) as they are
        cause = transform_cause(err)
        if isinstance(cause, FusionError | VolumeReadError):
            raise cause from None
        raise
    if d.get("kind") == "volume" and d.get("scaling"):  # which window and scaling each image got
        d.setdefault("notes", []).append("scaling: " + "; ".join(d["scaling"].values()))
    if model is None:
        from monai_emma.model_source import resolve_fuser

        model, _ = resolve_fuser()
    dev = torch.device(device)
    resolved = resolve_precision(precision, dev)
    batch_size = batch_size or (16 if dev.type == "cuda" else 4)
    model = model.to(dev).eval() if isinstance(model, torch.nn.Module) else model
    inferer = FusionInferer(
        sw_batch_size=batch_size, amp=amp, progress=progress, sw_device=dev, device="cpu", precision=resolved
    )
    pred = inferer(d["image"][None], model)[0]
    if not torch.isfinite(pred).all():
        raise FusionError(f"{d['anatomical_volume'].path}: the network produced non-finite values")
    d["pred"] = pred
    if note := auto_note(precision, dev):
        d.setdefault("notes", []).append(note)
    d = fusion_postprocessing(preprocessing, zero_empty, stretch)(d)
    return result_from_data(d, seconds=time.perf_counter() - t0)


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
    suv: str = "auto",
    precision: str = "auto",
    register: str = "none",
    anatomical_modality: str | None = None,
) -> FusionResult:
    """Fuse two 3D images (NIfTI, DICOM series or single DICOM slices) on the anatomical grid.

    Args:
        anatomical: MRI (the reference grid): a path or a :class:`~monai_emma.io.volumes.Volume`.
        other: CT, PET or SPECT, on any grid that overlaps the anatomical one.
        model: the 2D fuser (default: the shipped U-Fuser).
        modality: ``"ct"``, ``"pet"``, ``"spect"`` or ``"ir"``; guessed when omitted.
        anatomical_rule: intensity rule for the anatomical image (default: MRI percentiles; a CT
            base: the ``head`` window, see :func:`~monai_emma.transforms.intensity.ct_window`).
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
        suv: PET DICOM in body-weight SUV: ``"auto"`` (when its tags allow, with a note),
            ``"on"`` (required; an error names a missing tag) or ``"off"``. ``other_rule`` windows
            are then in SUV.
        precision: ``"auto"`` (default: bf16 where the device computes it natively, else fp32),
            ``"fp32"`` or ``"bf16"`` (bfloat16 autocast); see :mod:`monai_emma.precision`.
        register: ``"none"`` (default: the files' world coordinates align the inputs, right for
            hybrid scanners), ``"rigid"`` or ``"affine"`` (separate studies: Mattes mutual
            information with SimpleITK, ``monai-emma[registration]``); the result's
            ``registration`` and notes give the transform, and the writers save it as ``.tfm``.
        anatomical_modality: ``"mri"`` or ``"ct"`` (PET/CT, SPECT/CT); default: from the DICOM
            ``Modality`` or Hounsfield values, else MRI.

    Returns:
        A :class:`FusionResult` whose ``fused`` is float32 (X, Y, Z) in [0, 1].

    Raises:
        VolumeReadError: an input is missing or unreadable.
        FusionError: 2D mixed with 3D, or fields of view that do not overlap.
        RegistrationError: ``register`` failed, did not improve the alignment or left sane bounds.

    Example:
        >>> result = fuse_volumes("mri.nii.gz", "pet.nii.gz", modality="pet")  # doctest: +SKIP
        >>> result.fused.shape == result.anatomical.array.shape  # doctest: +SKIP
        True
    """
    from monai_emma.transforms.registration import check_registration

    check_precision(precision, INFERENCE_PRECISIONS)  # before anything is read
    check_registration(register)
    a = as_volume(anatomical, anatomical_series)
    b = as_volume(other, other_series)
    if not (a.is_3d and b.is_3d):
        flat = a if not a.is_3d else b
        raise FusionError(
            f"{flat.path}: a 2D image cannot be fused with a 3D volume; give two 2D images or two volumes"
        )
    pre = fusion_preprocessing(anatomical_rule=anatomical_rule, other_rule=other_rule, suv=suv, register=register)
    job = {"anatomical": a, "other": b, "modality": modality, "anatomical_modality": anatomical_modality}
    return _fuse(job, model, device, batch_size, amp, progress, zero_empty, stretch, pre, precision)


def fuse_images(
    anatomical: Volume | str | os.PathLike,
    other: Volume | str | os.PathLike,
    model: torch.nn.Module | None = None,
    modality: str | None = None,
    device: str | torch.device = "cpu",
    stretch: bool = False,
    resize: bool = False,
    zero_empty: bool = True,
    precision: str = "auto",
) -> FusionResult:
    """Fuse two 2D images (PNG, JPEG, BMP, TIFF; grey or RGB) into the 8-bit image users see.

    Colour comes from the pixels: a second image in colour (pseudo-colour PET/SPECT) is fused on
    luminance and recombined with its Cb/Cr; otherwise a colour first image (a visible photograph
    fused with infrared) gives its Cb/Cr; otherwise the result is grey.

    Args:
        anatomical: the MRI (or visible) image.
        other: the CT/PET/SPECT (or infrared) image.
        model: the fuser (default: the shipped U-Fuser).
        modality: recorded in the result (2D images are 8-bit, so scaling is by 255).
        device: where the network runs.
        stretch: min-max stretch the fused luminance (the papers' protocol).
        resize: resample the second image to the anatomical size when they differ (otherwise an error).
        zero_empty: the fused image is 0 where both sources are.
        precision: ``"auto"`` (default), ``"fp32"`` or ``"bf16"``, as in :func:`fuse_volumes`.

    Returns:
        A :class:`FusionResult` whose ``fused`` is uint8 (H, W) or (H, W, 3).
    """
    a, b = as_volume(anatomical, None), as_volume(other, None)
    if a.is_3d or b.is_3d:
        vol = a if a.is_3d else b
        raise FusionError(f"{vol.path}: a 3D volume cannot be fused with a 2D image; give two 2D images or two volumes")
    job = {"anatomical": a, "other": b, "modality": modality}
    check_precision(precision, INFERENCE_PRECISIONS)
    pre = fusion_preprocessing(resize=resize)
    return _fuse(job, model, device, 1, False, False, zero_empty, stretch, pre, precision)


def default_intensity_table() -> str:
    """The default intensity rules, one line per modality (for help texts and docs)."""
    return "; ".join(f"{m}: {r.describe()}" for m, r in DEFAULT_INTENSITY.items())
