"""Register the second modality to the anatomical image before fusion (rigid or affine).

Fusion resamples the second modality onto the anatomical grid by world coordinates. That is
right when both come from one hybrid scanner (PET/CT, PET/MR, SPECT/CT) and wrong for separate
studies (an MRI and a PET taken days apart, the head positioned differently). ``register`` finds
the rigid (rotation + translation) or affine transform that best aligns the two by Mattes mutual
information, with SimpleITK (``pip install "monai-emma[registration]"``): multi-resolution
(shrink 4, 2, 1 with Gaussian smoothing), started from the better of the files' own alignment and
the centres of intensity mass lined up.

Before optimising, the information the two images share at the coarsest level is compared with
a null reference (the same images with the second one's voxels shuffled): images that share
nothing (noise, another body part) are refused at once instead of after a long optimisation.

Affine registration is a rigid registration followed by an affine refinement started from it.
The refinement is kept only when it improves the rigid solution's mutual information clearly
(``min_affine_gain``) and stays within bounds; otherwise the rigid solution is returned with a
note. Mutual information alone does not pin down scale between images of different resolution
(a blurred PET against a sharp MRI prefers a PET magnified by a few per cent), so small gains are
not trusted.

The result is not a resampled image: the transform is folded into the second image's affine, so
the one resampling onto the anatomical grid that fusion does anyway (MONAI ``ResampleToMatchd``)
applies it. A registration that does not improve the metric, or lands outside sane bounds (a
rotation above ``max_rotation_deg``, a translation above ``max_translation_mm``, an affine scale
outside ``scale_range``), raises :class:`RegistrationError` and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_emma.errors import FusionError

__all__ = [
    "REGISTRATION_MODES",
    "Registration",
    "RegistrationError",
    "register",
    "check_registration",
    "RegisterToMatchd",
    "write_transform",
]

#: the values of ``--register``
REGISTRATION_MODES = ("none", "rigid", "affine")

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK's world frame), its own inverse
SHRINK = (4, 2, 1)  # resolution levels
SIGMAS = (2.0, 1.0, 0.0)  # Gaussian smoothing of each level, mm


class RegistrationError(FusionError):
    """The registration failed, did not improve the alignment, or left sane bounds."""


@dataclass
class Registration:
    """A registration's outcome.

    Attributes:
        mode: ``"rigid"`` or ``"affine"``: what was applied (an affine request whose refinement was
            not kept gives ``"rigid"``, with a note saying why).
        matrix: 4x4 map from anatomical world coordinates (RAS, mm) to the second image's
            original world coordinates: the second image's corrected affine is
            ``inv(matrix) @ affine``.
        rotation_deg: the rotation angle of the transform (its rotation part for affine), degrees.
        translation_mm: the displacement of the anatomical image's centre, mm (RAS).
        scales: the affine's singular values (1, 1, 1 for rigid).
        metric_before: Mattes mutual information (negative: lower is better) as the files are aligned.
        metric_after: the same after registration.
        iterations: optimiser iterations, all levels.
        start: ``"header"`` (the files' own alignment) or ``"centres"`` (centres of mass aligned).
        notes: what people should know (already aligned; the affine refinement kept or not, and why).
        rigid_matrix: for an affine request, the rigid stage's ``matrix`` (the same as ``matrix``
            when the rigid solution was kept); None for a rigid request.
    """

    mode: str
    matrix: np.ndarray
    rotation_deg: float
    translation_mm: tuple[float, float, float]
    scales: tuple[float, float, float]
    metric_before: float
    metric_after: float
    iterations: int = 0
    start: str = "header"
    notes: list[str] = field(default_factory=list)
    rigid_matrix: np.ndarray | None = None

    @property
    def translation_norm_mm(self) -> float:
        return float(np.linalg.norm(self.translation_mm))

    def summary(self) -> str:
        """One line for people: ``rigid registration: 10.0 deg, 8.0 mm; MI -0.21 -> -0.55``."""
        extra = "" if self.mode == "rigid" else f", scales {', '.join(f'{s:.3f}' for s in self.scales)}"
        return (
            f"{self.mode} registration: rotation {self.rotation_deg:.2f} deg, translation "
            f"{self.translation_norm_mm:.2f} mm ({', '.join(f'{t:+.2f}' for t in self.translation_mm)} RAS){extra}; "
            f"Mattes MI {self.metric_before:.4f} -> {self.metric_after:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matrix"] = np.asarray(self.matrix).round(6).tolist()
        if self.rigid_matrix is not None:
            d["rigid_matrix"] = np.asarray(self.rigid_matrix).round(6).tolist()
        d["translation_mm"] = [round(float(t), 4) for t in self.translation_mm]
        d["scales"] = [round(float(s), 6) for s in self.scales]
        d["rotation_deg"] = round(float(self.rotation_deg), 4)
        d["translation_norm_mm"] = round(self.translation_norm_mm, 4)
        return d


def check_registration(mode: str) -> str:
    """``mode`` if it is one of :data:`REGISTRATION_MODES` and, unless ``"none"``, SimpleITK is
    installed: checked before any input is read.

    Raises:
        ValueError: an unknown mode.
        MissingExtraError: SimpleITK is missing (the message names ``monai-emma[registration]``).
    """
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"unknown registration mode {mode!r}; choose one of {', '.join(REGISTRATION_MODES)}")
    if mode != "none":
        _sitk()
    return mode


def _sitk():
    from monai_emma.extras import require

    return require("SimpleITK", "registration (--register)")


def _to_sitk(array: np.ndarray, affine: np.ndarray):
    """A 3D SimpleITK image (LPS) from an (X, Y, Z) array and its voxel-to-RAS affine."""
    sitk = _sitk()
    affine = np.asarray(affine, np.float64)
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(array, np.float32), (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _matrix_of(transform, dim: int = 3) -> np.ndarray:
    """The 4x4 (LPS) matrix of any SimpleITK transform that is affine, by probing points."""
    origin = np.asarray(transform.TransformPoint((0.0,) * dim))
    m = np.eye(4)
    for i in range(dim):
        e = [0.0] * dim
        e[i] = 1.0
        m[:dim, i] = np.asarray(transform.TransformPoint(tuple(e))) - origin
    m[:dim, 3] = origin
    return m


def _metric(method_factory, fixed, moving, transform) -> float:
    r = method_factory(full=True)
    r.SetInitialTransform(transform, inPlace=False)
    return float(r.MetricEvaluate(fixed, moving))


def _coarse(image, spacing_mm: float):
    """``image`` smoothed as the coarsest level of the pyramid and subsampled to about
    ``spacing_mm`` voxels (never finer than its own)."""
    sitk = _sitk()
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, SIGMAS[0]), factors)


def _shared_information(fixed, moving, starts, seed: int) -> tuple[float, float]:
    """Mattes MI at the coarsest level for the better of ``starts``, and the same for the second
    image with its (coarse) voxels shuffled: the value that no shared information gives for these
    intensity histograms and this number of samples (tens of times smaller than a real pair's)."""
    sitk = _sitk()
    fixed_c = _coarse(fixed, SHRINK[0] * min(fixed.GetSpacing()))
    moving_c = _coarse(moving, SHRINK[0] * min(fixed.GetSpacing()))
    values = sitk.GetArrayFromImage(moving_c)
    shuffled = sitk.GetImageFromArray(np.random.default_rng(seed).permutation(values.ravel()).reshape(values.shape))
    shuffled.CopyInformation(moving_c)

    def mi(image, transform) -> float:
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetInitialTransform(transform, inPlace=False)
        try:
            return float(r.MetricEvaluate(fixed_c, image))
        except RuntimeError:  # no sample maps inside the second image
            return 0.0

    return min(mi(moving_c, t) for t in starts), min(mi(shuffled, t) for t in starts)


def _rescaled(image, unit: float):
    """The same image with its world measured in ``unit`` mm (spacing and origin divided)."""
    sitk = _sitk()
    out = sitk.Image(image)
    out.SetSpacing(tuple(s / unit for s in image.GetSpacing()))
    out.SetOrigin(tuple(o / unit for o in image.GetOrigin()))
    return out


def _affine_transform(lps: np.ndarray, centre, unit: float = 1.0):
    """A SimpleITK affine transform about ``centre`` (LPS, mm) equal to the 4x4 LPS ``lps``, in a
    world measured in ``unit`` mm."""
    sitk = _sitk()
    c = np.asarray(centre, np.float64)
    t = sitk.AffineTransform(3)
    t.SetCenter(tuple(float(v) for v in c / unit))
    t.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    t.SetTranslation(tuple(float(v) for v in (lps[:3, :3] @ c + lps[:3, 3] - c) / unit))
    return t


def register(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    mode: str = "rigid",
    max_rotation_deg: float = 45.0,
    max_translation_mm: float | None = None,
    scale_range: tuple[float, float] = (0.67, 1.5),
    min_improvement: float = 0.02,
    min_information: float = 0.02,
    min_affine_gain: float = 0.1,
    samples: int = 200_000,
    seed: int = 0,
    threads: int | None = None,
) -> Registration:
    """Register ``moving`` (the second modality) to ``fixed`` (the anatomical image).

    Args:
        fixed: (X, Y, Z) anatomical volume (any intensity scale).
        fixed_affine: its 4x4 voxel-to-RAS affine (mm).
        moving: (X, Y, Z) second-modality volume.
        moving_affine: its affine.
        mode: ``"rigid"`` (6 parameters) or ``"affine"`` (12: a rigid registration, then an affine
            refinement started from it, kept only if it improves the rigid solution clearly).
        max_rotation_deg: larger rotations are refused (a head is not upside down).
        max_translation_mm: larger displacements of the anatomical centre are refused (default:
            half the anatomical field of view's largest extent).
        scale_range: affine only: every singular value of the linear part must lie in it (this
            bounds anisotropic scaling and shear too); an affine refinement outside it is not kept.
        min_improvement: a registration that moves the image (more than 0.5 deg or 1 mm) must
            improve the mutual information by at least this fraction of its starting value (0.02:
            2 %); one that moves it less (already aligned) must not make it worse.
        min_information: the mutual information the images share must reach this magnitude: at
            the coarsest level before optimising (above the value with the second image's voxels
            shuffled, and at least that value again) and after registration (images without shared
            content give about 0.001).
        min_affine_gain: affine only: the refinement must improve the rigid solution's mutual
            information by at least this fraction (0.1: 10 %), measured on the same sample;
            smaller gains are what different resolutions alone give (a blurred PET against a sharp
            MRI gains about 6 % from a wrong magnification of 4 %) and are not trusted.
        samples: anatomical voxels sampled for the metric at each resolution level.
        seed: the metric's random sampling.
        threads: ITK threads (default: ITK's own choice).

    Returns:
        A :class:`Registration`: apply it with ``np.linalg.inv(reg.matrix) @ moving_affine``.

    Raises:
        RegistrationError: the images share almost no information, the optimiser failed, the
            metric did not improve, or the result is out of bounds; the message says which, with
            the numbers.

    Example:
        >>> reg = register(mri, mri_affine, pet, pet_affine, "rigid")  # doctest: +SKIP
        >>> reg.summary()  # doctest: +SKIP
        'rigid registration: rotation 10.02 deg, translation 8.05 mm (...); Mattes MI -0.2 -> -0.5'
    """
    if mode not in ("rigid", "affine"):
        raise ValueError(f"unknown registration mode {mode!r}; choose rigid or affine")
    sitk = _sitk()
    fixed_img, moving_img = _to_sitk(fixed, fixed_affine), _to_sitk(moving, moving_affine)
    if float(np.ptp(fixed)) == 0 or float(np.ptp(moving)) == 0:
        raise RegistrationError("registration: an image is constant; there is nothing to align")
    what = "rigid registration" if mode == "rigid" else "affine registration (its rigid stage)"

    voxels = float(np.prod(fixed.shape))
    sample_seed = seed + 1  # SimpleITK reads a seed of 0 as "the wall clock": never reproducible

    def method(full: bool = False, levels: tuple[int, ...] = SHRINK):
        # a fixed random sample of about `samples` anatomical voxels per level: enough for a
        # stable mutual information, and the time does not grow with the grid
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        r.SetMetricSamplingStrategy(r.RANDOM)
        if full:  # the before/after comparison: one larger sample, the same points every time
            r.SetMetricSamplingPercentage(min(1.0, 4 * samples / voxels), sample_seed)
        else:
            r.SetMetricSamplingPercentagePerLevel([min(1.0, samples * f**3 / voxels) for f in levels], sample_seed)
        r.SetInterpolator(sitk.sitkLinear)
        if threads:
            r.SetNumberOfThreads(threads)
        return r

    centre = np.asarray(
        fixed_img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_img.GetSize()]), np.float64
    )
    header = sitk.Euler3DTransform()
    header.SetCenter(tuple(float(c) for c in centre))
    centred = sitk.CenteredTransformInitializer(
        fixed_img, moving_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    # refuse images that share nothing before optimising (an optimiser wanders for a minute on noise)
    shared, null = _shared_information(fixed_img, moving_img, (header, centred), seed)
    needed = abs(null) + max(min_information, abs(null))
    if abs(shared) < needed:
        raise RegistrationError(
            f"{what}: the images share almost no information (Mattes MI {shared:.4f} at the coarsest level, "
            f"{null:.4f} with the second image's voxels shuffled, at least {needed:.4f} in magnitude needed): "
            "do they show the same anatomy?"
        )
    before = _metric(method, fixed_img, moving_img, header)
    centred_metric = _metric(method, fixed_img, moving_img, centred)
    start, initial = ("centres", centred) if centred_metric < before else ("header", header)

    # both stages run in a world measured in units of half the anatomical field of view (see _optimise)
    unit = 0.5 * float(np.max(np.asarray(fixed_img.GetSize()) * np.asarray(fixed_img.GetSpacing())))
    fixed_u, moving_u = _rescaled(fixed_img, unit), _rescaled(moving_img, unit)
    rigid_u = sitk.Euler3DTransform()
    start_lps = _matrix_of(initial)
    rigid_u.SetCenter(tuple(float(c) / unit for c in centre))
    rigid_u.SetMatrix(tuple(float(v) for v in start_lps[:3, :3].ravel()))
    rigid_u.SetTranslation(tuple(float(v) for v in (start_lps[:3, :3] @ centre + start_lps[:3, 3] - centre) / unit))
    try:
        iterations = _optimise(method(), fixed_u, moving_u, rigid_u, SHRINK, SIGMAS, unit, step_mm=4.0, relaxation=0.7)
    except RuntimeError as err:  # e.g. "All samples map outside moving image buffer"
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise RegistrationError(f"{what} failed: {reason}") from err
    rigid_lps = _from_unit(_matrix_of(rigid_u), unit)
    after = _metric(method, fixed_img, moving_img, _affine_transform(rigid_lps, centre))

    if max_translation_mm is None:
        extent = np.abs(np.asarray(fixed_affine)[:3, :3]) @ (np.asarray(fixed.shape, np.float64) - 1)
        max_translation_mm = 0.5 * float(extent.max())

    def outcome(kind: str, lps: np.ndarray, metric_after: float, iters: int) -> Registration:
        ras = _LPS @ lps @ _LPS  # anatomical RAS -> second image's RAS
        u, s, vt = np.linalg.svd(ras[:3, :3])
        angle = math.degrees(math.acos(float(np.clip((np.trace(u @ vt) - 1) / 2, -1.0, 1.0))))
        centre_ras = (_LPS @ np.array([*centre, 1.0]))[:3]
        shift = ras[:3, :3] @ centre_ras + ras[:3, 3] - centre_ras
        return Registration(
            mode=kind,
            matrix=ras,
            rotation_deg=angle,
            translation_mm=tuple(float(t) for t in shift),
            scales=tuple(float(v) for v in s) if kind == "affine" else (1.0, 1.0, 1.0),
            metric_before=before,
            metric_after=metric_after,
            iterations=iters,
            start=start,
        )

    def out_of_bounds(reg: Registration) -> str | None:
        if reg.rotation_deg > max_rotation_deg or reg.translation_norm_mm > max_translation_mm:
            return (
                f"rotation {reg.rotation_deg:.1f} deg (at most {max_rotation_deg:g}), translation "
                f"{reg.translation_norm_mm:.1f} mm (at most {max_translation_mm:.0f})"
            )
        if not all(scale_range[0] <= v <= scale_range[1] for v in reg.scales):
            return f"scales {', '.join(f'{v:.3f}' for v in reg.scales)} outside {scale_range[0]:g}..{scale_range[1]:g}"
        return None

    reg = outcome("rigid", rigid_lps, after, iterations)
    gain = (before - after) / max(abs(before), 1e-12)
    if -after < min_information:
        raise RegistrationError(
            f"{what}: the images share almost no information (Mattes MI {after:.4f} after "
            f"registration, at least {min_information:g} in magnitude needed): do they show the same anatomy?"
        )
    moved = reg.rotation_deg > 0.5 or reg.translation_norm_mm > 1.0
    if after > before + 1e-3 * abs(before) or (moved and gain < min_improvement):
        raise RegistrationError(
            f"{what} did not improve the alignment (Mattes MI {before:.4f} -> {after:.4f}, "
            f"{100 * gain:+.1f} %, at least {100 * min_improvement:.0f} % needed for a rotation of "
            f"{reg.rotation_deg:.1f} deg and a translation of {reg.translation_norm_mm:.1f} mm): fuse without "
            "--register if the images come from one hybrid scanner"
        )
    if (problem := out_of_bounds(reg)) is not None:
        raise RegistrationError(f"{what} left sane bounds: {problem}; check that both images show the same anatomy")
    if not moved:
        reg.notes.append("the images were already aligned (the registration moved less than 0.5 deg and 1 mm)")
    if mode == "rigid":
        return reg
    reg.rigid_matrix = reg.matrix
    return _refine_affine(
        reg,
        fixed_img,
        moving_img,
        fixed_u,
        moving_u,
        unit,
        rigid_lps,
        centre,
        method,
        outcome,
        out_of_bounds,
        min_affine_gain,
    )


def _optimise(
    r,
    fixed_u,
    moving_u,
    transform,
    levels,
    sigmas_mm,
    unit: float,
    step_mm: float,
    relaxation: float,
    gradient_filter=True,
) -> int:
    """Optimise ``transform`` (in place) by regular-step gradient descent; the number of iterations.

    The images and the transform live in a world measured in ``unit`` mm (half the anatomical field
    of view), where a step of any parameter (an angle, an entry of the linear part, a translation)
    moves the field of view's edge about as far: one scale and one step length (``step_mm`` down
    to 0.01 mm) fit them all. In millimetres a step of an angle or a matrix entry moves the edge a
    hundred times farther than the same step of a translation: from a rigid optimum the first
    affine steps threw the linear part far off, and a rigid rotation crept over hundreds of
    iterations once the translation had converged."""
    sitk = _sitk()
    r.SetShrinkFactorsPerLevel(list(levels))
    r.SetSmoothingSigmasPerLevel([s / unit for s in sigmas_mm])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step_mm / unit,
        minStep=0.01 / unit,
        numberOfIterations=200,
        relaxationFactor=relaxation,
        gradientMagnitudeTolerance=1e-10,
    )
    r.SetOptimizerScales([1.0] * transform.GetNumberOfParameters())
    if not gradient_filter:
        # the moving image's gradient by central differences where it is sampled: the smoothed
        # gradient image (ITK's default) misleads the scale terms at sharp edges (a CT's skull)
        r.SetMetricUseFixedImageGradientFilter(False)
        r.SetMetricUseMovingImageGradientFilter(False)
    r.SetInitialTransform(transform, inPlace=True)
    iterations = [0]
    r.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    r.Execute(fixed_u, moving_u)
    return iterations[0]


