"""Synthetic, co-registered multi-modality head phantoms for demos and tests (no downloads).

Two flavours:

* :func:`phantom_slice_pair`: one 2D axial slice as an MRI and a second modality on the same pixel grid.
* :func:`phantom_volumes`: an analytic 3D head (scalp, skull, CSF, grey and white matter, two lateral
  ventricles and one lesion) defined in world coordinates (RAS+ millimetres, head centred at the origin)
  and sampled as MRI, CT, PET and SPECT volumes, each on its *own* grid (own spacing, origin and, for PET,
  orientation), exactly like co-registered scans from different scanners. :func:`write_phantom_nifti` and
  :func:`write_phantom_dicom` write them as NIfTI files or DICOM series.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MODALITIES",
    "PHANTOM_LABELS",
    "PhantomVolume",
    "phantom_labels",
    "phantom_lesion",
    "phantom_slice_pair",
    "phantom_volumes",
    "write_phantom_dicom",
    "write_phantom_nifti",
    "write_phantom_pairs",
]


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Boolean mask of an ellipse; centre and radii are fractions of the image size."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    y = (yy - cy * h) / (ry * h)
    x = (xx - cx * w) / (rx * w)
    c, s = np.cos(angle), np.sin(angle)
    return ((x * c + y * s) ** 2 + (-x * s + y * c) ** 2) <= 1.0


def phantom_slice_pair(size: int = 128, modality: str = "ct", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One axial head slice as an MRI and a second modality, co-registered, float32 in [0, 1].

    The anatomy: scalp, skull, grey and white matter, ventricles and a lesion. MRI (T1-like)
    shows soft tissue; CT shows bone bright and soft tissue dim; PET/SPECT show smooth uptake in
    grey matter and a hot lesion. Deterministic for a seed (noise only).

    Args:
        size: height and width in pixels.
        modality: ``"ct"``, ``"pet"`` or ``"spect"``.
        seed: random seed of the noise.

    Returns:
        ``(mri, other)``, each of shape (size, size).
    """
    shape = (size, size)
    rng = np.random.default_rng(seed)
    head = _ellipse(shape, 0.5, 0.5, 0.44, 0.36)
    skull = head & ~_ellipse(shape, 0.5, 0.5, 0.40, 0.32)
    brain = _ellipse(shape, 0.5, 0.5, 0.38, 0.30)
    white = _ellipse(shape, 0.5, 0.5, 0.28, 0.21)
    vent = _ellipse(shape, 0.46, 0.44, 0.10, 0.035, 0.3) | _ellipse(shape, 0.46, 0.56, 0.10, 0.035, -0.3)
    lesion = _ellipse(shape, 0.62, 0.60, 0.05, 0.05)

    mri = np.zeros(shape, np.float32)
    mri[head] = 0.35  # scalp/fat
    mri[skull] = 0.08
    mri[brain] = 0.55  # grey matter
    mri[white] = 0.75
    mri[vent] = 0.15
    mri[lesion] = 0.95
    modality = modality.lower()
    other = np.zeros(shape, np.float32)
    if modality == "ct":
        other[head] = 0.25
        other[brain] = 0.32
        other[white] = 0.30
        other[vent] = 0.12
        other[lesion] = 0.40
        other[skull] = 0.95
    elif modality in ("pet", "spect"):
        other[brain] = 0.55
        other[white] = 0.25
        other[vent] = 0.05
        other[lesion] = 1.0
        k = 7 if modality == "pet" else 11
        kernel = np.hanning(k + 2)[1:-1]
        kernel /= kernel.sum()
        for axis in (0, 1):
            other = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, other)
    else:
        raise ValueError(f"unknown modality {modality!r}; choose ct, pet or spect")
    mri = mri + rng.normal(0, 0.02, shape).astype(np.float32) * head
    other = other + rng.normal(0, 0.02, shape).astype(np.float32) * head
    return np.clip(mri, 0, 1).astype(np.float32), np.clip(other, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# 3D head phantom: analytic anatomy in world coordinates, sampled on per-modality grids
# ----------------------------------------------------------------------------------------------------------------------

MODALITIES: tuple[str, ...] = ("mri", "ct", "pet", "spect")

PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "scalp": 1,
    "skull": 2,
    "csf": 3,
    "grey_matter": 4,
    "white_matter": 5,
    "ventricles": 6,
    "lesion": 7,
}

