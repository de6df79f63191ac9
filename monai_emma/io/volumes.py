"""Reading fusion inputs: 2D images, NIfTI volumes and DICOM series, with MONAI's readers.

Every input becomes a :class:`Volume`: an array plus the geometry needed to resample and to write
results back on the same grid. 3D arrays are ``(X, Y, Z)`` in the reader's voxel order with a
4×4 voxel-to-world affine in RAS+ millimetres (MONAI's convention for NIfTI and DICOM alike); a
single DICOM slice becomes a one-slice volume. 2D images stay ``(C, H, W)`` on their 0-255 scale.

Errors are :class:`VolumeReadError`: one line naming the input and the problem, never a reader
traceback (the original exception stays attached as ``__cause__``).

What pydicom warns or logs while a DICOM series is read (an over-long text field, an invalid value:
one message per file and field, often hundreds) is collected instead of printed and becomes one
line of :attr:`Volume.notes`. Only the reading itself is affected: nothing is filtered at import
or outside the read.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_emma.errors import first_line
from monai_emma.transforms.io import quiet_monai_readers

__all__ = [
    "Volume",
    "DicomSeries",
    "PydicomWarnings",
    "VolumeReadError",
    "read_volume",
    "volume_geometry",
    "list_dicom_series",
    "input_kind",
    "guess_modality",
    "guess_anatomical_modality",
    "as_volume",
    "MODALITIES",
    "ANATOMICAL_MODALITIES",
    "COMPRESSED_SYNTAXES",
]

#: Second-modality names a fusion accepts.
MODALITIES = ("ct", "pet", "spect", "ir")
#: Anatomical (base) image names: MRI, CT (PET/CT, SPECT/CT) and visible light (infrared pairs).
ANATOMICAL_MODALITIES = ("mri", "ct", "vis")
_DICOM_MODALITY = {"CT": "ct", "PT": "pet", "NM": "spect", "ST": "spect"}
#: words in file or folder names that say the modality (``pet.nii.gz``, ``sub-01_spect``, ``CT_head``)
_NAME_WORDS = {"ct": "ct", "pet": "pet", "pt": "pet", "fdg": "pet", "spect": "spect", "nm": "spect", "ir": "ir"}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: 3D formats read with nibabel (its own loaders: MONAI's NibabelReader takes NIfTI and MGH only)
#: and NRRD (MONAI's NrrdReader, pynrrd); the kind names the format in messages
VOLUME_SUFFIXES = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".hdr": "analyze",
    ".img": "analyze",
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".mnc": "minc",
    ".v": "ecat",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".par": "parrec",
    ".rec": "parrec",
}
_FORMAT_NAMES = {
    "nifti": "NIfTI",
    "analyze": "Analyze",
    "mgh": "FreeSurfer MGH/MGZ",
    "minc": "MINC",
    "ecat": "ECAT",
    "nrrd": "NRRD",
    "parrec": "Philips PAR/REC",
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeReadError(ValueError):
    """An input could not be used; the message names it and the problem in one line."""


class PydicomWarnings:
    """What pydicom warns (``warnings``) and logs (logger ``"pydicom"``, WARNING and above) inside
    :meth:`collect`, kept in :attr:`messages` instead of being shown.

    pydicom checks every value it converts (e.g. a SeriesDescription longer than the 64 characters
    of VR LO) and warns once per file and field; it also logs the same text, which reaches any
    handler the application configured. Inside :meth:`collect` both are recorded and withheld;
    warnings from other packages are shown after the block as they would have been (or dropped
    with ``drop_others=True``). The filters live only as long as the block: ``warnings`` state is
    restored on exit and the logging filter removed (while the block runs, it also catches pydicom
    messages of other threads).
    """

    def __init__(self) -> None:
        #: the messages, one per warning, in order
        self.messages: list[str] = []
        #: keywords (or tags) of the header fields the messages were about, where known
        self.fields: dict[str, None] = {}
        self._caught: list | None = None

    def extend(self, other: PydicomWarnings) -> None:
        self.messages.extend(other.messages)
        self.fields.update(other.fields)

    def count_now(self) -> int:
        """How many warnings the running :meth:`collect` block has recorded so far (0 outside one)."""
        return len(self._caught) if self._caught is not None else 0

    @contextmanager
    def collect(self, drop_others: bool = False) -> Iterator[None]:
        import pydicom

        package = str(Path(pydicom.__file__).resolve().parent)
        logged: list[str] = []

        def withhold(record: logging.LogRecord) -> bool:
            if record.levelno >= logging.WARNING:
                logged.append(record.getMessage())
                return False
            return True

        logger = logging.getLogger("pydicom")
        logger.addFilter(withhold)
        others: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._caught = caught
                try:
                    yield
                finally:
                    self._caught = None
                    pending = Counter(logged)  # pydicom's warn_and_log logs and warns the same text
                    for w in caught:
                        text = str(w.message)
                        if pending[text] > 0:
                            pending[text] -= 1
                            self.messages.append(text)
                        elif str(Path(w.filename).resolve()).startswith(package):
                            self.messages.append(text)
                        else:
                            others.append(w)
                    self.messages.extend(pending.elements())  # logged only
        finally:
            logger.removeFilter(withhold)
        if not drop_others:
            for w in others:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

    def note(self, source: str | os.PathLike, doing: str = "reading", done: str = "read") -> str | None:
        """One line summing up the messages for :attr:`Volume.notes`, or None when there were none:
        ``pydicom: <n> warnings while <doing> <source> about <fields> (e.g. '<message>'); the
        values were <done> as stored``."""
        if not self.messages:
            return None
        from pydicom.datadict import keyword_for_tag

        n = len(self.messages)
        fields = dict(self.fields)
        texts = []
        for m in self.messages:  # "Error while processing tag 00080080: <text>" names the field
            tagged = _TAGGED.match(m)
            if tagged:
                fields[keyword_for_tag(int(tagged[1], 16)) or tagged[1]] = None
                m = tagged[2] or m
            texts.append(_short(m))
        distinct = list(dict.fromkeys(texts))
        fields = list(fields)
        about = ""
        if fields:
            more = f" and {len(fields) - 5} more" if len(fields) > 5 else ""
            about = f" about {', '.join(fields[:5])}{more}"
        kinds = f"; {len(distinct)} different messages" if len(distinct) > 1 else ""
        return (
            f"pydicom: {n} warning{'s' if n != 1 else ''} while {doing} {source}{about} "
            f"(e.g. {distinct[0]!r}{kinds}); the values were {done} as stored"
        )


_TAGGED = re.compile(r"^Error while processing tag ([0-9A-Fa-f]{8})(?::\s*(.*))?$", re.S)


def _short(message: str, limit: int = 160) -> str:
    line = first_line(message).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _convert_elements(ds, collected: PydicomWarnings) -> None:
    """Convert every top-level element of a header now, inside ``collected``'s block (pydicom
    converts, and checks, a value on first access), so that pydicom's complaints come while the
    header is read, with the field they are about, not later wherever a value happens to be used."""
    from pydicom.datadict import keyword_for_tag

    for tag in list(ds.keys()):
        before = collected.count_now()
        try:
            ds[tag]
        except Exception:  # a value pydicom cannot convert: the tags this package needs are checked later
            pass
        if collected.count_now() > before:
            collected.fields[keyword_for_tag(tag) or str(tag)] = None


@dataclass
class DicomSeries:
    """One DICOM series found in a folder (headers only).

    ``pydicom_warnings`` holds what pydicom warned or logged while this series' headers were read
    (one message per warning, e.g. one per file and over-long field, and the fields concerned);
    they were not shown.
    """

    uid: str
    files: list[Path]
    modality: str = ""
    description: str = ""
    headers: list = field(default_factory=list, repr=False)  # pydicom datasets without pixels, per file
    pydicom_warnings: PydicomWarnings = field(default_factory=PydicomWarnings, repr=False)

    def summary(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.modality or '?'}, {len(self.files)} file(s){desc})"


@dataclass
class Volume:
    """An input image with its geometry.

    Attributes:
        array: float32; ``(X, Y, Z)`` for volumes, ``(C, H, W)`` on a 0-255 scale for 2D images.
        affine: 4×4 voxel index → RAS+ mm (identity for 2D images).
        path: the file or folder it came from.
        kind: ``"image2d"``, ``"dicom"``, or the 3D file format (``"nifti"``, ``"analyze"``,
            ``"mgh"``, ``"minc"``, ``"ecat"``, ``"nrrd"``).
        files: the DICOM files of the series (empty otherwise).
        modality: the DICOM ``Modality`` (``"MR"``, ``"CT"``, ``"PT"``, ``"NM"``…) when known.
        series_uid: the DICOM ``SeriesInstanceUID`` when known.
        nonfinite: how many voxels are NaN or infinite ("no data", e.g. outside the field of view
            of a resampled volume); they stay in ``array`` and count as empty downstream.
        headers: the DICOM headers (no pixels), one per slice in InstanceNumber order.
        source_range: 2D images of more than 8 bits: ``(min, max, bits)`` of the file, the range
            that became 0-255.
        notes: remarks about the reading worth showing the user, e.g. one line summing up
            pydicom's warnings about a DICOM series (``"pydicom: 87 warnings while reading ..."``).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    kind: str
    files: list[Path] = field(default_factory=list)
    modality: str = ""
    series_uid: str = ""
    nonfinite: int = 0
    headers: list = field(default_factory=list, repr=False)
    source_range: tuple[float, float, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_3d(self) -> bool:
        return self.kind != "image2d"

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (3D only)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def describe(self) -> str:
        shape = "x".join(str(s) for s in (self.array.shape if self.is_3d else self.array.shape[1:]))
        if not self.is_3d:
            return f"{self.path} (2D image {shape})"
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"{self.path} ({self.kind}, {shape} voxels of {sp} mm)"


def input_kind(path: str | os.PathLike) -> str:
    """``"image2d"``, ``"dicom"`` or a 3D file format (see :class:`Volume`) from the path alone
    (folders are DICOM series)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    for suffix, kind in VOLUME_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    if name.endswith(IMAGE_SUFFIXES):
        return "image2d"
    if name.endswith((".dcm", ".dicom", ".ima")) or _is_dicom_file(p):
        return "dicom"
    raise VolumeReadError(
        f"{p}: unknown input format (expected a 2D image {', '.join(IMAGE_SUFFIXES)}, a volume "
        f"{', '.join(VOLUME_SUFFIXES)}, a DICOM file or a DICOM series folder)"
    )


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def list_dicom_series(folder: str | os.PathLike) -> dict[str, DicomSeries]:
    """The DICOM series in a folder (not recursive), by SeriesInstanceUID, reading headers only.

    pydicom's warnings about the headers are not shown: each series keeps them in
    :attr:`DicomSeries.pydicom_warnings` (:func:`read_volume` turns them into one note).

    Raises:
        VolumeReadError: the folder holds no readable DICOM file.
    """
    import pydicom

    folder = Path(folder)
    series: dict[str, DicomSeries] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not pydicom.misc.is_dicom(path):
            continue
        collected = PydicomWarnings()
        try:
            with collected.collect():
                ds = _read_header(path)
                _convert_elements(ds, collected)
        except VolumeReadError:  # a damaged file: reported when it belongs to the chosen series
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "unknown")
        entry = series.setdefault(
            uid, DicomSeries(uid, [], str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")))
        )
        entry.files.append(path)
        entry.headers.append(ds)
        entry.pydicom_warnings.extend(collected)
    if not series:
        raise VolumeReadError(f"{folder}: no DICOM files in this folder")
    return series


def _read_header(path: Path):
    """A DICOM file's header (no pixels). pydicom's warnings pass through: callers collect them."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise VolumeReadError(f"{path}: not a readable DICOM file ({first_line(err)})") from err


def _check_series_headers(folder: Path, files: Sequence[Path], headers: Sequence) -> tuple[list[Path], list]:
    """Validate a series' geometry from its headers; returns files and headers in InstanceNumber order."""
    rows = []
    for path, ds in zip(files, headers):
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns") if t not in ds]
        if missing:
            raise VolumeReadError(f"{path}: DICOM slice without {', '.join(missing)}; cannot place it in space")
        if "InstanceNumber" not in ds or ds.InstanceNumber is None:
            raise VolumeReadError(f"{path}: DICOM slice without InstanceNumber; cannot order the series")
        rows.append((int(ds.InstanceNumber), path, ds))
    rows.sort(key=lambda r: r[0])
    if len({r[0] for r in rows}) != len(rows):
        raise VolumeReadError(f"{folder}: duplicate InstanceNumber values in one series")
    first = rows[0][2]
    iop = np.asarray(first.ImageOrientationPatient, float)
    size = (int(first.Rows), int(first.Columns))
    normal = np.cross(iop[:3], iop[3:])
    positions = []
    for _, path, ds in rows:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise VolumeReadError(f"{path}: slice orientation differs from the rest of the series")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise VolumeReadError(f"{path}: slice size {ds.Rows}x{ds.Columns} differs from {size[0]}x{size[1]}")
        positions.append(float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    if len(positions) > 1:
        steps = np.diff(positions)
        if not (np.all(steps > 1e-4) or np.all(steps < -1e-4)):
            raise VolumeReadError(f"{folder}: slice positions are not monotonic in InstanceNumber order")
        if np.ptp(np.abs(steps)) > 0.01 * np.abs(steps).mean() + 1e-3:
            gaps = np.abs(steps)
            raise VolumeReadError(f"{folder}: unevenly spaced slices (gaps {gaps.min():.3g}-{gaps.max():.3g} mm)")
    return [r[1] for r in rows], [r[2] for r in rows]


#: compressed transfer syntaxes that python-gdcm (a dependency) decodes through pydicom
COMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (8-bit; 12-bit needs pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless (process 14, selection value 1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def _dicom_read_problem(header, err: Exception) -> str:
    """One line on why a series' pixels could not be read, naming the transfer syntax when the
    trouble is decoding it."""
    meta = getattr(header, "file_meta", None)
    uid = str(getattr(meta, "TransferSyntaxUID", "") or "")
    text = str(err)
    if "decode" in text.lower() or "plugin" in text.lower():
        name = getattr(getattr(meta, "TransferSyntaxUID", None), "name", uid) or "its transfer syntax"
        if uid == "1.2.840.10008.1.2.4.51" and int(getattr(header, "BitsStored", 8) or 8) > 8:
            return (
                "12-bit JPEG Extended pixel data needs pylibjpeg-libjpeg (GPL-3.0, so not installed by default): "
                "pip install pylibjpeg pylibjpeg-libjpeg"
            )
        return f"cannot decode its {name} pixel data ({first_line(err)})"
    return f"not a readable DICOM series ({first_line(err)})"


def _read_dicom(path: Path, series_uid: str | Sequence[str] | None) -> Volume:
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    collected = PydicomWarnings()
    if path.is_dir():
        series = list_dicom_series(path)
        wanted = [series_uid] if isinstance(series_uid, str) else list(series_uid or [])
        matches = [series[u] for u in wanted if u in series]
        listing = "; ".join(s.summary() for s in series.values())
        if len(matches) == 1:
            chosen = matches[0]
        elif len(matches) > 1:
            raise VolumeReadError(
                f"{path}: {len(matches)} of the given series are here ({', '.join(m.uid for m in matches)}); "
                "for one study folder give it twice, the anatomical --series-uid first, then the other"
            )
        elif len(series) == 1 and not (isinstance(series_uid, str) and series_uid):
            chosen = next(iter(series.values()))
        elif isinstance(series_uid, str) and series_uid:
            raise VolumeReadError(f"{path}: no series {series_uid}; found {listing}")
        else:
            raise VolumeReadError(f"{path}: {len(series)} DICOM series here, choose one with --series-uid: {listing}")
        collected.extend(chosen.pydicom_warnings)
        with collected.collect():
            files, headers = _check_series_headers(path, chosen.files, chosen.headers)
        regex = "^(" + "|".join(re.escape(str(f)) for f in files) + ")$"
        source: Path | str = path if len(files) > 1 else files[0]
        reader = PydicomReader(fname_regex=regex)
        modality, uid = chosen.modality, chosen.uid
    else:
        with collected.collect():
            header = _read_header(path)
            _convert_elements(header, collected)
            files, headers = _check_series_headers(path.parent, [path], [header])
        source, reader = path, PydicomReader()
        modality, uid = "", ""
    try:
        # pydicom's warnings counted, the readers' other warnings not shown (as before)
        with collected.collect(drop_others=True), quiet_monai_readers():
            img = LoadImage(reader=reader, image_only=True, dtype=np.float32)(str(source))
    except Exception as err:
        raise VolumeReadError(f"{path}: {_dicom_read_problem(headers[0], err)}") from err
    array = np.asarray(img, np.float32)
    affine = np.asarray(img.affine, np.float64)
    if array.ndim == 2:  # one slice: give it a thickness along the slice normal
        ds = headers[0]
        modality = modality or str(ds.get("Modality", ""))
        uid = uid or str(ds.get("SeriesInstanceUID", ""))
        iop = np.asarray(ds.ImageOrientationPatient, float)
        thickness = float(ds.get("SliceThickness", 0) or 0) or 1.0
        normal_ras = (LPS_TO_RAS[:3, :3] @ np.cross(iop[:3], iop[3:])) * thickness
        affine = affine.copy()
        affine[:3, 2] = normal_ras
        array = array[..., None]
    if array.ndim != 3:
        raise VolumeReadError(f"{path}: expected one 3D series, got an array of shape {array.shape}")
    note = collected.note(path)
    return Volume(
        array,
        affine,
        path,
        "dicom",
        files=list(files),
        modality=modality,
        series_uid=uid,
        headers=list(headers),
        notes=[note] if note else [],
    )


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    """Trailing singleton dimensions (a 4th of length 1) squeezed; 2D becomes one slice; true 4D refused."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise VolumeReadError(f"{path}: expected a 3D volume, got shape {tuple(array.shape)} (4D series are not fused)")
    return array


def _read_nibabel(path: Path, kind: str) -> Volume:
    """NIfTI-1/2, Analyze, MGH/MGZ, MINC1 (and MINC2 with h5py), ECAT, through nibabel: values with
    the file's scaling applied, the voxel-to-RAS affine nibabel reports."""
    import nibabel as nib

    if kind == "parrec" and path.suffix.lower() == ".rec":  # nibabel opens the pair by its header
        header = [p for p in (path.with_suffix(".PAR"), path.with_suffix(".par")) if p.is_file()]
        if not header:
            raise VolumeReadError(f"{path}: no PAR header beside this REC file ({path.stem}.PAR)")
        path = header[0]
    try:
        img = nib.ecat.load(str(path)) if kind == "ecat" else nib.load(str(path))
        array = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, np.float64)
    except ModuleNotFoundError as err:  # MINC2 is HDF5
        raise VolumeReadError(
            f"{path}: reading this {_FORMAT_NAMES[kind]} file needs {err.name}: pip install {err.name}"
        ) from err
    except Exception as err:
        raise VolumeReadError(f"{path}: not a readable {_FORMAT_NAMES[kind]} file ({first_line(err)})") from err
    return Volume(_as_3d(array, path), affine, path, kind)


def _read_nrrd(path: Path) -> Volume:
    from monai.transforms import LoadImage

    from monai_emma.extras import require

    require("nrrd", f"reading {path}")
    try:
        with quiet_monai_readers():
            img = LoadImage(reader="NrrdReader", image_only=True, dtype=np.float32)(str(path))
    except Exception as err:
        raise VolumeReadError(f"{path}: not a readable NRRD file ({first_line(err)})") from err
    return Volume(_as_3d(np.asarray(img, np.float32), path), np.asarray(img.affine, np.float64), path, "nrrd")


def _read_image2d(path: Path) -> Volume:
    from monai_emma.transforms.io import LoadPairedSliced, SliceReadError

    try:
        d = LoadPairedSliced("img")({"img": str(path)})
    except SliceReadError as err:
        raise VolumeReadError(str(err)) from err
    return Volume(d["img"], np.eye(4), path, "image2d", source_range=d.get("img_source_range"))


def read_volume(path: str | os.PathLike, series_uid: str | Sequence[str] | None = None) -> Volume:
    """Read a 2D image, a volume (NIfTI-1/2, Analyze, MGH/MGZ, MINC, ECAT, NRRD), a DICOM file or a
    DICOM series folder. NaN and infinite voxels are kept and counted (``Volume.nonfinite``): they
    mean "no data" downstream.

    Args:
        path: the input.
        series_uid: which series to read when a folder holds several: one UID (required to be
            there), or several candidates of which exactly one must be in the folder (how the
            CLI's repeatable ``--series-uid`` serves both inputs).

    Returns:
        The :class:`Volume`.

    Raises:
        VolumeReadError: missing, unreadable or unusable input (no finite voxel, 4D, several series
            without a choice, inconsistent slices…); one line naming the input.

    Example:
        >>> vol = read_volume("mri.nii.gz")  # doctest: +SKIP
        >>> vol.array.shape, vol.spacing  # doctest: +SKIP
        ((256, 256, 128), (1.0, 1.0, 1.0))
    """
    p, kind = _existing_input(path)
    if kind == "dicom":
        vol = _read_dicom(p, series_uid)
    elif kind == "image2d":
        vol = _read_image2d(p)
    elif kind == "nrrd":
        vol = _read_nrrd(p)
    else:
        vol = _read_nibabel(p, kind)
    if vol.array.size == 0:
        raise VolumeReadError(f"{p}: empty image")
    vol.nonfinite = int(np.size(vol.array) - np.count_nonzero(np.isfinite(vol.array)))
    if vol.nonfinite == vol.array.size:
        raise VolumeReadError(f"{p}: no finite voxel value (all NaN or infinity)")
    if vol.is_3d and abs(np.linalg.det(vol.affine[:3, :3])) < 1e-9:
        raise VolumeReadError(f"{p}: degenerate voxel-to-world affine (zero voxel size)")
    return vol


def _dicom_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-RAS affine of a DICOM series (or file) from its headers: X along the
    columns, Y along the rows, Z along the slices in InstanceNumber order."""
    if path.is_dir():
        series = list_dicom_series(path)
        if len(series) > 1:
            listing = "; ".join(s.summary() for s in series.values())
            raise VolumeReadError(f"{path}: {len(series)} DICOM series here, give a folder holding one: {listing}")
        chosen = next(iter(series.values()))
        files, headers = _check_series_headers(path, chosen.files, chosen.headers)
    else:
        files, headers = _check_series_headers(path.parent, [path], [_read_header(path)])
    first, last = headers[0], headers[-1]
    iop = np.asarray(first.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
    ipp0, ipp1 = (np.asarray(ds.ImagePositionPatient, float) for ds in (first, last))
    if len(headers) > 1:
        step = (ipp1 - ipp0) / (len(headers) - 1)
    else:
        step = np.cross(iop[:3], iop[3:]) * (float(first.get("SliceThickness", 0) or 0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * dc, iop[3:] * dr, step, ipp0
    return (int(first.Columns), int(first.Rows), len(files)), LPS_TO_RAS @ lps


def _existing_input(path: str | os.PathLike) -> tuple[Path, str]:
    """The input as a path that exists and is not empty, and its kind (:func:`input_kind`)."""
    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"{p}: no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise VolumeReadError(f"{p}: empty file")
    return p, input_kind(p)


def volume_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """A volume's shape and voxel-to-RAS affine from its header alone (NIfTI, Analyze, MGH, MINC,
    ECAT and DICOM series: no pixel data is read; other formats are read whole): enough to check,
    before anything is loaded, that an input is a 3D volume and where it lies.

    For DICOM the axes may be ordered differently from :func:`read_volume`'s array, but the grid
    covers the same voxels (the same field of view).

    Raises:
        VolumeReadError: missing, unreadable, a 2D image, or a 4D volume; one line naming the input.
    """
    p, kind = _existing_input(path)
    if kind == "image2d":
        raise VolumeReadError(f"{p}: a 2D image, not a volume")
    if kind == "dicom":
        shape, affine = _dicom_geometry(p)
    elif kind in ("nrrd", "parrec"):
        vol = read_volume(p)
        shape, affine = vol.array.shape, vol.affine
    else:
        import nibabel as nib

        try:
            img = nib.ecat.load(str(p)) if kind == "ecat" else nib.load(str(p))
            shape, affine = tuple(int(n) for n in img.shape), np.asarray(img.affine, np.float64)
        except ModuleNotFoundError as err:
            raise VolumeReadError(
                f"{p}: reading this {_FORMAT_NAMES[kind]} file needs {err.name}: pip install {err.name}"
            ) from err
        except Exception as err:
            raise VolumeReadError(f"{p}: not a readable {_FORMAT_NAMES[kind]} file ({first_line(err)})") from err
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3:
            raise VolumeReadError(f"{p}: expected a 3D volume, got shape {shape} (4D series are not fused)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeReadError(f"{p}: degenerate voxel-to-world affine (zero voxel size)")
    return tuple(int(n) for n in shape), affine


def _name_modality(path: Path) -> str | None:
    """The modality a file's name says, when exactly one word of it names one."""
    import re

    name = path.name.lower()
    for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES, ".dcm"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    found = {_NAME_WORDS[w] for w in re.split(r"[^a-z0-9]+", name) if w in _NAME_WORDS}
    return found.pop() if len(found) == 1 else None


def guess_modality(volume: Volume) -> tuple[str, str]:
    """The second modality from DICOM's ``Modality``, the file name (``spect.nii.gz``,
    ``sub-01_pet.nii``), or the values (Hounsfield units go far below zero); PET otherwise.
    Returns ``(modality, how)``; ``how`` tells the user how to change it when it is a guess."""
    if volume.modality.upper() in _DICOM_MODALITY:
        return _DICOM_MODALITY[volume.modality.upper()], f"DICOM Modality {volume.modality}"
    named = _name_modality(volume.path)
    if named is not None:
        return named, f"from the file name {volume.path.name}; --modality to change"
    if volume.is_3d and float(volume.array.min()) <= -500:
        return "ct", "values below -500 (Hounsfield units); --modality to change"
    return "pet", "nothing in the file says which; scaled as functional uptake: give --modality spect for SPECT"


def guess_anatomical_modality(volume: Volume) -> tuple[str, str]:
    """The anatomical image's modality, ``"mri"`` or ``"ct"``: DICOM ``Modality`` (``MR``/``CT``),
    then Hounsfield values (below -500), MRI otherwise. Returns ``(modality, how)``."""
    if volume.modality.upper() == "CT":
        return "ct", "DICOM Modality CT"
    if volume.modality.upper() == "MR":
        return "mri", "DICOM Modality MR"
    if volume.is_3d and float(volume.array.min()) <= -500:
        return "ct", "values below -500 (Hounsfield units); --anatomical-modality mri to change"
    return "mri", "default"


def as_volume(x: Volume | str | os.PathLike, series_uid: str | Sequence[str] | None = None) -> Volume:
    """``x`` itself when it is a :class:`Volume`, else :func:`read_volume` of it."""
    return x if isinstance(x, Volume) else read_volume(x, series_uid)