def _from_unit(lps_u: np.ndarray, unit: float) -> np.ndarray:
    """A 4x4 map in a world measured in ``unit`` mm, in millimetres."""
    lps = np.array(lps_u, np.float64)
    lps[:3, 3] *= unit
    return lps


def _refine_affine(
    rigid: Registration,
    fixed_img,
    moving_img,
    fixed_u,
    moving_u,
    unit: float,
    rigid_lps: np.ndarray,
    centre: np.ndarray,
    method,
    outcome,
    out_of_bounds,
    min_affine_gain: float,
) -> Registration:
    """The affine refinement of a rigid registration, or the rigid one with a note saying why not:
    all 12 parameters at full resolution, started from the rigid solution, with steps from 2 mm."""
    transform = _affine_transform(rigid_lps, centre, unit)
    try:
        iterations = _optimise(
            method(levels=(1,)), fixed_u, moving_u, transform, (1,), (0.0,), unit, 2.0, 0.5, gradient_filter=False
        )
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        rigid.notes.append(f"the affine refinement failed ({reason}); kept the rigid solution")
        return rigid
    lps = _from_unit(_matrix_of(transform), unit)
    after = _metric(method, fixed_img, moving_img, _affine_transform(lps, centre))
    reg = outcome("affine", lps, after, rigid.iterations + iterations)
    reg.rigid_matrix = rigid.matrix
    gain = (rigid.metric_after - after) / max(abs(rigid.metric_after), 1e-12)
    found = (
        f"Mattes MI {rigid.metric_after:.4f} -> {after:.4f}, {100 * gain:+.1f} %; "
        f"scales {', '.join(f'{v:.3f}' for v in reg.scales)}"
    )
    if (problem := out_of_bounds(reg)) is not None:
        rigid.notes.append(f"the affine refinement left sane bounds ({problem}); kept the rigid solution")
    elif gain < min_affine_gain:
        rigid.notes.append(
            f"affine did not improve on rigid enough ({found}; at least {100 * min_affine_gain:g} % needed); "
            "kept the rigid solution"
        )
    else:
        reg.notes.append(f"affine improved on rigid ({found})")
        return reg
    return rigid


