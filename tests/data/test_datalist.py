"""MONAI datalists of volume studies: paths, modalities, names, the split by study, bad entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_emma.data.datalist import (
    DatalistError,
    Study,
    datalist_intensity,
    load_datalist,
    select_studies,
    split_studies,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # datalist reading looks at paths only


def _write(root: Path, data: dict) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_paths_resolve_like_monai_and_modalities_give_the_pair(tmp_path):
    from monai.data import load_decathlon_datalist

    _touch(tmp_path, "a/case2/mri.nii.gz", "a/case2/ct.nii.gz", "b/s1/ct.nii", "b/s1/pet.nii", "c/x/mri.nii")
    (tmp_path / "c/x/spect").mkdir()  # a DICOM series folder
    absolute = str(tmp_path / "c/x/spect")
    path = _write(
        tmp_path,
        {
            "training": [
                {"mri": "a/case2/mri.nii.gz", "ct": "a/case2/ct.nii.gz"},
                {"pet": "b/s1/pet.nii", "ct": "b/s1/ct.nii", "name": "pc1"},
                {"spect": absolute, "mri": "c/x/mri.nii"},
            ]
        },
    )
    studies = load_datalist(path)
    assert [s.id for s in studies] == ["MRI_CT/case2", "CT_PET/pc1", "MRI_SPECT/x"]
    assert [(s.a_modality, s.b_modality) for s in studies] == [("mri", "ct"), ("ct", "pet"), ("mri", "spect")]
    monai = load_decathlon_datalist(path, data_list_key="training", base_dir=path.parent)
    assert [str(s.anatomical) for s in studies] == [e[s.a_modality] for e, s in zip(monai, studies)]
    assert [str(s.other) for s in studies] == [e[s.b_modality] for e, s in zip(monai, studies)]
    assert Study.from_entry(json.loads(json.dumps(studies[1].to_entry()))) == studies[1]  # a Ray row and back


def test_derived_names_are_unique_across_all_lists(tmp_path):
    _touch(tmp_path, *(f"{d}/case1/{m}.nii" for d in ("train", "val") for m in ("mri", "pet")))
    _touch(tmp_path, "train/case2/mri.nii", "train/case2/pet.nii")
    entries = [
        {"mri": f"{d}/{c}/mri.nii", "pet": f"{d}/{c}/pet.nii"} for d, c in (("train", "case1"), ("train", "case2"))
    ]
    path = _write(
        tmp_path, {"training": entries, "validation": [{"mri": "val/case1/mri.nii", "pet": "val/case1/pet.nii"}]}
    )
    train, val = load_datalist(path, "training"), load_datalist(path, "validation")
    assert [s.name for s in train] == ["train/case1", "case2"] and [s.name for s in val] == ["val/case1"]


def test_split_by_study_is_seeded_stratified_and_whole(tmp_path):
    entries = []
    for pair, n in (("ct", 6), ("spect", 4)):
        for i in range(n):
            _touch(tmp_path, f"{pair}{i}/mri.nii", f"{pair}{i}/{pair}.nii")
            entries.append({"mri": f"{pair}{i}/mri.nii", pair: f"{pair}{i}/{pair}.nii"})
    studies = load_datalist(_write(tmp_path, {"training": entries}))
    train, val = split_studies(studies, 0.25, seed=3)
    assert {s.pair for s in val} == {"MRI_CT", "MRI_SPECT"} and len(train) + len(val) == 10
    assert not {s.id for s in train} & {s.id for s in val}
    assert [s.id for s in split_studies(studies, 0.25, seed=3)[1]] == [s.id for s in val]
    others = {tuple(s.id for s in split_studies(studies, 0.25, seed=k)[1]) for k in range(6)}
    assert len(others) > 1  # the seed matters
    assert select_studies(studies, [val[0].id]) == [val[0]]
    with pytest.raises(DatalistError, match="1 listed study not found: MRI_CT/nope"):
        select_studies(studies, ["MRI_CT/nope"])


def test_intensity_rules_of_the_datalist(tmp_path):
    path = _write(
        tmp_path, {"training": [], "intensity": {"ct": {"window": [0, 255]}, "pet": {"percentiles": [0, 99]}}}
    )
    rules = datalist_intensity(path)
    assert (rules["ct"].kind, rules["ct"].low, rules["ct"].high) == ("window", 0.0, 255.0)
    assert rules["pet"].kind == "percentile"
    bad = _write(tmp_path, {"training": [], "intensity": {"ct": {"level": [0, 255]}}})
    with pytest.raises(DatalistError, match=r"intensity\.ct: expected"):
        datalist_intensity(bad)


@pytest.mark.parametrize(
    "entry, key, message",
    [
        ({"mri": "s/mri.nii", "ct": "s/missing.nii"}, "training", r"training\[0\]: .*s/missing\.nii: no such file"),
        ({"mri": "s/mri.nii", "image": "s/ct.nii"}, "training", r"training\[0\]: unknown key 'image'"),
        ({"mri": "s/mri.nii"}, "training", r"training\[0\]: 1 modality \(mri\); an entry names exactly two"),
        ({"mri": "s/mri.nii", "ct": "s/ct.nii", "pet": "s/pet.nii"}, "training", "3 modalities"),
        ({"pet": "s/pet.nii", "spect": "s/spect.nii"}, "training", "pet and spect without an anatomical image"),
        ({"mri": "s/mri.nii", "ct": "s/empty.nii"}, "training", r"s/empty\.nii: empty file"),
        (None, "validation", "the 'validation' list is empty"),
        (None, "test", r"no 'test' list \(lists here: training, validation\)"),
    ],
)
def test_bad_entries_name_the_file_and_the_entry(tmp_path, entry, key, message):
    _touch(tmp_path, "s/mri.nii", "s/ct.nii", "s/pet.nii", "s/spect.nii")
    (tmp_path / "s/empty.nii").write_bytes(b"")
    path = _write(tmp_path, {"training": [entry or {"mri": "s/mri.nii", "ct": "s/ct.nii"}], "validation": []})
    with pytest.raises(DatalistError, match=message) as info:
        load_datalist(path, key)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_two_entries_with_one_name_are_refused(tmp_path):
    _touch(tmp_path, "a/mri.nii", "a/ct.nii", "b/mri.nii", "b/ct.nii")
    path = _write(
        tmp_path,
        {"training": [{"mri": f"{d}/mri.nii", "ct": f"{d}/ct.nii", "name": "same"} for d in "ab"]},
    )
    with pytest.raises(DatalistError, match=r"training\[1\]: study MRI_CT/same is also training\[0\]"):
        load_datalist(path)
