"""Volume studies listed in a MONAI (Decathlon) datalist: reading, checking the entries, splitting
by study.

A datalist is a JSON file like MONAI's Decathlon ``dataset.json``::

    {"training":   [{"mri": "MRI_CT/case2/mri.nii.gz", "ct": "MRI_CT/case2/ct.nii.gz"}, ...],
     "validation": [{"mri": "/data/s7/t1.nii.gz", "pet": "/data/s7/pet_series", "name": "s7"}, ...],
     "intensity":  {"ct": {"window": [0, 255]}}}

Each entry names exactly two modalities among ``mri``, ``ct``, ``pet`` and ``spect``: the
anatomical image (``mri``, or ``ct`` when the other is ``pet`` or ``spect``: CT is the base of
PET/CT and SPECT/CT) and the other modality. A value is any volume ``monai-emma fuse`` reads or a
DICOM series folder; relative paths are relative to the datalist's folder (what
``monai.data.load_decathlon_datalist`` does with ``base_dir`` = that folder). An optional ``name``
(or ``id``) names the study; otherwise its name is the anatomical file's folder (``case2``), made
unique within its pair type. The optional top-level ``intensity`` gives intensity rules per
modality (``window`` in the modality's units, or foreground ``percentiles``), for data whose values
the defaults do not fit (e.g. 8-bit CT renderings: ``{"ct": {"window": [0, 255]}}``).

This module reads JSON and looks at paths only; reading and preprocessing the volumes is
:mod:`monai_emma.studies` (a layer up, beside the readers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monai_emma.data.pairs import PairDataError, StudySlice, split_pairs
from monai_emma.io.remote import is_uri
from monai_emma.transforms.intensity import IntensityRule

__all__ = [
    "DatalistError",
    "Study",
    "STUDY_MODALITIES",
    "input_path",
    "read_datalist",
    "load_datalist",
    "datalist_intensity",
    "parse_intensity_rule",
    "split_studies",
    "select_studies",
    "study_split_record",
]

#: the modality keys of an entry; the first of them present (of mri, ct) is the anatomical base
STUDY_MODALITIES = ("mri", "ct", "pet", "spect")
_NAME_KEYS = ("name", "id")
_FUNCTIONAL = ("pet", "spect")


class DatalistError(PairDataError):
    """A datalist or one of its entries is not usable; the message names the file, the entry and
    the input concerned."""


@dataclass(frozen=True)
class Study:
    """One entry of a datalist: an anatomical volume and a second modality.

    Attributes:
        name: the study's name (``case2``), unique within its pair type.
        pair: ``MRI_CT``, ``MRI_PET``, ``MRI_SPECT``, ``CT_PET`` or ``CT_SPECT``.
        a_modality: ``"mri"`` or ``"ct"``.
        b_modality: ``"ct"``, ``"pet"`` or ``"spect"``.
        anatomical: the anatomical file or DICOM series folder (a string when a URI such as
            ``s3://bucket/case2/mri.nii.gz``: passed through untouched).
        other: the second modality's.
        datalist: the datalist file.
        key: the list it came from (``training``, ``validation``).
        index: its position in that list.
    """

    name: str
    pair: str
    a_modality: str
    b_modality: str
    anatomical: Path | str
    other: Path | str
    datalist: Path
    key: str
    index: int

    source = ""  # like SlicePair.source: one datalist, no root label

    @property
    def id(self) -> str:
        """``<pair>/<name>``, e.g. ``MRI_CT/case2``; its slices' ids extend it (``MRI_CT/case2/z017``)."""
        return f"{self.pair}/{self.name}"

    @property
    def stem(self) -> str:
        return self.name

    @property
    def entry(self) -> str:
        """The entry for messages: ``<datalist>: training[3] (MRI_CT/case2)``."""
        return f"{self.datalist}: {self.key}[{self.index}] ({self.id})"

    @property
    def where(self) -> str:
        return f"{self.datalist} ({self.key})"

    def error(self, message: str) -> DatalistError:
        """A :class:`DatalistError` naming this entry, then ``message`` (which names the file)."""
        return DatalistError(f"{self.entry}: {message}")

    def to_entry(self) -> dict[str, str | int]:
        """A plain dictionary (strings and an int) that :meth:`from_entry` turns back into the study:
        what a Ray Data row or a JSON record holds."""
        return {
            "name": self.name,
            "pair": self.pair,
            "a_modality": self.a_modality,
            "b_modality": self.b_modality,
            "anatomical": str(self.anatomical),
            "other": str(self.other),
            "datalist": str(self.datalist),
            "key": self.key,
            "index": int(self.index),
        }

    @classmethod
    def from_entry(cls, entry: dict) -> Study:
        return cls(
            **{k: entry[k] for k in ("name", "pair", "a_modality", "b_modality", "key")},
            anatomical=input_path(entry["anatomical"]),
            other=input_path(entry["other"]),
            datalist=Path(entry["datalist"]),
            index=int(entry["index"]),
        )

    def slice(self, image, z: int, depth: int) -> StudySlice:
        """Slice ``z`` (of ``depth``) of this study as a :class:`~monai_emma.data.pairs.StudySlice`."""
        width = max(3, len(str(max(depth - 1, 0))))
        return StudySlice(image, self.pair, self.a_modality, self.b_modality, f"{self.name}/z{z:0{width}d}", self.id)


def input_path(value: str | os.PathLike) -> Path | str:
    """A study input as :class:`Study` holds it: a local :class:`~pathlib.Path`, or a URI string
    kept as it is (``Path`` would fold ``s3://`` to ``s3:/``)."""
    return value if is_uri(value) else Path(value)


def read_datalist(path: str | os.PathLike) -> dict:
    """The datalist's JSON object.

    Raises:
        DatalistError: the file is missing, unreadable or not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatalistError(f"{path}: no such datalist file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatalistError(f"{path}: cannot read the datalist ({err})") from None
    except json.JSONDecodeError as err:
        raise DatalistError(f"{path}: not a JSON datalist ({err})") from None
    if not isinstance(data, dict):
        raise DatalistError(f"{path}: not a datalist (expected a JSON object with a 'training' list)")
    return data


def parse_intensity_rule(modality: str, spec, where: str) -> IntensityRule:
    """An intensity rule from ``{"window": [LOW, HIGH]}`` or ``{"percentiles": [LOW, HIGH]}``.

    Raises:
        DatalistError: anything else (the message starts with ``where``).
    """
    if modality not in STUDY_MODALITIES:
        raise DatalistError(f"{where}: unknown modality {modality!r} (expected one of {', '.join(STUDY_MODALITIES)})")
    kinds = {"window": "window", "percentiles": "percentile"}
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in kinds):
        raise DatalistError(f'{where}: expected {{"window": [LOW, HIGH]}} or {{"percentiles": [LOW, HIGH]}}')
    ((kind, values),) = spec.items()
    try:
        low, high = (float(v) for v in values)
        return IntensityRule(kinds[kind], low, high, label=f"{modality} {kind} {low:g},{high:g}")
    except (TypeError, ValueError) as err:
        raise DatalistError(f"{where}: {kind} {values!r}: {err}") from None


def datalist_intensity(path: str | os.PathLike, data: dict | None = None) -> dict[str, IntensityRule]:
    """The datalist's ``intensity`` rules per modality (empty without them)."""
    data = read_datalist(path) if data is None else data
    spec = data.get("intensity") or {}
    if not isinstance(spec, dict):
        raise DatalistError(
            f'{path}: \'intensity\' must map modalities to rules, e.g. {{"ct": {{"window": [0, 255]}}}}'
        )
    return {str(m).lower(): parse_intensity_rule(str(m).lower(), r, f"{path}: intensity.{m}") for m, r in spec.items()}


def _modalities(entry: dict, where: str) -> tuple[str, str]:
    """(anatomical, other) modality keys of an entry."""
    allowed = (*STUDY_MODALITIES, *_NAME_KEYS)
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise DatalistError(
            f"{where}: unknown key {unknown[0]!r} (an entry has two of {', '.join(STUDY_MODALITIES)}, "
            "and optionally a name)"
        )
    mods = [k for k in STUDY_MODALITIES if k in entry]
    if len(mods) != 2:
        raise DatalistError(
            f"{where}: {len(mods)} modalit{'y' if len(mods) == 1 else 'ies'} ({', '.join(mods) or 'none'}); "
            f"an entry names exactly two of {', '.join(STUDY_MODALITIES)}"
        )
    if "mri" in mods:
        return "mri", next(m for m in mods if m != "mri")
    if "ct" in mods:
        return "ct", next(m for m in mods if m != "ct")
    raise DatalistError(f"{where}: {' and '.join(mods)} without an anatomical image (mri, or ct for PET/CT, SPECT/CT)")


def _checked_input(base: Path, value, where: str, modality: str) -> Path | str:
    """The input's resolved, checked path; a URI (``s3://…``) as given: it is read where the study is
    preprocessed (:mod:`monai_emma.io.remote`)."""
    if not isinstance(value, str) or not value.strip():
        raise DatalistError(f"{where}: {modality}: expected a file or folder path, got {value!r}")
    if is_uri(value):
        return value
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise DatalistError(f"{where}: {path}: no such file or folder")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise DatalistError(f"{where}: {path}: not readable (permission denied)")
    if path.is_file() and path.stat().st_size == 0:
        raise DatalistError(f"{where}: {path}: empty file")
    return path


def _derived_names(paths: Sequence[Path], base: Path) -> list[str]:
    """The anatomical file's folder name (``case2``), lengthened (``a/case2``) where two paths of a
    pair type share it, and numbered as a last resort."""

    def parts(p: Path) -> list[str]:
        try:
            folder = p.parent.relative_to(base)
        except ValueError:
            folder = p.parent
        return [q for q in folder.parts if q not in ("/", "")] or [base.name or "study"]

    split = [parts(p) for p in paths]
    names = [s[-1] for s in split]
    for depth in range(2, max((len(s) for s in split), default=0) + 1):
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            break
        names = ["/".join(s[-depth:]) if n in clash else n for n, s in zip(names, split)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def _names_of_all_lists(data: dict, base: Path) -> dict[tuple[str, int], str]:
    """A derived name for every well-formed entry of every list of the datalist, keyed by (list,
    index): names depend on the whole file, not on which list is loaded, so ``training`` and
    ``validation`` never share one and a run's ``split.json`` ids match ``evaluate --key``'s."""
    by_pair: dict[str, list[tuple[tuple[str, int], Path]]] = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            try:
                a_mod, b_mod = _modalities(entry, "") if isinstance(entry, dict) else ("", "")
            except DatalistError:
                continue
            value = entry.get(a_mod) if a_mod else None
            if isinstance(value, str) and value.strip():
                path = Path(value.split("://", 1)[-1]) if is_uri(value) else Path(value)
                path = path if path.is_absolute() or is_uri(value) else base / value
                by_pair.setdefault(f"{a_mod.upper()}_{b_mod.upper()}", []).append(((key, i), path))
    names: dict[tuple[str, int], str] = {}
    for items in by_pair.values():
        names.update(zip((k for k, _ in items), _derived_names([p for _, p in items], base)))
    return names


def load_datalist(path: str | os.PathLike, key: str = "training") -> list[Study]:
    """The studies of one list of a datalist, paths resolved, modalities checked; no volume is read.

    Raises:
        DatalistError: the file is not a datalist, has no such list or an empty one, or an entry
            has an unknown key, not exactly two modalities, no anatomical image, a file or folder
            that is missing, unreadable or empty, or a name used twice; one line naming the file,
            the entry and the input.
    """
    path = Path(path)
    data = read_datalist(path)
    if key not in data:
        lists = [k for k, v in data.items() if isinstance(v, list)]
        raise DatalistError(f"{path}: no {key!r} list (lists here: {', '.join(lists) or 'none'})")
    entries = data[key]
    if not isinstance(entries, list):
        raise DatalistError(f"{path}: {key!r} is not a list")
    if not entries:
        raise DatalistError(f"{path}: the {key!r} list is empty")
    base = path.resolve().parent
    derived = _names_of_all_lists(data, base)
    studies: list[Study] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise DatalistError(f'{where}: expected an object like {{"mri": ..., "ct": ...}}, got {entry!r}')
        a_mod, b_mod = _modalities(entry, where)
        name = next((entry[k] for k in _NAME_KEYS if k in entry), None)
        if name is not None and (not isinstance(name, str | int) or not str(name).strip()):
            raise DatalistError(f"{where}: the name must be a non-empty string, got {name!r}")
        a, b = _checked_input(base, entry[a_mod], where, a_mod), _checked_input(base, entry[b_mod], where, b_mod)
        name = str(name).strip() if name is not None else derived[key, i]
        study = Study(name, f"{a_mod.upper()}_{b_mod.upper()}", a_mod, b_mod, a, b, path, key, i)
        if study.id in seen:
            raise DatalistError(f"{where}: study {study.id} is also {key}[{seen[study.id]}]; give each a distinct name")
        seen[study.id] = i
        studies.append(study)
    return studies


def split_studies(
    studies: Sequence[Study], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Study], list[Study]]:
    """Reproducible train/validation split **by study**, stratified by pair type: the rule of
    :func:`~monai_emma.data.pairs.split_pairs` applied to whole studies (neighbouring slices of one
    study are near duplicates, so they never straddle the split)."""
    return split_pairs(studies, val_fraction, seed)


def select_studies(studies: Sequence[Study], ids: Sequence[str]) -> list[Study]:
    """The studies whose ids are listed (a run's ``split.json``), in datalist order.

    Raises:
        DatalistError: an id matches no study.
    """
    missing = sorted(set(ids) - {s.id for s in studies})
    if missing:
        where = studies[0].where if studies else "the datalist"
        raise DatalistError(
            f"{where}: {len(missing)} listed stud{'y' if len(missing) == 1 else 'ies'} not found: "
            f"{', '.join(missing[:5])}"
        )
    wanted = set(ids)
    return [s for s in studies if s.id in wanted]


def study_split_record(
    datalist: str | os.PathLike,
    train: Mapping[Study, Sequence[StudySlice]] | Sequence[Study],
    val: Mapping[Study, Sequence[StudySlice]] | Sequence[Study],
    validation_list: bool,
) -> dict:
    """What a run stores as ``split.json`` for a datalist: the file, how validation was chosen,
    study (and slice) counts per pair type, the training and validation study ids and each study's
    slice count. Given studies without their slices (streamed studies: sliced where they are
    preprocessed), the record has no slice counts."""
    sliced = isinstance(train, Mapping) and isinstance(val, Mapping)
    counts: dict[str, dict[str, int]] = {}
    for part, group in (("train", train), ("val", val)):
        for study in group:
            zero = {"train": 0, "val": 0, **({"train_slices": 0, "val_slices": 0} if sliced else {})}
            c = counts.setdefault(study.pair, zero)
            c[part] += 1
            if sliced:
                c[f"{part}_slices"] += len(group[study])
    record = {
        "datalist": str(Path(datalist).resolve()),
        "validation": "the datalist's 'validation' list" if validation_list else "split by study (seeded)",
        "counts": dict(sorted(counts.items())),
        "train": [s.id for s in train],
        "val": [s.id for s in val],
    }
    if sliced:
        record["slices"] = {s.id: len(v) for group in (train, val) for s, v in group.items()}
    return record