def write_transform(reg: Registration, path: str | Path) -> Path:
    """Write the registration as an ITK transform file (``.tfm``, LPS, as ITK and 3D Slicer read
    it): the map from anatomical points to the second image's points, the convention of ITK
    resampling. Written atomically."""
    from monai_emma.io.atomic import atomic_path

    sitk = _sitk()
    lps = _LPS @ np.asarray(reg.matrix) @ _LPS
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    t.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name keeps the .tfm suffix ITK goes by
        sitk.WriteTransform(t, str(tmp))
    return path


class RegisterToMatchd(MapTransform):
    """Dictionary transform: register ``keys`` (the second modality) to ``key_dst`` (the
    anatomical image) and fold the result into its affine, before MONAI's ``ResampleToMatchd``.

    Volumes only; 2D images (``kind == "slices"``) pass unchanged with ``mode="none"`` and are
    refused otherwise. Sets ``registration`` (a :class:`Registration`, or None) and adds a note.

    Args:
        keys: the second modality's key.
        key_dst: the anatomical key.
        mode: ``"none"``, ``"rigid"`` or ``"affine"``.
        **kwargs: bounds for :func:`register`.

    Example:
        >>> RegisterToMatchd("other", key_dst="anatomical", mode="rigid")  # doctest: +SKIP
    """

    def __init__(self, keys: KeysCollection = "other", key_dst: str = "anatomical", mode: str = "none", **kwargs):
        super().__init__(keys)
        self.key_dst, self.mode, self.kwargs = key_dst, check_registration(mode), kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        d.setdefault("registration", None)
        if self.mode == "none":
            return d
        if d.get("kind") == "slices":
            raise FusionError("--register is for volumes; 2D slices of an atlas are already aligned")
        fixed = d[self.key_dst]
        for key in self.key_iterator(d):
            moving = d[key]
            reg = register(_array(fixed), _affine(fixed), _array(moving), _affine(moving), self.mode, **self.kwargs)
            moving.affine = torch.as_tensor(np.linalg.inv(reg.matrix) @ _affine(moving), dtype=torch.float64)
            d["registration"] = reg
            d.setdefault("notes", []).extend([reg.summary(), *reg.notes])
        return d


def _array(x) -> np.ndarray:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return np.asarray(t.numpy()[0], np.float32)


def _affine(x) -> np.ndarray:
    return np.asarray(x.affine.detach().cpu().numpy() if isinstance(x.affine, torch.Tensor) else x.affine, np.float64)
