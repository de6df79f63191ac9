"""Patches drawn from a stream of slices (the Ray pipeline's datalist path), without Ray."""

import numpy as np
import pytest
import torch

from monai_emma.data.pairs import PairDataError, StudySlice
from monai_emma.data.streaming import SliceStream, StreamedPatchDataset
from monai_emma.engines import recipe
from monai_emma.engines.stages import FUSER, SENSORS
from monai_emma.engines.trainer import make_loader
from monai_emma.engines.two_stage import modalities_of, stage_dataset


def _slices(n: int, size: int = 40, study: str = "MRI_CT/s") -> list[StudySlice]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        image = np.zeros((2, size, size), np.float32)
        image[:, 8:32, 8:32] = rng.random((2, 24, 24), dtype=np.float32)  # foreground in the middle
        out.append(StudySlice(image, "MRI_CT", "mri", "ct", f"s/z{i:03d}", study))
    return out


def _stream(slices, **kwargs) -> SliceStream:
    return SliceStream(lambda: iter(slices), ["mri", "ct"], slices=len(slices), **kwargs)


def test_every_slice_gives_its_patches_in_a_bounded_shuffle():
    slices = _slices(10)
    ds = StreamedPatchDataset(_stream(slices, shuffle_buffer=4), 16, patches_per_slice=3, seed=1)
    items = list(ds)
    assert len(items) == 30 and ds.slices_seen == 10 and ds.studies_seen == {"MRI_CT/s"}
    assert all(it["a"].shape == (1, 16, 16) and it["b"].shape == (1, 16, 16) for it in items)
    assert {it["a_modality"] for it in items} == {"mri"} and {it["b_modality"] for it in items} == {"ct"}
    # a patch is a window of its slice: every patch matches some window of some slice exactly
    a = torch.stack([it["a"][0] for it in items])
    sources = torch.as_tensor(np.stack([s.image[0] for s in slices]))
    windows = sources.unfold(1, 16, 1).unfold(2, 16, 1).reshape(-1, 16, 16)
    assert all(bool((windows == p).all((1, 2)).any()) for p in a)


def test_passes_are_reproducible_per_epoch_and_differ_between_epochs():
    slices = _slices(6)
    one = StreamedPatchDataset(_stream(slices), 16, patches_per_slice=2, seed=5)
    two = StreamedPatchDataset(_stream(slices), 16, patches_per_slice=2, seed=5)
    first, again = torch.stack([x["a"] for x in one]), torch.stack([x["a"] for x in two])
    assert torch.equal(first, again)
    one.set_epoch(2)
    assert not torch.equal(first, torch.stack([x["a"] for x in one]))


def test_ranks_draw_different_patches_from_the_same_slices():
    slices = _slices(6)
    r0 = torch.stack([x["a"] for x in StreamedPatchDataset(_stream(slices, rank=0), 16, 2, seed=5)])
    r1 = torch.stack([x["a"] for x in StreamedPatchDataset(_stream(slices, rank=1), 16, 2, seed=5)])
    assert not torch.equal(r0, r1)


def test_a_rate_below_one_spreads_the_patches_over_the_slices():
    slices = _slices(10)
    ds = StreamedPatchDataset(_stream(slices, shuffle_buffer=1), 16, patches_per_slice=0.3)
    items = list(ds)
    assert len(items) == 3 and ds.slices_seen == 10  # ceil(10 x 0.3), every slice still read
    one = StreamedPatchDataset(_stream(slices[:2]), 16, patches_per_slice=0.01, min_items=4)
    assert len(list(one)) == 4  # the first slice's patch, repeated to one batch
    with pytest.raises(ValueError, match="positive"):
        StreamedPatchDataset(_stream(slices), 16, patches_per_slice=0)


def test_a_pass_shorter_than_a_batch_is_repeated_to_one_batch():
    ds = StreamedPatchDataset(_stream(_slices(2)), 16, patches_per_slice=1, min_items=5)
    assert len(list(ds)) == 5
    loader = make_loader(ds, batch_size=5, seed=0)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["a"].shape == (5, 1, 16, 16)


def test_an_empty_pass_is_an_error_naming_the_data():
    ds = StreamedPatchDataset(_stream([], where="/data/dataset.json", rank=1), 16)
    with pytest.raises(PairDataError, match=r"/data/dataset.json: rank 1 received no slices"):
        list(ds)


def test_the_engine_takes_a_stream_where_it_takes_pairs():
    cfg = recipe("cpu", sensor_samples_per_epoch=25, fuser_samples_per_epoch=12)
    stream = _stream(_slices(5))
    assert modalities_of(stream) == ["ct", "mri"]
    sensors = stage_dataset(stream, cfg, SENSORS)
    fuser = stage_dataset(stream, cfg, FUSER)
    assert isinstance(sensors, StreamedPatchDataset) and sensors.patches_per_slice == 5
    assert fuser.patches_per_slice == 2.4 and fuser.seed == sensors.seed + 1
    assert len(list(fuser)) == 12  # samples_per_epoch patches from the stream's 5 slices
    assert sensors.min_items == SENSORS.settings(cfg).batch_size
    loader = make_loader(sensors, batch_size=4, seed=0, rank=1, world_size=2)  # already this rank's shard
    assert sum(b["a"].shape[0] for b in loader) == 24  # 25 patches, whole batches only


def test_stage_one_inputs_from_fused_pngs_are_refused_for_streams(tmp_path):
    cfg = recipe("cpu", fused_dir=str(tmp_path))
    with pytest.raises(PairDataError, match="fused_dir"):
        stage_dataset(_stream(_slices(2)), cfg, SENSORS)