# Everything below is in units of the head half-width r = head_mm / 2, with axes x = left->Right,
# y = posterior->Anterior, z = inferior->Superior (RAS+) and the head centred at the world origin.
_HEAD_EXTENT = (2.0, 2.4, 2.2)  # bounding box of the head: a bit longer front-to-back and top-to-bottom than wide
_LESION_CENTRE = (0.36, 0.30, 0.32)  # right, anterior and superior of the centre, in the white/grey matter
_LESION_RADIUS = 0.15
# (label, centre, semi-axes) of axis-aligned ellipsoids, painted in this order (later ones overwrite earlier ones)
_ELLIPSOIDS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("scalp", (0.0, 0.0, 0.0), (1.00, 1.20, 1.10)),
    ("skull", (0.0, 0.0, 0.0), (0.95, 1.15, 1.05)),
    ("csf", (0.0, 0.0, 0.0), (0.88, 1.08, 0.98)),
    ("grey_matter", (0.0, 0.0, 0.0), (0.86, 1.06, 0.96)),
    ("white_matter", (0.0, 0.0, 0.04), (0.62, 0.78, 0.66)),
    ("ventricles", (0.13, 0.02, 0.12), (0.06, 0.30, 0.12)),
    ("ventricles", (-0.13, 0.02, 0.12), (0.06, 0.30, 0.12)),
    ("lesion", _LESION_CENTRE, (_LESION_RADIUS,) * 3),
)

# Tissue values indexed by label (background, scalp, skull, csf, grey matter, white matter, ventricles, lesion).
_TISSUE_VALUES: dict[str, tuple[float, ...]] = {
    "mri": (0.0, 900.0, 100.0, 200.0, 600.0, 800.0, 200.0, 1000.0),  # T1-like, arbitrary units
    "ct": (-1000.0, -80.0, 1200.0, 5.0, 40.0, 30.0, 5.0, 60.0),  # Hounsfield units
    "pet": (0.0, 1.0, 0.3, 0.5, 8.0, 3.0, 0.5, 15.0),  # FDG-like activity
    "spect": (0.0, 15.0, 5.0, 10.0, 100.0, 40.0, 10.0, 160.0),  # perfusion-like counts
}


@dataclass(frozen=True)
class _GridSpec:
    """How one modality samples the world: all lengths relative to ``mri_spacing`` or the head half-width r."""

    spacing: tuple[float, float, float]  # voxel size, multiples of mri_spacing
    fov: tuple[float, float, float]  # field of view, multiples of r (one more voxel is added on each side)
    shift: tuple[float, float, float]  # grid centre minus head centre, in this grid's voxels (deliberately non-integer)
    angle_deg: float = 0.0  # in-plane rotation of the grid about the S axis
    supersample: int = 1  # label samples per voxel and axis (coarse grids average 2x2x2 sub-voxels)
    fwhm: float = 0.0  # resolution of the scanner: Gaussian FWHM in mm at mri_spacing = 1 (scales with it)


_GRIDS: dict[str, _GridSpec] = {
    "mri": _GridSpec((1.0, 1.0, 1.0), _HEAD_EXTENT, (0.0, 0.0, 0.0)),
    "ct": _GridSpec((0.9, 0.9, 2.0), (2.2, 2.64, 2.3), (0.37, -0.58, 0.21)),
    "pet": _GridSpec((2.5, 2.5, 2.5), (3.4, 3.4, 2.75), (-1.43, 0.62, 0.55), angle_deg=5.0, supersample=2, fwhm=6.0),
    "spect": _GridSpec((4.0, 4.0, 4.0), (3.4, 3.4, 2.75), (0.71, 1.27, -0.38), supersample=2, fwhm=10.0),
}
_MRI_NOISE = 15.0  # sigma of the two Gaussian channels whose magnitude gives Rician noise
_CT_NOISE = 5.0  # HU
_COUNTS_PER_UNIT = {"pet": 20.0, "spect": 1.0}  # Poisson counts per unit of activity (sets the noise level)


