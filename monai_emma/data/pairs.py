"""Paired 2D slices from folders: discovery, reproducible splits, and a patch dataset.

Layouts (files matched by stem, i.e. name without extension):

* Harvard style: ``root/<A>_<B>/<A>/<n>.png`` and ``root/<A>_<B>/<B>/<n>.png``
  (``MRI_CT``, ``MRI_PET``, ``MRI_SPECT``); ``root`` may also be one pair folder (``root/MRI``,
  ``root/CT``).
* IVF style: ``root/<SET>/vi/*`` and ``root/<SET>/ir/*`` (``RoadScene``, ``TNO``), or one set.

Several roots can be combined (e.g. ``harvard`` and ``aanlib``): every pair then carries its root's
label (the folder name) in :attr:`SlicePair.source` and in its id (``aanlib/MRI_CT/16003``).

Channel convention: ``a`` is the anatomical image (MRI, visible), ``b`` the other modality.

Slices of volume studies (a MONAI datalist, :mod:`monai_emma.data.datalist` and
:mod:`monai_emma.studies`) are :class:`StudySlice` items: the same attributes as a
:class:`SlicePair`, with the preprocessed pixels in memory instead of file paths; :func:`load_pair`,
:class:`PairedPatchDataset` and the engines take either.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "SlicePair",
    "StudySlice",
    "list_images",
    "find_pairs",
    "data_roots",
    "split_pairs",
    "split_record",
    "spread_subset",
    "load_pair",
    "PairedPatchDataset",
    "patch_of",
    "PairDataError",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
ANATOMICAL = ("MRI", "VI", "VIS", "VISIBLE")
IVF_FOLDERS = {"vi": "ir"}


class PairDataError(ValueError):
    """A dataset folder is not usable; the message names the folder or file and the problem."""


@dataclass(frozen=True)
class SlicePair:
    """One co-registered pair of slice images."""

    a: Path
    b: Path
    pair: str  # e.g. "MRI_PET" or "RoadScene"
    a_modality: str  # "mri" or "vis"
    b_modality: str  # "ct", "pet", "spect" or "ir"
    stem: str
    source: str = ""  # the root's label when several roots are combined, else ""

    @property
    def id(self) -> str:
        """``<pair>/<stem>`` (e.g. ``MRI_CT/11``), prefixed by ``<source>/`` when several roots are combined."""
        return f"{self.source}/{self.pair}/{self.stem}" if self.source else f"{self.pair}/{self.stem}"

    @property
    def where(self) -> str:
        """The folder of its pair type (``<root>/<PAIR>``), for messages."""
        return str(self.a.parent.parent)


@dataclass(frozen=True, eq=False)
class StudySlice:
    """One axial slice of a preprocessed volume study: the attributes of a :class:`SlicePair`
    (``pair``, ``a_modality``, ``b_modality``, ``stem``, ``source``, ``id``) with its pixels.

    ``image`` is float32 (2, H, W) in [0, 1], channel 0 the anatomical image and channel 1 the
    other modality, as the fusion pipeline stacks them (display orientation); it may be a view into
    the study's array (e.g. a memory-mapped cache file). ``stem`` is ``<study name>/z<k>`` with
    ``k`` the slice's index from inferior to superior on the anatomical grid, so :attr:`id` reads
    ``MRI_CT/case2/z017``; ``study`` is the study's id (``MRI_CT/case2``).
    """

    image: np.ndarray
    pair: str
    a_modality: str
    b_modality: str
    stem: str
    study: str
    source: str = ""

    @property
    def id(self) -> str:
        """``<pair>/<study name>/z<k>``, prefixed by ``<source>/`` when set."""
        return f"{self.source}/{self.pair}/{self.stem}" if self.source else f"{self.pair}/{self.stem}"

    @property
    def where(self) -> str:
        return self.study


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem (PNG, JPEG, BMP, TIFF), sorted."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _match(folder_a: Path, folder_b: Path, pair: str, mod_a: str, mod_b: str) -> list[SlicePair]:
    ia, ib = list_images(folder_a), list_images(folder_b)
    only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} in {folder_a} without a partner ({', '.join(only_a[:5])})")
        if only_b:
            parts.append(f"{len(only_b)} in {folder_b} without a partner ({', '.join(only_b[:5])})")
        raise PairDataError("unmatched files: " + "; ".join(parts))
    return [SlicePair(ia[s], ib[s], pair, mod_a, mod_b, s) for s in sorted(ia, key=_natural_key)]


def _natural_key(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _pair_folder(folder: Path) -> list[SlicePair] | None:
    """A folder holding exactly the two modality sub-folders of one pair type, else None."""
    subs = {p.name: p for p in folder.iterdir() if p.is_dir()}
    lower = {k.lower(): v for k, v in subs.items()}
    if "vi" in lower and "ir" in lower:
        return _match(lower["vi"], lower["ir"], folder.name, "vis", "ir")
    parts = folder.name.split("_")
    if len(parts) == 2 and all(p in subs for p in parts):
        a, b = parts if parts[0].upper() in ANATOMICAL else parts[::-1]
        return _match(subs[a], subs[b], f"{a}_{b}", a.lower(), b.lower())
    return None


def data_roots(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One root or several as a list of strings (the form run records store)."""
    if isinstance(data, str | os.PathLike):
        return [str(data)]
    roots = [str(r) for r in data]
    if not roots:
        raise PairDataError("no data folder given")
    return roots


