"""Training slices that arrive as a stream (a Ray Data shard), not as a list in memory.

:class:`SliceStream` is what the Ray pipeline's workers hand the training engine instead of a list
of pairs when the data come from a datalist: a callable that starts one pass over this rank's
slices (:class:`~monai_emma.data.pairs.StudySlice` items), the modalities the data hold, and how
many slices one epoch holds over all ranks (to spread ``samples_per_epoch`` over them).
:class:`StreamedPatchDataset` draws the same foreground-aware patches as
:class:`~monai_emma.data.pairs.PairedPatchDataset` from it while the slices go by, shuffled within a
bounded buffer, so memory holds the buffer, never the dataset.

Example:
    >>> import numpy as np
    >>> from monai_emma.data.pairs import StudySlice
    >>> rows = [StudySlice(np.random.rand(2, 32, 32).astype("float32"), "MRI_CT", "mri", "ct", f"s/z{i}", "MRI_CT/s")
    ...         for i in range(4)]
    >>> ds = StreamedPatchDataset(SliceStream(lambda: iter(rows), ["ct", "mri"], slices=4), 16, patches_per_slice=2)
    >>> len(list(ds)), next(iter(ds))["a"].shape
    (8, torch.Size([1, 16, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset

from monai_emma.data.pairs import PairDataError, StudySlice, load_pair, patch_of

__all__ = ["SliceStream", "StreamedPatchDataset"]


@dataclass(frozen=True)
class SliceStream:
    """One rank's slices, one pass per call of ``rows``.

    Attributes:
        rows: ``rows()`` starts a pass and yields :class:`~monai_emma.data.pairs.StudySlice` items
            (e.g. the rows of ``ray.train.get_dataset_shard("train")``); every pass of every rank
            must yield the same number of slices (DDP ranks step together; Ray Data's
            ``streaming_split(equal=True)`` gives that).
        modalities: the modality names in the data (one pseudo-sensor each).
        slices: slices per epoch over all ranks (an estimate is fine: it sets patches per slice).
        rank: this rank (seeds its patches).
        shuffle_buffer: patches held and drawn from at random while the stream goes by.
        where: names the data in errors.
    """

    rows: Callable[[], Iterable[StudySlice]]
    modalities: Sequence[str]
    slices: int
    rank: int = 0
    shuffle_buffer: int = 256
    where: str = "the stream"


class StreamedPatchDataset(IterableDataset):
    """Random foreground-aware patches of the slices of a :class:`SliceStream` pass,
    ``patches_per_slice`` per slice on average, shuffled within ``stream.shuffle_buffer`` patches.

    The ``i``-th slice of a pass gives ``ceil((i + 1) r) - ceil(i r)`` patches for a rate ``r``:
    a rate below one uses every other slice, every third... (the first always), and a pass of
    ``n`` slices gives ``ceil(n r)`` patches, the same on every rank (the ranks receive as many
    slices).
    Items are those of :class:`~monai_emma.data.pairs.PairedPatchDataset`; the window of the
    ``k``-th patch of the ``i``-th slice of a pass depends only on ``(seed, epoch, rank, i, k)``.
    A pass that yields fewer than ``min_items`` patches is repeated up to ``min_items`` (one full
    batch per rank, however few the slices); one that yields none is an error.

    Args:
        stream: the slices.
        patch_size: patch height and width.
        patches_per_slice: items per slice and pass, on average (a rate: 0.5 is one every other slice).
        seed: base seed.
        min_items: the fewest items a pass yields.
        background_prob: probability of a window not centred on foreground.
    """

    def __init__(
        self,
        stream: SliceStream,
        patch_size: int | Sequence[int] = 64,
        patches_per_slice: float = 1.0,
        seed: int = 0,
        min_items: int = 1,
        background_prob: float = 0.1,
    ) -> None:
        from monai_emma.transforms.patches import RandForegroundPatchd

        size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.stream = stream
        self.keys = ["a", "b"]
        if not patches_per_slice > 0:
            raise ValueError(f"patches_per_slice must be positive, got {patches_per_slice}")
        self.patches_per_slice = float(patches_per_slice)
        self.seed, self.epoch, self.min_items = int(seed), 0, int(min_items)
        self.buffer_size = max(int(stream.shuffle_buffer), self.min_items, 1)
        self.cropper = RandForegroundPatchd(self.keys, size, background_prob=background_prob)

        #: the last pass's slice count and study ids (what this rank received)
        self.slices_seen, self.studies_seen = 0, set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        epoch, rank = self.epoch, int(self.stream.rank)  # read when the pass starts (after set_epoch)
        rng = np.random.default_rng([self.seed, epoch, rank])
        buffer: list[dict] = []
        yielded = 0
        self.slices_seen, self.studies_seen = 0, set()
        for i, s in enumerate(self.stream.rows()):
            self.slices_seen += 1
            self.studies_seen.add(getattr(s, "study", s.id))
            count = math.ceil((i + 1) * self.patches_per_slice) - math.ceil(i * self.patches_per_slice)
            item = load_pair(s) if count else None
            for k in range(count):
                buffer.append(patch_of(self.cropper, self.keys, item, [self.seed, epoch, rank, i, k]))
                if len(buffer) >= self.buffer_size:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yielded += 1
                    yield buffer.pop()
        if self.slices_seen == 0:
            raise PairDataError(f"{self.stream.where}: rank {rank} received no slices to train on")
        order = rng.permutation(len(buffer))
        for j in order:
            yielded += 1
            yield buffer[j]
        # too few for one batch: repeat the pass's last patches (every rank alike, as DDP needs)
        while yielded < self.min_items and order.size:
            yield buffer[order[yielded % len(order)]]
            yielded += 1