@dataclass(frozen=True, eq=False)
class PhantomVolume:
    """One modality of the 3D head phantom on its own voxel grid.

    Attributes:
        modality: ``"mri"``, ``"ct"``, ``"pet"`` or ``"spect"``.
        array: float32 volume of shape (X, Y, Z) in the modality's units (MRI: T1-like arbitrary units, CT:
            Hounsfield units, PET: SUV (the DICOM series stores Bq/ml of an SUV study), SPECT: counts); axis
            order is the voxel index (i, j, k) of ``affine``.
        affine: 4x4 float64 matrix from voxel index (i, j, k, 1) to world RAS+ millimetres (NIfTI convention).

    Example:
        >>> vol = phantom_volumes(head_mm=48, modalities=("pet",))["pet"]
        >>> vol.spacing
        (2.5, 2.5, 2.5)
    """

    modality: str
    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or np.shape(self.affine) != (4, 4):
            raise ValueError(f"need a 3D array and a 4x4 affine, got {self.array.shape} and {np.shape(self.affine)}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes 0, 1, 2 (lengths of the affine's columns)."""
        x, y, z = (float(v) for v in np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0))
        return x, y, z

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (X, Y, Z) of the array."""
        x, y, z = self.array.shape
        return x, y, z


def phantom_lesion(head_mm: float = 180.0) -> tuple[tuple[float, float, float], float]:
    """World position and size of the phantom's (spherical) lesion.

    Args:
        head_mm: overall head width (left-right) in mm.

    Returns:
        ``((x, y, z), radius)`` in RAS+ millimetres; the lesion is right, anterior and superior of the head centre.

    Example:
        >>> phantom_lesion(180.0)
        ((32.4, 27.0, 28.8), 13.5)
    """
    r = head_mm / 2.0
    x, y, z = (round(c * r, 10) for c in _LESION_CENTRE)
    return (x, y, z), round(_LESION_RADIUS * r, 10)


def phantom_labels(shape: Sequence[int], affine: np.ndarray, head_mm: float = 180.0) -> np.ndarray:
    """Tissue label (see :data:`PHANTOM_LABELS`) at the centre of every voxel of a grid.

    Each ellipsoid of the anatomy is evaluated only inside its own bounding box in voxel space, with the world
    coordinates built from broadcast 1D/2D pieces, so large grids stay fast.

    Args:
        shape: grid shape (X, Y, Z).
        affine: 4x4 voxel index -> world RAS+ mm matrix of the grid.
        head_mm: overall head width (left-right) in mm.

    Returns:
        uint8 array of shape (X, Y, Z).

    Example:
        >>> affine = np.diag([1.0, 1.0, 1.0, 1.0])
        >>> affine[:3, 3] = -24.0  # a 1 mm grid with voxel (24, 24, 24) at the world origin
        >>> labels = phantom_labels((49, 49, 49), affine, head_mm=48)
        >>> int(labels[24, 24, 24]) == PHANTOM_LABELS["white_matter"], int(labels[24, 24, 0])
        (True, 2)
    """
    shape3 = tuple(int(n) for n in shape)
    if len(shape3) != 3:
        raise ValueError(f"need a 3D shape, got {shape3}")
    affine = np.asarray(affine, dtype=np.float64)
    inverse = np.linalg.inv(affine)
    labels = np.zeros(shape3, dtype=np.uint8)
    r = head_mm / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    for name, centre_r, semi_r in _ELLIPSOIDS:
        centre, semi = np.asarray(centre_r) * r, np.asarray(semi_r) * r
        corners = (centre + signs * semi) @ inverse[:3, :3].T + inverse[:3, 3]  # world bounding box -> voxel space
        lo = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, shape3)
        hi = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, shape3)
        if np.any(hi <= lo):
            continue
        q: np.ndarray | float = 0.0  # sum over world axes of ((coordinate - centre) / semi-axis)^2
        for a in range(3):
            coord: np.ndarray | float = affine[a, 3] - centre[a]
            for d in range(3):
                if affine[a, d] != 0.0:
                    steps = np.arange(lo[d], hi[d], dtype=np.float64) * affine[a, d]
                    coord = coord + steps.reshape([-1 if e == d else 1 for e in range(3)])
            q = q + (np.asarray(coord, dtype=np.float32) / np.float32(semi[a])) ** 2
        inside = np.broadcast_to(np.asarray(q) <= 1.0, tuple(hi - lo))
        block = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.copyto(block, np.uint8(PHANTOM_LABELS[name]), where=inside)
    return labels


def _grid(modality: str, head_mm: float, mri_spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a modality's grid: centred on the head (plus its shift), rotated about S by its angle."""
    spec = _GRIDS[modality]
    r = head_mm / 2.0
    spacing = np.asarray(spec.spacing) * mri_spacing
    nx, ny, nz = (int(math.ceil(f * r / s - 1e-6)) + 2 for f, s in zip(spec.fov, spacing))
    c, s = math.cos(math.radians(spec.angle_deg)), math.sin(math.radians(spec.angle_deg))
    linear = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(spacing)
    centre_index = (np.array([nx, ny, nz], dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ np.asarray(spec.shift) - linear @ centre_index  # voxel centre_index + shift -> origin
    return (nx, ny, nz), affine


def _render(modality: str, head_mm: float, mri_spacing: float, rng: np.random.Generator) -> PhantomVolume:
    """Sample the anatomy on the modality's grid, then apply its resolution and noise."""
    shape, affine = _grid(modality, head_mm, mri_spacing)
    spec = _GRIDS[modality]
    lut = np.asarray(_TISSUE_VALUES[modality], dtype=np.float32)
    f = spec.supersample
    if f > 1:  # f x f x f label samples per voxel, averaged (partial-volume effect)
        to_coarse = np.eye(4)
        to_coarse[:3, :3] /= f
        to_coarse[:3, 3] = (1.0 / f - 1.0) / 2.0  # sub-voxel centres of voxel i: i + (m + 0.5) / f - 0.5
        labels = phantom_labels([n * f for n in shape], affine @ to_coarse, head_mm)
        img = lut[labels].reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5), dtype=np.float32)
    else:
        img = lut[phantom_labels(shape, affine, head_mm)]

    if modality == "mri":  # magnitude of a complex signal with Gaussian noise in both channels: Rician
        real = img + rng.normal(0.0, _MRI_NOISE, shape).astype(np.float32)
        imag = rng.normal(0.0, _MRI_NOISE, shape).astype(np.float32)
        img = np.sqrt(real * real + imag * imag)
    elif modality == "ct":  # integer HU, as scanners store them
        img = np.rint(np.clip(img + rng.normal(0.0, _CT_NOISE, shape), -1024.0, 3071.0))
    else:  # emission: blur with the scanner's point-spread function, then Poisson counting noise
        fwhm_mm = spec.fwhm * mri_spacing
        sigma_vox = [
            fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / sp for sp in np.asarray(spec.spacing) * mri_spacing
        ]
        img = _gaussian_blur(img, sigma_vox)
        k = _COUNTS_PER_UNIT[modality]
        img = rng.poisson(np.maximum(img, 0.0).astype(np.float64) * k) / k
    return PhantomVolume(modality, np.ascontiguousarray(img, dtype=np.float32), affine)