def _root_labels(roots: Sequence[str]) -> list[str]:
    """A short, unique label per root: its folder name (``harvard``), ``name-2`` etc. on clashes."""
    resolved = [Path(r).resolve() for r in roots]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise PairDataError(f"{roots[i]}: data folder given twice")
    labels: list[str] = []
    for r in resolved:
        base = r.name or "data"
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}-{n}"
        labels.append(label)
    return labels


def _find_in_root(root: Path) -> list[SlicePair]:
    if not root.is_dir():
        raise PairDataError(f"{root}: no such data folder")
    pairs = _pair_folder(root)
    if pairs is None:
        pairs = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            found = _pair_folder(sub)
            if found:
                pairs.extend(found)
    if not pairs:
        raise PairDataError(
            f"{root}: no image pairs found (expected <PAIR>/<A>/<n>.png and <PAIR>/<B>/<n>.png, e.g. MRI_CT/MRI "
            "and MRI_CT/CT, or <SET>/vi and <SET>/ir)"
        )
    return pairs


def find_pairs(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[SlicePair]:
    """All slice pairs below one root or several (Harvard or IVF layout; see the module docstring).

    With several roots, each pair's :attr:`SlicePair.source` is its root's label (the folder
    name, made unique), so ids stay distinct when two roots hold the same pair type and names.

    Raises:
        PairDataError: a root is missing, holds no pairs, has files without a partner, or is
            given twice.
    """
    roots = data_roots(data)
    if len(roots) == 1:
        return _find_in_root(Path(roots[0]))
    pairs: list[SlicePair] = []
    for root, label in zip(roots, _root_labels(roots)):
        pairs.extend(dataclasses.replace(p, source=label) for p in _find_in_root(Path(root)))
    return pairs


def split_pairs(
    pairs: Sequence[SlicePair], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[SlicePair], list[SlicePair]]:
    """Reproducible train/validation split by slice id, stratified by root and pair type.

    Every (root, pair type) group with at least two slices gives at least one validation slice
    (when ``val_fraction > 0``). A group's split depends only on the seed, the pair type and the
    group's files, so the same seed and files give the same split on any machine, and adding a
    root never moves a pair of another root between training and validation (the Harvard pairs
    split the same way alone as together with AANLIB).
    """
    train, val = [], []
    by_group: dict[tuple[str, str], list[SlicePair]] = {}
    for p in pairs:
        by_group.setdefault((p.source, p.pair), []).append(p)
    for source, name in sorted(by_group):
        group = sorted(by_group[source, name], key=lambda p: _natural_key(p.stem))
        rng = np.random.default_rng([seed, *name.encode()])
        order = rng.permutation(len(group))
        n_val = int(round(val_fraction * len(group)))
        if val_fraction > 0 and len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        if n_val >= len(group):
            raise PairDataError(
                f"{group[0].where}: the split leaves no training pair for {name} ({len(group)} pair"
                f"{'s' if len(group) > 1 else ''}, validation fraction {val_fraction}); "
                "lower the validation fraction or add pairs"
            )
        val_idx = set(order[:n_val].tolist())
        for i, p in enumerate(group):
            (val if i in val_idx else train).append(p)
    return train, val


def spread_subset(pairs: Sequence[SlicePair], limit: int | None) -> list[SlicePair]:
    """At most ``limit`` pairs, stratified: each (root, pair type) group keeps a share proportional
    to its size (at least one while ``limit`` allows), taken evenly spaced through the group.
    ``None`` or a ``limit`` of at least ``len(pairs)`` keeps everything. Deterministic."""
    if not limit or limit >= len(pairs):
        return list(pairs)
    groups: dict[tuple[str, str], list[SlicePair]] = {}
    for p in pairs:
        groups.setdefault((p.source, p.pair), []).append(p)
    keys = sorted(groups)
    exact = {k: limit * len(groups[k]) / len(pairs) for k in keys}
    quota = {k: min(len(groups[k]), max(int(exact[k]), 1 if limit >= len(keys) else 0)) for k in keys}
    # hand out what is left by largest remainder
    for k in sorted(keys, key=lambda k: exact[k] - int(exact[k]), reverse=True):
        if sum(quota.values()) >= limit:
            break
        if quota[k] < len(groups[k]):
            quota[k] += 1
    chosen: list[SlicePair] = []
    for k in keys:
        group = sorted(groups[k], key=lambda p: _natural_key(p.stem))
        if quota[k]:
            idx = np.unique(np.round(np.linspace(0, len(group) - 1, quota[k])).astype(int))
            chosen.extend(group[i] for i in idx)
    return chosen


def split_record(
    data: str | os.PathLike | Sequence[str | os.PathLike], train: Sequence[SlicePair], val: Sequence[SlicePair]
) -> dict:
    """What a run stores as ``split.json``: every data root, the pair counts per (root, pair type)
    and split, and the training and validation ids."""
    counts: dict[str, dict[str, int]] = {}
    for part, group in (("train", train), ("val", val)):
        for p in group:
            key = f"{p.source}/{p.pair}" if p.source else p.pair
            counts.setdefault(key, {"train": 0, "val": 0})[part] += 1
    return {
        "data": data_roots(data),
        "counts": dict(sorted(counts.items())),
        "train": [p.id for p in train],
        "val": [p.id for p in val],
    }


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image with MONAI's PIL reader as a float32 (C, H, W) array on its native scale.

    Raises:
        PairDataError: the file is missing or not a readable image.
    """
    from monai_emma.transforms.io import LoadPairedSliced, SliceReadError

    path = Path(path)
    if not path.is_file():
        raise PairDataError(f"{path}: no such file")
    try:
        return LoadPairedSliced(["image"])({"image": str(path)})["image"]
    except SliceReadError as err:
        raise PairDataError(str(err)) from err


def load_pair(pair: SlicePair | StudySlice) -> dict:
    """Load one pair as luminance in [0, 1]: ``a``, ``b`` (1, H, W) tensors, the other modality's
    chroma ``b_cbcr`` (2, H, W), ``b_is_colour``, and the pair's metadata.

    The dictionary pipeline: :class:`~monai_emma.transforms.io.LoadPairedSliced` (MONAI
    ``LoadImaged``), :class:`~monai_emma.transforms.ScaleToUnitd`,
    :class:`~monai_emma.transforms.RGBToYCbCrd`. A :class:`StudySlice` is already on that scale:
    its two channels (views, no copy) with no chroma.
    """
    if isinstance(pair, StudySlice):
        image = torch.as_tensor(pair.image)
        return {
            "a": image[0:1],
            "b": image[1:2],
            "b_cbcr": torch.zeros(()).expand(2, *image.shape[-2:]),  # grey: no chroma, no memory
            "b_is_colour": False,
            "pair": pair.pair,
            "a_modality": pair.a_modality,
            "b_modality": pair.b_modality,
            "id": pair.id,
        }
    from monai.transforms import Compose

    from monai_emma.transforms.colour import RGBToYCbCrd
    from monai_emma.transforms.intensity import ScaleToUnitd
    from monai_emma.transforms.io import LoadPairedSliced, SliceReadError

    for p in (pair.a, pair.b):
        if not Path(p).is_file():
            raise PairDataError(f"{p}: no such file")
    pipeline = Compose([LoadPairedSliced(["a", "b"]), ScaleToUnitd(["a", "b"]), RGBToYCbCrd(["a", "b"])])
    try:
        d = pipeline({"a": str(pair.a), "b": str(pair.b)})
    except SliceReadError as err:
        raise PairDataError(str(err)) from err
    except RuntimeError as err:  # Compose wraps transform errors
        from monai_emma.errors import transform_cause

        cause = transform_cause(err)
        if not isinstance(cause, SliceReadError):
            raise
        raise PairDataError(str(cause)) from err
    out = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in d.items() if not k.endswith("_is_colour")}
    out.update(
        b_is_colour=d["b_is_colour"],
        pair=pair.pair,
        a_modality=pair.a_modality,
        b_modality=pair.b_modality,
        id=pair.id,
    )
    return out


class PairedPatchDataset(Dataset):
    """Foreground-aware random patches of paired slices, cached in memory, deterministic.

    Each item is ``{"a", "b"}`` patches (1, h, w) in [0, 1] (plus ``"fused"`` when a folder of
    fused images is given) and the modality names. The window of item ``i`` in epoch ``e`` depends
    only on ``(seed, e, i)``, so a run resumed from a checkpoint draws the same patches as an
    uninterrupted one.

    Args:
        pairs: the slice pairs.
        patch_size: patch height and width.
        patches_per_image: items per pair and epoch.
        seed: base seed.
        fused_dir: optional folder of fused images (same stems as the pairs; may hold
            ``<PAIR>/<stem>.png`` or ``<stem>.png``) used as stage-1 inputs.
        background_prob: probability of a window not centred on foreground.
    """

    def __init__(
        self,
        pairs: Sequence[SlicePair | StudySlice],
        patch_size: int | Sequence[int] = 64,
        patches_per_image: int = 4,
        seed: int = 0,
        fused_dir: str | os.PathLike | None = None,
        background_prob: float = 0.1,
    ) -> None:
        from monai_emma.transforms.patches import RandForegroundPatchd

        if not pairs:
            raise PairDataError("no pairs to train on")
        size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.items = [load_pair(p) for p in pairs]
        if fused_dir is not None:
            for item, p in zip(self.items, pairs):
                item["fused"] = torch.as_tensor(_fused_for(Path(fused_dir), p))
        self.keys = ["a", "b"] + (["fused"] if fused_dir is not None else [])
        self.patches_per_image = int(patches_per_image)
        self.seed = int(seed)
        self.epoch = 0
        self.cropper = RandForegroundPatchd(self.keys, size, background_prob=background_prob)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) * self.patches_per_image

    def __getitem__(self, index: int) -> dict:
        return patch_of(self.cropper, self.keys, self.items[index % len(self.items)], [self.seed, self.epoch, index])


def patch_of(cropper, keys: Sequence[str], item: dict, seed: Sequence[int]) -> dict:
    """One training item: ``cropper``'s window of ``item`` (a :func:`load_pair` dictionary) drawn
    from the random state ``seed``, and the pair's modality names."""
    cropper.set_random_state(state=np.random.RandomState(list(seed)))
    patch = cropper({k: item[k] for k in keys})
    out = {k: patch[k].float().contiguous() for k in keys}
    out.update(a_modality=item["a_modality"], b_modality=item["b_modality"])
    return out


def _fused_for(folder: Path, pair: SlicePair) -> np.ndarray:
    from monai_emma.transforms.colour import rgb_to_ycbcr

    for candidate in (folder / pair.pair, folder):
        if candidate.is_dir():
            found = list_images(candidate).get(pair.stem)
            if found is not None:
                img = read_image(found) / 255.0
                return (rgb_to_ycbcr(img, 0)[0:1] if img.shape[0] == 3 else img[0:1]).astype(np.float32)
    raise PairDataError(f"{folder}: no fused image for {pair.id} (expected {pair.stem}.png)")
