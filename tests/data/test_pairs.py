import shutil

import pytest
import torch

from monai_emma.data.pairs import (
    PairDataError,
    PairedPatchDataset,
    find_pairs,
    load_pair,
    split_pairs,
    split_record,
    spread_subset,
)


def test_find_pairs_and_modalities(phantom_root):
    pairs = find_pairs(phantom_root)
    assert len(pairs) == 8
    assert {p.pair for p in pairs} == {"MRI_CT", "MRI_PET"}
    assert {p.b_modality for p in pairs} == {"ct", "pet"} and {p.a_modality for p in pairs} == {"mri"}
    one = find_pairs(phantom_root / "MRI_CT")  # a single pair folder works too
    assert [p.stem for p in one] == ["1", "2", "3", "4"]


def test_split_is_reproducible_and_stratified(phantom_root):
    pairs = find_pairs(phantom_root)
    train, val = split_pairs(pairs, 0.25, seed=0)
    assert len(val) == 2 and {p.pair for p in val} == {"MRI_CT", "MRI_PET"}
    assert not {p.id for p in train} & {p.id for p in val}
    assert [p.id for p in split_pairs(pairs, 0.25, seed=0)[1]] == [p.id for p in val]


def test_a_pair_type_with_one_pair_trains_and_a_split_without_training_pairs_is_refused(phantom_root):
    ct = [p for p in find_pairs(phantom_root) if p.pair == "MRI_CT"]
    pet = [p for p in find_pairs(phantom_root) if p.pair == "MRI_PET"]
    train, val = split_pairs(ct[:1] + pet, 0.25, seed=0)
    assert [p.id for p in train if p.pair == "MRI_CT"] == [ct[0].id] and {p.pair for p in val} == {"MRI_PET"}
    with pytest.raises(PairDataError, match=r"MRI_CT: the split leaves no training pair for MRI_CT \(1 pair"):
        split_pairs(ct[:1] + pet, 0.6, seed=0)


def test_several_roots_are_labelled_and_split_independently(phantom_root, second_root, tmp_path):
    both = find_pairs([phantom_root, second_root])
    assert len(both) == 8 + 6
    assert {p.source for p in both} == {phantom_root.name, "more"}
    assert "more/MRI_SPECT/2" in {p.id for p in both}
    assert len({p.id for p in both}) == len(both)  # MRI_CT/1 exists in both roots, ids still differ
    # adding a root moves no pair of the first root between training and validation
    alone_train, alone_val = split_pairs(find_pairs(phantom_root), 0.25, seed=3)
    train, val = split_pairs(both, 0.25, seed=3)
    first = phantom_root.name + "/"
    assert sorted(p.id for p in alone_val) == sorted(p.id[len(first) :] for p in val if p.id.startswith(first))
    assert {(p.source, p.pair) for p in val} == {(phantom_root.name, "MRI_CT"), (phantom_root.name, "MRI_PET")} | {
        ("more", "MRI_CT"),
        ("more", "MRI_SPECT"),
    }
    record = split_record([phantom_root, second_root], train, val)
    assert record["data"] == [str(phantom_root), str(second_root)]
    assert record["counts"]["more/MRI_SPECT"] == {"train": 2, "val": 1}
    assert sorted(record["val"]) == sorted(p.id for p in val) and len(record["train"]) == len(train)
    # two roots with the same folder name get distinct labels; the same root twice is refused
    twin = tmp_path / "x" / second_root.name
    shutil.copytree(second_root, twin)
    assert {p.source for p in find_pairs([second_root, twin])} == {"more", "more-2"}
    with pytest.raises(PairDataError, match="given twice"):
        find_pairs([second_root, str(second_root) + "/"])
    with pytest.raises(PairDataError, match="no such data folder"):
        find_pairs([second_root, tmp_path / "missing"])


def test_spread_subset_is_stratified_and_deterministic(phantom_root, second_root):
    pairs = find_pairs([phantom_root, second_root])
    sub = spread_subset(pairs, 6)
    assert len(sub) == 6 and sub == spread_subset(pairs, 6)
    assert len({(p.source, p.pair) for p in sub}) == 4  # every group keeps at least one
    assert spread_subset(pairs, None) == pairs and spread_subset(pairs, 100) == pairs


def test_load_pair_luminance_and_colour_flag(phantom_root):
    ct, pet = find_pairs(phantom_root / "MRI_CT")[0], find_pairs(phantom_root / "MRI_PET")[0]
    d = load_pair(ct)
    assert d["a"].shape == (1, 64, 64) and 0 <= d["a"].min() and d["a"].max() <= 1
    assert d["b_is_colour"] is False
    assert load_pair(pet)["b_is_colour"] is True


def test_unmatched_and_unreadable_files(tmp_path, phantom_root):
    root = tmp_path / "d"
    shutil.copytree(phantom_root / "MRI_CT", root / "MRI_CT")
    (root / "MRI_CT" / "CT" / "4.png").unlink()
    with pytest.raises(PairDataError, match=r"MRI_CT/MRI without a partner \(4\)"):
        find_pairs(root)
    (root / "MRI_CT" / "MRI" / "4.png").unlink()
    (root / "MRI_CT" / "CT" / "3.png").write_bytes(b"not a png")
    pairs = find_pairs(root)
    with pytest.raises(PairDataError, match=r"3.png: not a readable image"):
        [load_pair(p) for p in pairs]
    with pytest.raises(PairDataError, match="no image pairs found"):
        find_pairs(tmp_path / "d" / "MRI_CT" / "MRI")
    with pytest.raises(PairDataError, match="no such data folder"):
        find_pairs(tmp_path / "missing")


def test_patch_dataset_is_deterministic_per_epoch(phantom_root):
    ds = PairedPatchDataset(find_pairs(phantom_root), patch_size=32, patches_per_image=2, seed=5)
    assert len(ds) == 16
    first = ds[3]
    assert first["a"].shape == (1, 32, 32) and first["b_modality"] in ("ct", "pet")
    assert torch.equal(ds[3]["a"], first["a"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["a"], first["a"])


@pytest.mark.shared_data
def test_shared_harvard_layout(harvard_root):
    pairs = find_pairs(harvard_root)
    assert len(pairs) >= 45 and {"ct", "pet", "spect"} <= {p.b_modality for p in pairs}