def _gaussian_blur(img: np.ndarray, sigmas: Sequence[float], truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur with zeros outside the volume (the kernel of
    ``scipy.ndimage.gaussian_filter(mode="constant")``: normalised, cut at ``truncate`` sigmas),
    in numpy so that the base install needs no scipy."""
    out = np.asarray(img, dtype=np.float64)
    for axis, sigma in enumerate(sigmas):
        radius = int(truncate * float(sigma) + 0.5)
        if sigma <= 0 or radius == 0:
            continue
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / float(sigma)) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, w in enumerate(taps):
            acc += w * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out.astype(np.float32)


def _check_modalities(modalities: Sequence[str] | str) -> list[str]:
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    names = [m.lower() for m in names]
    unknown = [m for m in names if m not in MODALITIES]
    if unknown or not names:
        raise ValueError(f"unknown modality {unknown or names!r}; choose from {MODALITIES}")
    return list(dict.fromkeys(names))


def phantom_volumes(
    seed: int = 0,
    head_mm: float = 180.0,
    modalities: Sequence[str] = MODALITIES,
    mri_spacing: float = 1.0,
) -> dict[str, PhantomVolume]:
    """A 3D head phantom rendered as co-registered MRI, CT, PET and SPECT volumes, each on its own grid.

    The anatomy (scalp, skull, CSF, grey and white matter, two lateral ventricles and a spherical lesion,
    see :func:`phantom_lesion`) is analytic in world RAS+ mm, centred at the origin and scaled with
    ``head_mm``. The grids:

    * MRI: isotropic ``mri_spacing``, axial, just covering the head; T1-like values (WM 800, GM 600, CSF 200,
      scalp 900, skull 100, lesion 1000, air 0) with mild Rician noise (sigma 15, so air is not exactly 0).
    * CT: ``0.9 x 0.9 x 2 * mri_spacing``, a slightly larger field of view and a shifted origin; integer HU
      (air -1000, scalp -80, GM 40, WM 30, CSF 5, skull 1200, lesion 60) with noise (sigma 5 HU).
    * PET: ``2.5 * mri_spacing`` isotropic, a field of view much larger than the head, a non-integer shift and a
      5 degree rotation about S (so the affine is not diagonal); FDG-like activity (GM 8, WM 3, CSF 0.5, scalp 1,
      lesion 15) averaged over 2x2x2 sub-voxels, blurred to ``6 * mri_spacing`` mm FWHM, with Poisson noise.
    * SPECT: ``4 * mri_spacing`` isotropic, another shift; perfusion counts (GM 100, WM 40, lesion 160)
      averaged over 2x2x2 sub-voxels, blurred to ``10 * mri_spacing`` mm FWHM, with Poisson noise.

    The noise of modality ``m`` comes from ``np.random.default_rng((seed, MODALITIES.index(m)))``: deterministic
    for a seed, and independent of which other modalities are asked for. Only the noise depends on the seed.

    Args:
        seed: random seed of the noise.
        head_mm: overall head width (left-right) in mm; 180 is adult size, ~48 gives small volumes for tests.
        modalities: any of :data:`MODALITIES`.
        mri_spacing: the scale of every grid, in mm: the MRI voxel size, and the unit of the other modalities'
            voxel sizes (CT ``0.9 x 0.9 x 2``, PET ``2.5``, SPECT ``4`` times it) and of the PET/SPECT resolution
            (FWHM ``6`` and ``10`` times it). The fields of view do not change (they follow ``head_mm``), so 2 gives
            every modality voxels twice as large and about 1/8 as many.

    Returns:
        ``{modality: PhantomVolume}`` in the order asked for; arrays are float32 (X, Y, Z).

    Example:
        >>> vols = phantom_volumes(seed=1, head_mm=48)
        >>> vols["mri"].array.shape, vols["pet"].spacing
        ((50, 60, 55), (2.5, 2.5, 2.5))
    """
    if head_mm <= 0 or mri_spacing <= 0:
        raise ValueError(f"head_mm and mri_spacing must be positive, got {head_mm} and {mri_spacing}")
    names = _check_modalities(modalities)
    return {
        m: _render(m, float(head_mm), float(mri_spacing), np.random.default_rng((seed, MODALITIES.index(m))))
        for m in names
    }


def write_phantom_nifti(
    out_dir: str | Path,
    seed: int = 0,
    head_mm: float = 180.0,
    modalities: Sequence[str] = MODALITIES,
    mri_spacing: float = 1.0,
) -> dict[str, Path]:
    """Write the phantom volumes as ``out_dir/<modality>.nii.gz`` (float32, sform = qform = affine, code 1, mm).

    Args:
        out_dir: output folder (created if missing).
        seed: random seed of the noise.
        head_mm: overall head width in mm.
        modalities: any of :data:`MODALITIES`.
        mri_spacing: MRI voxel size in mm, and the scale of every modality's voxels: CT ``0.9 x 0.9 x 2``,
            PET ``2.5`` and SPECT ``4`` times it (the PET/SPECT blur, FWHM ``6`` and ``10`` times it, follows); the
            fields of view stay, so 2 gives every modality voxels twice as large and about 1/8 as many (see
            :func:`phantom_volumes`).

    Returns:
        ``{modality: path}``.

    Example:
        >>> import nibabel as nib
        >>> paths = write_phantom_nifti("/tmp/phantom", head_mm=48)
        >>> nib.load(paths["pet"]).shape
        (35, 35, 29)
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, vol in phantom_volumes(seed, head_mm, modalities, mri_spacing).items():
        img = nib.Nifti1Image(vol.array.astype(np.float32), vol.affine)
        img.set_sform(vol.affine, code=1)  # 1 = scanner coordinates
        img.set_qform(vol.affine, code=1)
        img.header.set_xyzt_units(xyz="mm")
        img.set_data_dtype(np.float32)
        paths[name] = out / f"{name}.nii.gz"
        nib.save(img, paths[name])
    return paths


# DICOM Modality, SOP Class UID, series number and description per modality. SPECT uses NM Image Storage with one
# single-frame file per slice: a simplification (real NM objects are multi-frame with detector and frame-pointer
# modules), but pydicom and MONAI read it like any other slice series.
_DICOM_SERIES: dict[str, tuple[str, str, int, str]] = {
    "mri": ("MR", "1.2.840.10008.5.1.4.1.1.4", 1, "MRI"),  # MR Image Storage
    "ct": ("CT", "1.2.840.10008.5.1.4.1.1.2", 2, "CT"),  # CT Image Storage
    "pet": ("PT", "1.2.840.10008.5.1.4.1.1.128", 3, "PET"),  # Positron Emission Tomography Image Storage
    "spect": ("NM", "1.2.840.10008.5.1.4.1.1.20", 4, "SPECT"),  # Nuclear Medicine Image Storage
}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_STUDY_DATE, _STUDY_TIME = "20250101", "120000"


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters, ~10 significant digits)."""
    value = float(value)
    if abs(value) < 1e-9:
        return "0"
    for digits in range(10, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DICOM decimal string")


#: the PET series is a body-weight SUV study: 370 MBq of FDG (F-18) injected at 11:00, a 70 kg
#: patient, the series at 12:00, decay-corrected to its start. The phantom's PET values are SUVs;
#: the files store them as activity concentration (Bq/ml), so ``--suv`` gives them back.
_PET_STUDY = {"weight_kg": 70.0, "dose_bq": 370e6, "half_life_s": 6586.2, "injection": "110000"}


def _bqml_per_suv() -> float:
    """Bq/ml per SUV unit for :data:`_PET_STUDY` (the dose decayed over the hour before the series)."""
    s = _PET_STUDY
    decayed = s["dose_bq"] * 2.0 ** (-3600.0 / s["half_life_s"])
    return decayed / (s["weight_kg"] * 1000.0)


def _pet_tags(ds) -> None:
    """The tags of a body-weight SUV PET study (:data:`_PET_STUDY`)."""
    from pydicom.dataset import Dataset

    s = _PET_STUDY
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN"]
    ds.PatientWeight = _ds(s["weight_kg"])
    ds.AcquisitionTime = _STUDY_TIME
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = s["injection"]
    radio.RadiopharmaceuticalStartDateTime = _STUDY_DATE + s["injection"]
    radio.RadionuclideTotalDose = _ds(s["dose_bq"])
    radio.RadionuclideHalfLife = _ds(s["half_life_s"])
    ds.RadiopharmaceuticalInformationSequence = [radio]


def _stored_values(vol: PhantomVolume) -> tuple[np.ndarray, float, bool]:
    """16-bit stored values, rescale slope (intercept 0) and signedness: CT int16 HU, else uint16 up to ~60000."""
    if vol.modality == "ct":
        return np.clip(np.rint(vol.array), -32768, 32767).astype("<i2"), 1.0, True
    slope = float(_ds(max(float(vol.array.max()), 1e-6) / 60000.0))  # the slope exactly as written to the file
    stored = np.clip(np.rint(np.clip(vol.array, 0.0, None) / slope), 0, 65535).astype("<u2")
    return stored, slope, False


def _write_series(vol: PhantomVolume, folder: Path, uids: dict[str, str], entropy: list[str]) -> None:
    """One single-frame file per axial slice k of ``vol``: file pixel (row r, column c) = ``vol.array[c, r, k]``.

    Column index runs along array axis 0 and row index along axis 1, which is what MONAI's PydicomReader (with its
    default ``swap_ij=True``) undoes: it returns the original (X, Y, Z) array and affine.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    affine = np.asarray(vol.affine, dtype=np.float64)
    if np.linalg.det(affine[:3, :3]) <= 0:
        raise ValueError("the affine must be right-handed (slice k + 1 above slice k along the image normal)")
    lps = _LPS_FROM_RAS @ affine  # DICOM patient coordinates are LPS, the affine is RAS
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]  # one column / row / slice further
    dc, dr, dz = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    row_cosine, col_cosine = col_step / dc, row_step / dr  # along a row (columns increase), along a column
    normal = np.cross(row_cosine, col_cosine)  # slice positions along it grow with k since det > 0
    if vol.modality == "pet":  # stored as Bq/ml of an SUV study
        vol = PhantomVolume(vol.modality, (vol.array * _bqml_per_suv()).astype(np.float32), vol.affine)
    stored, slope, signed = _stored_values(vol)
    dicom_modality, sop_class, series_number, description = _DICOM_SERIES[vol.modality]
    if vol.modality == "ct":
        centres, widths, explanation = ["40", "600"], ["80", "2800"], ["BRAIN", "BONE"]
    else:
        peak = float(vol.array.max())
        centres, widths, explanation = [_ds(peak / 2)], [_ds(max(peak, 1e-6))], ["FULL RANGE"]

    nx, ny, nz = vol.shape
    for k in range(nz):
        position = lps[:3, 3] + k * slice_step
        sop_uid = generate_uid(entropy_srcs=[*entropy, vol.modality, "instance", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = _STUDY_TIME
        ds.Modality = dicom_modality
        ds.Manufacturer = "monai-emma phantom"
        ds.StudyDescription = "EMMA synthetic head phantom"
        ds.SeriesDescription = f"EMMA phantom {description}"
        ds.PatientName = "EMMA^Phantom"
        ds.PatientID = "EMMA-PHANTOM"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = uids[vol.modality]
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = uids["frame"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *col_cosine)]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelSpacing = [_ds(dr), _ds(dc)]  # [between rows, between columns]
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds(slope)
        if vol.modality == "ct":
            ds.RescaleType = "HU"
        if vol.modality == "pet":
            _pet_tags(ds)
        ds.WindowCenter, ds.WindowWidth, ds.WindowCenterWidthExplanation = centres, widths, explanation
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (Rows, Columns) = (Y, X)
        path = folder / f"{k + 1:04d}.dcm"
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(path, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)


def write_phantom_dicom(
    out_dir: str | Path,
    seed: int = 0,
    head_mm: float = 180.0,
    modalities: Sequence[str] = MODALITIES,
    mri_spacing: float = 1.0,
) -> dict[str, Path]:
    """Write the phantom volumes as one DICOM series per modality: ``out_dir/<modality>/0001.dcm, ...``.

    One study (shared StudyInstanceUID and FrameOfReferenceUID: the volumes are co-registered), one series per
    modality (MR, CT, PT, NM), one single-frame Explicit VR Little Endian file per axial slice, InstanceNumber
    1..N increasing along the image normal. CT is stored as int16 HU (slope 1); MRI, PET and SPECT as uint16 with a
    per-series RescaleSlope, so stored * slope reproduces the float values to within slope / 2. File pixel
    (row r, column c) of slice k is voxel ``array[c, r, k]``; geometry is converted from RAS to DICOM's LPS.
    ``monai.transforms.LoadImage(reader="PydicomReader")`` on a series folder gives back the (X, Y, Z) array and
    the RAS affine of :func:`phantom_volumes`. UIDs are deterministic for (seed, head_mm, mri_spacing).
    Existing ``NNNN.dcm`` files in the series folders are removed first, so a rewrite never mixes series.

    Args:
        out_dir: output folder (created if missing).
        seed: random seed of the noise.
        head_mm: overall head width in mm.
        modalities: any of :data:`MODALITIES`.
        mri_spacing: MRI voxel size in mm, and the scale of every modality's voxels: CT ``0.9 x 0.9 x 2``,
            PET ``2.5`` and SPECT ``4`` times it (the PET/SPECT blur, FWHM ``6`` and ``10`` times it, follows); the
            fields of view stay, so 2 gives every modality voxels twice as large and about 1/8 as many (see
            :func:`phantom_volumes`).

    Returns:
        ``{modality: series folder}``.

    Example:
        >>> from monai.transforms import LoadImage
        >>> folders = write_phantom_dicom("/tmp/phantom_dcm", head_mm=48, modalities=("pet",))
        >>> LoadImage(reader="PydicomReader", image_only=True)(folders["pet"]).shape
        torch.Size([35, 35, 29])
    """
    from pydicom.uid import generate_uid

    volumes = phantom_volumes(seed, head_mm, modalities, mri_spacing)
    entropy = ["monai-emma phantom", str(int(seed)), repr(float(head_mm)), repr(float(mri_spacing))]
    uids = {
        "study": generate_uid(entropy_srcs=[*entropy, "study"]),
        "frame": generate_uid(entropy_srcs=[*entropy, "frame of reference"]),
    }
    uids.update({m: generate_uid(entropy_srcs=[*entropy, m, "series"]) for m in MODALITIES})
    out = Path(out_dir)
    folders: dict[str, Path] = {}
    for name, vol in volumes.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.dcm"):
            if old.stem.isdigit():
                old.unlink()
        _write_series(vol, folder, uids, entropy)
        folders[name] = folder
    return folders


def write_phantom_pairs(
    root: str | os.PathLike, size: int = 64, n: int = 4, modalities: Sequence[str] = ("CT", "PET")
) -> Path:
    """A Harvard-style folder of 2D phantom pairs: ``root/MRI_<M>/{MRI,<M>}/<i>.png``.

    All files are 3-channel 8-bit PNGs like the Harvard atlas; CT is grey, PET and SPECT are
    pseudo-colour (a red-yellow ramp). Pairs differ by a small shift and their noise.

    Args:
        root: created if needed.
        size: slice size in pixels.
        n: pairs per modality.
        modalities: ``"CT"``, ``"PET"``, ``"SPECT"``.

    Returns:
        ``root``.

    Example:
        >>> write_phantom_pairs("pairs", size=64, n=2)  # doctest: +SKIP
        PosixPath('pairs')
    """
    from PIL import Image

    root = Path(root)
    for mod in modalities:
        for i in range(n):
            mri, other = phantom_slice_pair(size, mod.lower(), seed=i)
            shift = (i % 3) - 1  # vary the anatomy a little between slices
            mri, other = np.roll(mri, shift, 0), np.roll(other, shift, 1)
            grey = (mri * 255).round().astype(np.uint8)
            if mod.upper() == "CT":
                other_img = np.repeat(((other * 255).round().astype(np.uint8))[..., None], 3, 2)
            else:
                ramp = np.stack([np.clip(2 * other, 0, 1), np.clip(2 * other - 0.5, 0, 1), other * 0.2], -1)
                other_img = (ramp * 255).round().astype(np.uint8)
            for folder, img in (("MRI", np.repeat(grey[..., None], 3, 2)), (mod.upper(), other_img)):
                d = root / f"MRI_{mod.upper()}" / folder
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(d / f"{i + 1}.png")
    return root
