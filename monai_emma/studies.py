"""Volume studies of a MONAI datalist as training and evaluation slices, through ``fuse``'s own
preprocessing.

Each study (:class:`~monai_emma.data.datalist.Study`) goes through
:func:`~monai_emma.io.preprocessing.fusion_preprocessing`, the MONAI pipeline ``monai-emma fuse``
runs: read both inputs, SUV for PET DICOM, per-modality intensity scaling, optional registration,
the second modality resampled onto the anatomical grid, display orientation, the 2-channel
``image``. Its axial slices with foreground become :class:`~monai_emma.data.pairs.StudySlice`
items, which the patch dataset, the validation and ``evaluate`` take like 2D pairs.

Built for one call per study, so that a Ray Data ``map`` can run it later:

* :func:`preprocess_study` ``(entry, options) -> record``: a plain dictionary (the study's entry,
  the kept slices as a numpy array ``(N, 2, H, W)``, their indices, notes);
* :func:`study_slices` ``(record) -> [StudySlice]``.

:class:`StudyCache` keeps records on disk (``.npy`` + ``.json``, keyed by the input files' paths,
sizes and modification times and the preprocessing options) and memory-maps them back, so a
second epoch or run neither reads nor resamples. :class:`Datalist` ties it together for
``monai-emma train --datalist`` (split by study), ``evaluate --datalist`` and the bundle, and checks
every entry from the files' headers before anything is preprocessed (:func:`check_studies`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_emma.data.datalist import (
    DatalistError,
    Study,
    datalist_intensity,
    load_datalist,
    read_datalist,
    select_studies,
    split_studies,
    study_split_record,
)
from monai_emma.data.pairs import StudySlice
from monai_emma.io.remote import RemoteReadError, is_uri, local_copy, uri_fingerprint
from monai_emma.transforms.intensity import IntensityRule

__all__ = [
    "StudyOptions",
    "check_studies",
    "preprocess_study",
    "study_slices",
    "study_rows",
    "slice_of_row",
    "StudyCache",
    "prepare_studies",
    "study_record",
    "axial_slices",
    "Datalist",
    "CACHE_VERSION",
]

logger = logging.getLogger("monai_emma.studies")

#: bump when preprocessing changes what a cached study holds
CACHE_VERSION = 1


@dataclass(frozen=True)
class StudyOptions:
    """How studies are preprocessed: the options of ``fuse`` that apply, and which slices count.

    Attributes:
        rules: ``{modality: IntensityRule}`` replacing defaults of
            :data:`~monai_emma.transforms.intensity.DEFAULT_INTENSITY` (as ``fuse``'s ``rules``);
            stored as sorted pairs so that options hash.
        suv: PET DICOM to SUV: ``"auto"``, ``"on"`` or ``"off"``.
        register: ``"none"``, ``"rigid"`` or ``"affine"``.
        threshold: a pixel is foreground when either channel exceeds it (the patch sampler's rule,
            :func:`~monai_emma.transforms.patches.foreground_mask`).
        min_foreground: a slice is kept when at least this share of its pixels is foreground.
    """

    rules: tuple[tuple[str, IntensityRule], ...] = ()
    suv: str = "auto"
    register: str = "none"
    threshold: float = 0.05
    min_foreground: float = 0.01

    @classmethod
    def make(cls, rules: Mapping[str, IntensityRule] | None = None, **kwargs) -> StudyOptions:
        return cls(rules=tuple(sorted((rules or {}).items())), **kwargs)

    def with_rules(self, rules: Mapping[str, IntensityRule]) -> StudyOptions:
        """These options with ``rules`` added under the ones already set (which win)."""
        return StudyOptions.make({**rules, **dict(self.rules)}, **self._settings())

    def _settings(self) -> dict:
        return {
            "suv": self.suv,
            "register": self.register,
            "threshold": self.threshold,
            "min_foreground": self.min_foreground,
        }

    def to_dict(self) -> dict:
        """JSON-able (the cache key, a Ray task's argument); :meth:`from_dict` reverses it."""
        rules = {m: [r.kind, r.low, r.high, r.units] for m, r in self.rules}
        return {"rules": rules, **self._settings()}

    @classmethod
    def from_dict(cls, d: Mapping) -> StudyOptions:
        rules = {m: IntensityRule(k, lo, hi, units=u) for m, (k, lo, hi, u) in dict(d.get("rules") or {}).items()}
        return cls.make(rules, **{k: d[k] for k in ("suv", "register", "threshold", "min_foreground") if k in d})

    def preprocessing(self):
        """``fuse``'s MONAI ``Compose`` with these options."""
        from monai_emma.io.preprocessing import fusion_preprocessing

        return fusion_preprocessing(rules=dict(self.rules), suv=self.suv, register=self.register)


# ---------------------------------------------------------------------------------------------
# checks from the headers, before anything is preprocessed


def _extent_in(shape: Sequence[int], affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """(3, 2) index-space box, in the target grid, of a grid's outer voxel boundaries."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
    )
    idx = (np.linalg.inv(target_affine) @ affine @ corners.T)[:3]
    return np.stack([idx.min(1), idx.max(1)], 1)


def check_studies(studies: Sequence[Study]) -> None:
    """Every study's two inputs are readable 3D volumes (headers only: no pixel data for NIfTI and
    DICOM) whose fields of view overlap.

    The overlap test compares bounding boxes, so a pair that passes can still fail the exact test of
    :class:`~monai_emma.io.dictionary.LoadFusionPaird` (oblique grids); that one reports the study the
    same way while it is preprocessed.

    Raises:
        DatalistError: one line naming the entry and the file.
    """
    from monai_emma.io.volumes import VolumeReadError, volume_geometry

    for study in studies:
        if is_uri(study.anatomical) or is_uri(study.other):
            continue  # read where the study is preprocessed, and reported the same way there
        grids = []
        for path in (study.anatomical, study.other):
            try:
                grids.append(volume_geometry(path))
            except VolumeReadError as err:
                raise study.error(str(err)) from None
        (a_shape, a_aff), (b_shape, b_aff) = grids
        box = _extent_in(b_shape, b_aff, a_aff)
        tol = 1e-3
        if np.any(box[:, 0] >= np.asarray(a_shape) - 0.5 - tol) or np.any(box[:, 1] <= -0.5 + tol):
            raise study.error(
                f"{study.anatomical} and {study.other}: the fields of view do not overlap (check both affines)"
            )


# ---------------------------------------------------------------------------------------------
# one study: preprocess, then slice


def preprocess_study(entry: Study | Mapping, options: StudyOptions | Mapping | None = None) -> dict:
    """One study through ``fuse``'s preprocessing, reduced to its axial slices with foreground.

    Args:
        entry: a :class:`~monai_emma.data.datalist.Study` or its :meth:`~Study.to_entry` dictionary.
        options: :class:`StudyOptions` or its :meth:`~StudyOptions.to_dict` (default options).

    Returns:
        A plain dictionary: ``study`` (the entry dictionary), ``image`` (float32 ``(N, 2, H, W)`` in
        [0, 1], channel 0 the anatomical image; the kept slices from inferior to superior, in
        display orientation), ``z`` (int32 ``(N,)``: their indices among the ``depth`` slices of the
        anatomical grid), ``depth``, ``notes`` and ``scaling`` (how each image was scaled).

    Raises:
        DatalistError: an input cannot be read or fused (one line naming the entry and the file).
    """
    from monai_emma.errors import FusionError, transform_cause
    from monai_emma.io.volumes import VolumeReadError
    from monai_emma.transforms.patches import foreground_mask

    study = entry if isinstance(entry, Study) else Study.from_entry(entry)
    if options is None or isinstance(options, Mapping):
        options = StudyOptions.from_dict(options or {})
    copies: dict[str, str] = {}  # local copy -> URI, to name the URI in errors
    try:
        with ExitStack() as stack:  # URIs: local copies while they are read
            paths = []
            for p in (study.anatomical, study.other):
                paths.append(stack.enter_context(local_copy(p)) if is_uri(p) else p)
                copies.update({str(paths[-1]): str(p)} if is_uri(p) else {})
            job = {
                "anatomical": str(paths[0]),
                "other": str(paths[1]),
                "modality": study.b_modality,
                "anatomical_modality": study.a_modality,
            }
            try:
                d = options.preprocessing()(job)
            except RuntimeError as err:  # MONAI's Compose wraps what a transform raised
                raise transform_cause(err) from None
    except (FusionError, VolumeReadError, RemoteReadError) as err:
        message = str(err)
        for local, uri in copies.items():
            message = message.replace(local, uri)
        raise study.error(message) from None
    notes = list(d.get("notes") or [])
    rules = dict(options.rules)
    for key, modality in (("anatomical", study.a_modality), ("other", study.b_modality)):
        volume = d[f"{key}_volume"]
        if modality == "ct" and "ct" not in rules and float(np.nanmin(volume.array)) >= 0:
            message = (
                f"{volume.path}: a CT without negative values (not in Hounsfield units?) scaled by the HU "
                "window [-100, 300]; give the datalist an intensity rule, e.g. --window ct=0,255"
            )
            logger.warning("%s: %s", study.entry, message)
            notes.append(message)
    image = d["image"]
    volume = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image, np.float32)
    volume = np.moveaxis(volume, -1, 0)  # (Z, 2, H, W): one contiguous block per slice after the copy below
    keep = [
        z
        for z in range(volume.shape[0])
        if foreground_mask(volume[z], options.threshold).mean() >= options.min_foreground
    ]
    return {
        "study": study.to_entry(),
        "image": np.ascontiguousarray(volume[keep]),
        "z": np.asarray(keep, np.int32),
        "depth": int(volume.shape[0]),
        "notes": notes,
        "scaling": {str(k): str(v) for k, v in (d.get("scaling") or {}).items()},
    }


def study_rows(record: Mapping, keep: int | None = None) -> list[dict]:
    """A :func:`preprocess_study` record as one flat row per slice (what a Ray Data ``flat_map``
    returns): ``image`` (float32 ``(2, H, W)``), ``study`` (the entry as JSON), ``z`` and ``depth``.

    Args:
        record: the study's record.
        keep: at most this many slices, evenly spaced through the study (e.g. validation slices);
            all when None.
    """
    entry, depth = json.dumps(record["study"], sort_keys=True), int(record["depth"])
    picks = range(len(record["z"]))
    if keep is not None and len(picks) > keep:
        picks = np.unique(np.linspace(0, len(picks) - 1, max(1, int(keep))).round().astype(int))
    image = record["image"]
    return [
        {"image": np.array(image[i], np.float32), "study": entry, "z": int(record["z"][i]), "depth": depth}
        for i in picks
    ]


def slice_of_row(row: Mapping) -> StudySlice:
    """The :class:`~monai_emma.data.pairs.StudySlice` of a :func:`study_rows` row."""
    study = Study.from_entry(json.loads(row["study"]))
    # a copy: Ray hands rows over as read-only views of its object store
    return study.slice(np.array(row["image"], np.float32), int(row["z"]), int(row["depth"]))


def study_slices(record: Mapping) -> list[StudySlice]:
    """The :class:`~monai_emma.data.pairs.StudySlice` items of a :func:`preprocess_study` record
    (views into its ``image``: no copy)."""
    study = Study.from_entry(record["study"])
    image, depth = record["image"], int(record["depth"])
    return [study.slice(image[i], int(z), depth) for i, z in enumerate(record["z"])]


# ---------------------------------------------------------------------------------------------
# the on-disk cache


def _resolved(path: Path | str) -> Path | str:
    return path if is_uri(path) else Path(path).resolve()


def _fingerprint(path: Path | str) -> list:
    """What identifies an input's content cheaply: its resolved path, size and modification time
    (for a DICOM folder, those of every file in it)."""
    if is_uri(path):
        return uri_fingerprint(path)
    path = path.resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return [str(path), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


class StudyCache:
    """Preprocessed studies on disk: ``<folder>/<study>-<key>.npy`` (the slices) and ``.json``
    (everything else), written atomically (the ``.json`` last), read back memory-mapped
    (copy-on-write: pages load when touched and are shared between the processes of a machine).

    The key hashes the inputs' :func:`_fingerprint` (paths, sizes, modification times), the
    study's modalities, the options and :data:`CACHE_VERSION`; an input that changes gets a new
    entry. Files of a broken entry are ignored and rewritten.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def key(self, study: Study, options: StudyOptions) -> str:
        spec = {
            "version": CACHE_VERSION,
            "anatomical": _fingerprint(study.anatomical),
            "other": _fingerprint(study.other),
            "modalities": [study.a_modality, study.b_modality],
            "options": options.to_dict(),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]

    def paths(self, study: Study, options: StudyOptions) -> tuple[Path, Path]:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", study.id) + "-" + self.key(study, options)
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def load(self, study: Study, options: StudyOptions) -> dict | None:
        """The cached record of ``study`` (its entry as given now), or None."""
        npy, meta = self.paths(study, options)
        if not (npy.is_file() and meta.is_file()):
            return None
        try:
            record = json.loads(meta.read_text())
            image = np.load(npy, mmap_mode="c")
        except (OSError, ValueError):
            return None
        if image.shape[0] != len(record.get("z", ())) or image.ndim != 4:
            return None
        record.update(study=study.to_entry(), image=image, z=np.asarray(record["z"], np.int32))
        return record

    def store(self, study: Study, options: StudyOptions, record: Mapping) -> dict:
        """Write ``record`` (a :func:`preprocess_study` result) and return it memory-mapped from disk."""
        from monai_emma.io.atomic import atomic_path

        npy, meta = self.paths(study, options)
        with atomic_path(npy) as tmp:
            np.save(tmp, np.ascontiguousarray(record["image"], np.float32))
        rest = {k: v for k, v in record.items() if k not in ("image", "z")}
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({**rest, "z": [int(z) for z in record["z"]]}, indent=1))
        return self.load(study, options) or dict(record)


def study_record(study: Study, options: StudyOptions, cache: StudyCache | None = None) -> tuple[dict, bool]:
    """One study's :func:`preprocess_study` record, from ``cache`` when it is there (else
    preprocessed and stored), and whether it came from the cache. A study without a slice with
    foreground is logged as skipped (its record has no slices)."""
    record = cache.load(study, options) if cache is not None else None
    hit = record is not None
    if record is None:
        record = preprocess_study(study, options)
        if cache is not None:
            record = cache.store(study, options, record)
    if not len(record["z"]):
        logger.warning(
            "%s: no slice with foreground (%.0f%% of the pixels above %g); skipped",
            study.entry,
            100 * options.min_foreground,
            options.threshold,
        )
    return record, hit


def axial_slices(studies: Sequence[Study], default: int = 128) -> int:
    """How many axial slices ``studies`` hold, from the anatomical volumes' headers: an upper bound
    on their slices with foreground (URIs, whose headers are read only where they are preprocessed,
    count as the others' median, or ``default``)."""
    from monai_emma.io.volumes import volume_geometry

    depths = []
    for study in studies:
        if is_uri(study.anatomical):
            continue
        shape, affine = volume_geometry(study.anatomical)
        depths.append(int(shape[int(np.argmax(np.abs(np.asarray(affine)[2, :3])))]))
    fill = int(np.median(depths)) if depths else default
    return sum(depths) + fill * (len(studies) - len(depths))


def prepare_studies(
    studies: Sequence[Study],
    options: StudyOptions,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    what: str = "studies",
) -> dict[Study, list[StudySlice]]:
    """The slices of each study: from the cache when there, else preprocessed (and cached).

    A study without a slice with foreground is skipped with a warning (it maps to no slices).

    Raises:
        DatalistError: a study cannot be read or fused, or none of ``studies`` has a slice with
            foreground.
    """
    from tqdm.auto import tqdm

    cache = StudyCache(cache_dir) if cache_dir is not None else None
    out: dict[Study, list[StudySlice]] = {}
    cached = 0
    for study in tqdm(studies, desc=what, disable=not progress):
        record, hit = study_record(study, options, cache)
        cached += hit
        out[study] = study_slices(record)
    if studies and not any(out.values()):
        raise DatalistError(f"{studies[0].where}: no study has a slice with foreground; nothing to use")
    if studies:
        logger.info(
            "%s: %d studies (%d from the cache %s), %d slices",
            what,
            len(studies),
            cached,
            cache.folder if cache is not None else "-",
            sum(len(v) for v in out.values()),
        )
    return out


# ---------------------------------------------------------------------------------------------
# a datalist file


@dataclass(frozen=True)
class Datalist:
    """A datalist file with the preprocessing options and the cache folder to use.

    Args:
        path: the JSON file.
        options: preprocessing options; the datalist's own ``intensity`` rules fill in the
            modalities these leave unset.
        cache_dir: where preprocessed studies go (None: the caller's default, or no cache).
    """

    path: Path
    options: StudyOptions = field(default_factory=StudyOptions)
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def resolved_options(self, data: dict | None = None) -> StudyOptions:
        return self.options.with_rules(datalist_intensity(self.path, data))

    def training_split(
        self, val_fraction: float = 0.2, seed: int = 0, cache_dir: str | os.PathLike | None = None, progress=False
    ) -> tuple[list[StudySlice], list[StudySlice], dict]:
        """Training and validation slices: the ``validation`` list when the datalist has one, else
        a seeded split of the ``training`` studies by study, stratified by pair type
        (:func:`~monai_emma.data.datalist.split_studies`). Every entry is checked (:func:`check_studies`)
        before any study is preprocessed.

        Returns:
            ``(train slices, validation slices, split record)``; the record is the run's
            ``split.json`` (:func:`~monai_emma.data.datalist.study_split_record`).
        """
        train, val, has_list = self.study_split(val_fraction, seed)
        options = self.resolved_options()
        cache = cache_dir if cache_dir is not None else self.cache_dir
        train_slices = prepare_studies(train, options, cache, progress, "training studies")
        val_slices = prepare_studies(val, options, cache, progress, "validation studies")
        record = study_split_record(self.path, train_slices, val_slices, has_list)
        record["skipped"] = [s.id for group in (train_slices, val_slices) for s, v in group.items() if not v]
        record["options"] = options.to_dict()
        flat = [[x for v in group.values() for x in v] for group in (train_slices, val_slices)]
        return flat[0], flat[1], record

    def study_split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Study], list[Study], bool]:
        """The training and validation studies (the rule of :meth:`training_split`), every entry
        checked from the headers (:func:`check_studies`); nothing is preprocessed.

        Returns:
            ``(training studies, validation studies, whether validation is the datalist's own list)``.
        """
        data = read_datalist(self.path)
        train = load_datalist(self.path, "training")
        has_list = "validation" in data
        if has_list:
            val = load_datalist(self.path, "validation")
            files = {(_resolved(s.anatomical), _resolved(s.other)): s for s in train}
            for s in val:
                twin = files.get((_resolved(s.anatomical), _resolved(s.other)))
                if twin is not None:
                    raise s.error(f"{s.anatomical}: the same study as training[{twin.index}]")
                if s.id in {t.id for t in train}:
                    raise s.error(f"{s.anatomical}: study id {s.id} is also a training study's; give each a name")
        else:
            train, val = split_studies(train, val_fraction, seed)
        trained = {m for s in train for m in (s.a_modality, s.b_modality)}
        for s in val:
            for m in (s.a_modality, s.b_modality):
                if m not in trained:
                    raise s.error(
                        f"{s.anatomical if m == s.a_modality else s.other}: no training study has {m} "
                        f"(its pseudo-sensor would be untrained); add {m} studies to 'training'"
                    )
        check_studies([*train, *val])
        return train, val, has_list

    def slices(
        self,
        key: str = "validation",
        ids: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> list[StudySlice]:
        """The slices of the studies of list ``key`` (only those whose ids are in ``ids`` when
        given, e.g. a run's validation studies), checked first, then preprocessed or cached."""
        studies = load_datalist(self.path, key)
        if ids is not None:
            studies = select_studies(studies, ids)
        check_studies(studies)
        cache = cache_dir if cache_dir is not None else self.cache_dir
        by_study = prepare_studies(studies, self.resolved_options(), cache, progress, f"{key} studies")
        return [x for v in by_study.values() for x in v]
