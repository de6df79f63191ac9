"""Loading paired 2D slices with MONAI's readers."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Hashable, Iterator, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_emma.errors import first_line

__all__ = ["LoadPairedSliced", "SliceReadError", "quiet_monai_readers"]

_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


@contextlib.contextmanager
def quiet_monai_readers() -> Iterator[None]:
    """Inside the block, MONAI 1.6's notice about its optional nvImageCodec DICOM plugin (logged
    and warned on every reader use, irrelevant here) is not shown. Nothing changes outside it."""
    logger = logging.getLogger(_NVIMGCODEC_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*NvImgCodecPydicomReader.*")
            yield
    finally:
        logger.setLevel(level)


def _bits_per_sample(path) -> int:
    """Bits per sample of a 2D image file from its header (PIL mode): 8, 16 or 32 (float/int)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:  # unreadable: the loader has already said so, or reads it by other means
        return 8
    return {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}.get(mode, 8)


def _own_range(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A high-bit-depth image on the 0-255 scale of 8-bit images, by its own min and max."""
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32), lo, hi
    return (np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0, 1) * 255.0).astype(np.float32), lo, hi


class SliceReadError(ValueError):
    """A slice image could not be read; the message names the file and the problem."""


class LoadPairedSliced(MapTransform):
    """Load 2D images (PNG, JPEG, BMP, TIFF) for ``keys`` with MONAI ``LoadImaged`` and its PIL
    reader, channel first, (C, H, W) float32 on the 0-255 scale of 8-bit files. 16-bit and float
    greyscale images (PNG, TIFF) are brought to that scale by their own range (min to max), which
    is recorded as ``<key>_source_range`` ``(min, max, bits)``.

    Unlike MONAI's default PIL reader layout, rows stay rows (``reverse_indexing=False``), so the
    arrays match what image viewers show. All keys must have the same height and width.

    Raises:
        SliceReadError: a file is missing or unreadable, or the sizes differ (one line, naming it).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from monai.data import PILReader
        from monai.transforms import LoadImaged

        with quiet_monai_readers():
            self.loader = LoadImaged(
                keys,
                reader=PILReader(reverse_indexing=False),
                image_only=True,
                dtype=np.float32,
                allow_missing_keys=True,
            )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                with quiet_monai_readers():
                    arr = np.asarray(self.loader({key: path})[key], dtype=np.float32)
            except Exception as err:  # MONAI wraps reader errors with a long traceback text
                raise SliceReadError(f"{path}: not a readable image ({first_line(err)})") from err
            if arr.ndim == 2:
                arr = arr[None]
            elif arr.ndim == 3:
                arr = np.moveaxis(arr, -1, 0)[:3]
            else:
                raise SliceReadError(f"{path}: expected a 2D image, got an array of shape {arr.shape}")
            bits = _bits_per_sample(path)
            if bits > 8:  # 16-bit (or float) greyscale: its own range becomes 0-255
                arr, lo, hi = _own_range(arr)
                d[f"{key}_source_range"] = (lo, hi, bits)
            d[key] = arr
        shapes = {str(d[k]): d[k].shape[-2:] for k in self.key_iterator(d)}
        if len(set(shapes.values())) > 1:
            sizes = ", ".join(f"{data[k]} {d[k].shape[-2]}x{d[k].shape[-1]}" for k in self.key_iterator(d))
            raise SliceReadError(f"image sizes differ: {sizes}")
        return d
