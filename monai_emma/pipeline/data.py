"""Ray Data in the pipeline: a datalist's studies as Ray Datasets that stream slices to the Train
workers.

The driver turns the training and validation studies into datasets of one row per study (its
entry as JSON: paths or URIs, nothing read yet). A ``flat_map`` task, scheduled by Ray Data on
any node's CPUs, reads and preprocesses one study (:func:`~monai_emma.studies.study_record`:
``fuse``'s preprocessing, or the on-disk cache when ``cache_dir`` is given and shared) and emits
its slices with foreground as rows (:func:`~monai_emma.studies.study_rows`). Ray Train splits the
training dataset between the workers (``streaming_split(equal=True)``: the same number of
slices for every rank, as DDP needs); each worker draws patches while its shard goes by
(:class:`~monai_emma.data.streaming.StreamedPatchDataset`). Nothing holds the whole dataset: a
worker holds a shuffle buffer of patches, the object store what Ray's streaming executor keeps in
flight (its backpressure bounds it), so memory does not grow with the number of studies. The
validation dataset is small (``val_slices`` slices spread over the validation studies) and every
worker receives it whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from monai_emma.data.datalist import Study

__all__ = ["study_dataset", "pipeline_datasets", "rows_of_study", "TRAIN", "VALIDATION"]

TRAIN, VALIDATION = "train", "validation"


def rows_of_study(row: dict[str, Any], options: dict, cache_dir: str | None, keep: int | None) -> list[dict]:
    """The Ray Data task: one study row in, its slice rows out (see :func:`~monai_emma.studies.study_rows`).

    Raises:
        DatalistError: the study cannot be read or fused (one line naming the entry and the file).
    """
    from monai_emma.studies import StudyCache, StudyOptions, study_record, study_rows

    study = Study.from_entry(json.loads(row["study"]))
    cache = StudyCache(cache_dir) if cache_dir else None
    record, _ = study_record(study, StudyOptions.from_dict(options), cache)
    return study_rows(record, keep)


def study_dataset(
    studies: Sequence[Study],
    options: dict,
    cache_dir: str | None = None,
    keep: int | None = None,
    task_cpus: float = 1.0,
):
    """A Ray Dataset of the slices of ``studies``: one block (one preprocessing task) per study,
    then one row per slice (``image``, ``study``, ``z``, ``depth``).

    Args:
        studies: the studies.
        options: :meth:`~monai_emma.studies.StudyOptions.to_dict` of the preprocessing options.
        cache_dir: a folder every node sees (or None: preprocess every pass).
        keep: at most this many evenly spaced slices per study (None: all).
        task_cpus: logical CPUs each preprocessing task reserves; 0 when the Train workers hold
            every CPU of the cluster (the tasks then run one at a time beside them: Ray Data
            schedules nothing on CPUs it cannot reserve, and would wait forever).
    """
    import ray.data

    items = [{"study": json.dumps(s.to_entry(), sort_keys=True)} for s in studies]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    kwargs = {"options": options, "cache_dir": str(cache_dir) if cache_dir else None, "keep": keep}
    if task_cpus > 0:
        return ds.flat_map(rows_of_study, fn_kwargs=kwargs, num_cpus=task_cpus)
    return ds.flat_map(rows_of_study, fn_kwargs=kwargs, num_cpus=0, concurrency=1)


def pipeline_datasets(
    train: Sequence[Study],
    val: Sequence[Study],
    options: dict,
    cache_dir: str | None,
    val_slices: int | None,
    task_cpus: float = 1.0,
) -> dict[str, Any]:
    """``{"train": ..., "validation": ...}`` for ``TorchTrainer(datasets=...)`` (no validation
    entry without validation studies); validation keeps about ``val_slices`` slices in all (all
    when None). ``task_cpus`` as for :func:`study_dataset`."""
    out = {TRAIN: study_dataset(train, options, cache_dir, task_cpus=task_cpus)}
    if val:
        per_study = max(1, math.ceil(val_slices / len(val))) if val_slices else None
        out[VALIDATION] = study_dataset(val, options, cache_dir, keep=per_study, task_cpus=task_cpus)
    return out
