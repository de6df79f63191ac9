"""Volume studies from a MONAI datalist: ``fuse``'s preprocessing, the on-disk cache, bad input
refused up front, training (CLI and bundle) and evaluation on studies."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_emma.cli import main
from monai_emma.data.datalist import DatalistError, load_datalist
from monai_emma.studies import StudyOptions, check_studies, prepare_studies, preprocess_study, study_slices
from monai_emma.transforms.intensity import IntensityRule
from tests.conftest import SHARED_DATA

#: both stages, one epoch, as few steps as the slices allow
TINY = ["--epochs", "1", "--batch-size", "16"] + [
    arg
    for kv in (
        "sensor_patch_size=32",
        "fuser_patch_size=32",
        "sensor_samples_per_epoch=16",
        "fuser_samples_per_epoch=16",
        "val_slices=8",
    )
    for arg in ("--override", kv)
]

TRAINING = [
    {"mri": "nifti/mri.nii.gz", "ct": "nifti/ct.nii.gz"},  # MRI_CT/nifti
    {"mri": "dicom/mri", "pet": "dicom/pet"},  # MRI_PET/dicom: DICOM series folders
    {"ct": "nifti/ct.nii.gz", "spect": "nifti/spect.nii.gz"},  # CT_SPECT/nifti: CT as the base
]
VALIDATION = [{"mri": "nifti/mri.nii.gz", "spect": "nifti/spect.nii.gz", "name": "s1"}]


@pytest.fixture(scope="module")
def studies_root(tmp_path_factory) -> Path:
    """The phantom head (48 mm, 3 mm MRI voxels: about 20 slices) as NIfTI, and MRI + PET as DICOM."""
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    root = tmp_path_factory.mktemp("studies")
    write_phantom_nifti(root / "nifti", head_mm=48.0, mri_spacing=3.0)
    write_phantom_dicom(root / "dicom", head_mm=48.0, mri_spacing=3.0, modalities=("mri", "pet"))
    return root


def _datalist(folder: Path, training=None, validation=None, name: str = "dataset.json", **extra) -> Path:
    data = {"training": TRAINING if training is None else training, **extra}
    if validation is not None:
        data["validation"] = validation
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def _padded_mri(root: Path, extra: int = 4) -> Path:
    """The phantom MRI with ``extra`` empty slices above the head (same affine: the CT covers none of them)."""
    img = nib.load(root / "nifti" / "mri.nii.gz")
    data = np.concatenate([img.get_fdata(dtype=np.float32), np.zeros((*img.shape[:2], extra), np.float32)], 2)
    path = root / "padded" / "mri.nii.gz"
    path.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(data, img.affine), path)
    return path


def test_a_study_is_fuses_pipeline_cut_into_its_slices_with_foreground(studies_root):
    from monai_emma.data.pairs import load_pair
    from monai_emma.fusion import fusion_preprocessing
    from monai_emma.transforms.patches import foreground_mask

    mri = _padded_mri(studies_root)
    path = _datalist(studies_root, [{"mri": str(mri), "ct": "nifti/ct.nii.gz"}], name="padded.json")
    (study,) = load_datalist(path)
    record = preprocess_study(study.to_entry(), StudyOptions().to_dict())  # plain dictionaries: a Ray map
    json.dumps({k: v for k, v in record.items() if k not in ("image", "z")})
    job = {"anatomical": str(mri), "other": str(study.other), "modality": "ct", "anatomical_modality": "mri"}
    full = np.moveaxis(fusion_preprocessing()(job)["image"].numpy(), -1, 0)  # (Z, 2, H, W), display orientation
    kept = [z for z in range(full.shape[0]) if foreground_mask(full[z]).mean() >= 0.01]
    assert record["depth"] == full.shape[0] and list(record["z"]) == kept
    assert len(kept) == full.shape[0] - 4  # the empty slices above the head are left out
    np.testing.assert_array_equal(record["image"], full[kept])

    slices = study_slices(record)
    assert [s.id for s in slices[:2]] == [f"MRI_CT/padded/z{kept[0]:03d}", f"MRI_CT/padded/z{kept[1]:03d}"]
    assert all(np.shares_memory(s.image, record["image"]) for s in slices)  # views, no copies
    item = load_pair(slices[3])
    assert item["a"].shape == (1, *full.shape[-2:]) and item["b_cbcr"].shape == (2, *full.shape[-2:])
    np.testing.assert_array_equal(item["b"].numpy(), full[kept[3], 1:2])
    assert (item["pair"], item["a_modality"], item["b_modality"], item["b_is_colour"]) == ("MRI_CT", "mri", "ct", False)


def test_the_cache_skips_preprocessing_and_notices_changes(studies_root, tmp_path, monkeypatch):
    import shutil

    import monai_emma.studies as st

    for name in ("mri.nii.gz", "ct.nii.gz", "pet.nii.gz"):
        shutil.copy(studies_root / "nifti" / name, tmp_path / name)
    path = _datalist(tmp_path, [{"mri": "mri.nii.gz", "ct": "ct.nii.gz"}, {"mri": "mri.nii.gz", "pet": "pet.nii.gz"}])
    studies = load_datalist(path)
    calls: list[str] = []
    real = st.preprocess_study
    monkeypatch.setattr(st, "preprocess_study", lambda s, o: calls.append(s.id) or real(s, o))
    cache = tmp_path / "cache"
    first = prepare_studies(studies, StudyOptions(), cache)
    second = prepare_studies(studies, StudyOptions(), cache)
    assert calls == ["MRI_CT/" + tmp_path.name, "MRI_PET/" + tmp_path.name]
    for s in studies:
        assert [x.id for x in first[s]] == [x.id for x in second[s]]
        np.testing.assert_array_equal(np.stack([x.image for x in first[s]]), np.stack([x.image for x in second[s]]))
    assert isinstance(second[studies[0]][0].image.base, np.memmap)  # read back memory-mapped
    st_ = os.stat(tmp_path / "ct.nii.gz")
    os.utime(tmp_path / "ct.nii.gz", ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # the CT changed
    prepare_studies(studies, StudyOptions(), cache)
    assert calls[2:] == [studies[0].id]
    other = StudyOptions.make({"ct": IntensityRule("window", 0.0, 80.0)})  # other options: other entries
    prepare_studies(studies[:1], other, cache)
    assert calls[3:] == [studies[0].id]


def test_a_study_without_foreground_is_skipped_and_all_empty_is_an_error(studies_root, tmp_path, caplog, capsys):
    img = nib.load(studies_root / "nifti" / "mri.nii.gz")
    for name in ("mri", "ct"):
        nib.save(
            nib.Nifti1Image(np.zeros(img.shape, np.float32) - (1000 * (name == "ct")), img.affine),
            tmp_path / f"{name}.nii.gz",
        )
    good = {"mri": str(studies_root / "nifti/mri.nii.gz"), "pet": str(studies_root / "nifti/pet.nii.gz")}
    path = _datalist(tmp_path, [{"mri": "mri.nii.gz", "ct": "ct.nii.gz"}, good])
    studies = load_datalist(path)
    with caplog.at_level("WARNING", logger="monai_emma.studies"):
        got = prepare_studies(studies, StudyOptions())
    assert got[studies[0]] == [] and len(got[studies[1]]) > 10
    assert f"{path}: training[0] (MRI_CT/{tmp_path.name}): no slice with foreground" in caplog.text
    empty = _datalist(tmp_path, [{"mri": "mri.nii.gz", "ct": "ct.nii.gz"}], name="empty.json")
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(empty), "--output", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"monai-emma: error: {empty} (training): no study has a slice with foreground; nothing to use"


def _bad_inputs(root: Path, folder: Path) -> dict[str, tuple[dict, str, str]]:
    """name: (second entry, the file its message names, what it says)."""
    img = nib.load(root / "nifti" / "ct.nii.gz")
    far = img.affine.copy()
    far[:3, 3] += 1000.0  # a metre away
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), far), folder / "far.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), img.affine), folder / "4d.nii.gz")
    (folder / "bad.nii.gz").write_bytes(b"not a volume at all" * 20)
    mri = str(root / "nifti" / "mri.nii.gz")
    return {
        "missing": ({"mri": mri, "ct": "missing.nii.gz"}, str(folder / "missing.nii.gz"), "no such file or folder"),
        "unreadable": ({"mri": mri, "ct": "bad.nii.gz"}, str(folder / "bad.nii.gz"), "not a readable NIfTI file"),
        "unknown key": ({"mri": mri, "label": "far.nii.gz"}, "unknown key 'label'", "an entry has two of"),
        "no overlap": ({"mri": mri, "ct": "far.nii.gz"}, str(folder / "far.nii.gz"), "fields of view do not overlap"),
        "4D": ({"mri": "4d.nii.gz", "pet": mri}, str(folder / "4d.nii.gz"), "expected a 3D volume"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "unknown key", "no overlap", "4D"])
def test_bad_input_stops_train_at_once_with_one_line(studies_root, tmp_path, capsys, case):
    entry, names, says = _bad_inputs(studies_root, tmp_path)[case]
    good = {k: str(studies_root / v) for k, v in TRAINING[0].items()}
    path = _datalist(tmp_path, [good, entry])
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(["train", "--datalist", str(path), "--output", str(out), *TINY]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"monai-emma: error: {path}: training[1]"), err
    assert names in err[0] and says in err[0]
    assert not (out / "cache").exists()  # nothing was preprocessed


def test_evaluate_needs_a_validation_list_with_studies(studies_root, tmp_path, capsys):
    none = _datalist(studies_root, name="no_validation.json")
    empty = _datalist(studies_root, validation=[], name="empty_validation.json")
    for path, says in (
        (none, "no 'validation' list (lists here: training)"),
        (empty, "the 'validation' list is empty"),
    ):
        assert main(["evaluate", "--datalist", str(path), "--output", str(tmp_path / "eval"), "--methods", "max"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"monai-emma: error: {path}: {says}"]
    assert main(["evaluate", str(studies_root), "--datalist", str(none)]) == 2
    assert "give the data folders or --datalist" in capsys.readouterr().err
    assert main(["train", "--data", str(studies_root), "--window", "ct=0,255"]) == 2
    assert "--window goes with --datalist" in capsys.readouterr().err
    for flag, spec, says in (
        ("--window", "pet=5,1", "LOW must be below HIGH"),
        ("--percentiles", "xr=0,9", "MOD one of"),
    ):
        assert main(["train", "--datalist", str(none), flag, spec, "--output", str(tmp_path / "run")]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_validation_study_that_is_also_a_training_study_is_refused(studies_root):
    from monai_emma.studies import Datalist

    path = _datalist(studies_root, validation=[TRAINING[1]], name="twice.json")
    with pytest.raises(DatalistError, match=r"validation\[0\] \(MRI_PET/dicom-2\): .*the same study as training\[1\]"):
        Datalist(path).training_split()


def test_a_validation_modality_without_training_studies_is_refused(studies_root):
    from monai_emma.studies import Datalist

    path = _datalist(studies_root, training=TRAINING[:1], validation=[TRAINING[1]], name="pet.json")
    with pytest.raises(DatalistError, match=r"validation\[0\] \(MRI_PET/dicom\): .*/pet: no training study has pet"):
        Datalist(path).study_split()


def test_study_rows_carry_slices_and_come_back_as_slices(studies_root):
    from monai_emma.data.datalist import load_datalist
    from monai_emma.studies import slice_of_row, study_rows

    study = load_datalist(_datalist(studies_root, name="rows.json"))[0]
    record = preprocess_study(study)
    rows = study_rows(record)
    assert len(rows) == len(record["z"]) and all(r["image"].dtype == np.float32 for r in rows)
    json.dumps([{k: v for k, v in r.items() if k != "image"} for r in rows])  # the rest is plain JSON
    back = [slice_of_row(r) for r in rows]
    assert [s.id for s in back] == [s.id for s in study_slices(record)]
    assert all(np.array_equal(a.image, b) for a, b in zip(back, record["image"]))
    few = study_rows(record, keep=3)
    zs = [r["z"] for r in few]
    assert len(few) == 3 and zs[0] == record["z"][0] and zs[-1] == record["z"][-1]  # spread end to end
    assert len(study_rows(record, keep=10_000)) == len(rows)


@pytest.mark.slow
def test_train_then_evaluate_on_nifti_and_dicom_studies(studies_root, tmp_path, monkeypatch):
    import monai_emma.studies as st

    path = _datalist(studies_root, validation=VALIDATION, name="train_eval.json")
    run = tmp_path / "run"
    assert main(["train", "--datalist", str(path), "--output", str(run), *TINY]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["train"] == ["MRI_CT/nifti", "MRI_PET/dicom", "CT_SPECT/nifti"] and split["val"] == ["MRI_SPECT/s1"]
    assert split["validation"] == "the datalist's 'validation' list"
    assert split["counts"]["MRI_PET"]["train"] == 1 and split["counts"]["MRI_SPECT"]["val_slices"] > 10
    assert split["slices"]["MRI_PET/dicom"] == split["counts"]["MRI_PET"]["train_slices"]
    assert (run / "stage1_sensors" / "sensors.pt").is_file() and (run / "stage2_fuser" / "ufuser.pt").is_file()
    assert "val_VIF" in (run / "stage2_fuser" / "history_fuser.csv").read_text().splitlines()[0]
    assert len(list((run / "cache").glob("*.npy"))) == 4

    # the same studies again: all from the cache (here the run's), nothing preprocessed
    monkeypatch.setattr(st, "preprocess_study", lambda *a: pytest.fail("preprocessed a cached study"))
    out = tmp_path / "eval"
    argv = ["evaluate", "--datalist", str(path), "--cache-dir", str(run / "cache"), "--output", str(out)]
    argv += ["--weights", str(run / "stage2_fuser" / "ufuser.pt"), "--methods", "emma,max", "--grid-pairs", "2"]
    assert main([*argv, "--split", str(run / "split.json")]) == 0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(re.fullmatch(r"MRI_SPECT/s1/z\d{3}", r["id"]) for r in rows)
    assert {r["study"] for r in rows} == {"MRI_SPECT/s1"} and {r["method"] for r in rows} == {"emma", "max"}
    assert len(rows) == 2 * split["counts"]["MRI_SPECT"]["val_slices"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"MRI_SPECT", "ALL", "MRI_SPECT/s1"} and summary["root"] == [str(path)]
    assert (out / "grid.png").is_file() and "## MRI_SPECT/s1" in (out / "summary.md").read_text()


@pytest.mark.shared_data
def test_the_shared_volumes_are_checked_in_seconds():
    path = SHARED_DATA / "volumes" / "dataset.json"
    if not path.is_file():
        pytest.skip("../shared/data/volumes is not available")
    studies = load_datalist(path)
    t0 = time.perf_counter()
    check_studies(studies)
    assert time.perf_counter() - t0 < 10
    assert len(studies) == 28 and studies[0].id == "MRI_CT/case2"
    assert {"MRI_CT/case41", "MRI_PET/case41"} <= {s.id for s in studies}  # one case, two pair types
    with pytest.raises(DatalistError, match="no 'validation' list"):
        load_datalist(path, "validation")


@pytest.mark.slow
@pytest.mark.shared_data
def test_shared_nifti_and_phantom_dicom_studies_train_together(studies_root, tmp_path):
    volumes = SHARED_DATA / "volumes"
    if not volumes.is_dir():
        pytest.skip("../shared/data/volumes is not available")
    training = [
        {"mri": str(volumes / "MRI_CT/case21/mri.nii.gz"), "ct": str(volumes / "MRI_CT/case21/ct.nii.gz")},
        {"mri": str(volumes / "MRI_SPECT/case9/mri.nii.gz"), "spect": str(volumes / "MRI_SPECT/case9/spect.nii.gz")},
        {"mri": str(volumes / "MRI_SPECT/case21/mri.nii.gz"), "spect": str(volumes / "MRI_SPECT/case21/spect.nii.gz")},
        {"mri": "dicom/mri", "pet": "dicom/pet", "name": "phantom"},
    ]
    path = _datalist(studies_root, training, name="mixed.json")
    run = tmp_path / "run"
    argv = ["train", "--datalist", str(path), "--output", str(run), "--window", "ct=0,255", *TINY]
    assert main([*argv, "--override", "val_fraction=0.5"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == [
        "MRI_CT/case21",
        "MRI_PET/phantom",
        "MRI_SPECT/case21",
        "MRI_SPECT/case9",
    ]
    assert split["val"] == ["MRI_SPECT/case9"] or split["val"] == ["MRI_SPECT/case21"]  # by study, per pair type
    assert split["options"]["rules"]["ct"][:3] == ["window", 0.0, 255.0]
    assert (run / "stage2_fuser" / "ufuser.pt").is_file()


@pytest.mark.slow
@pytest.mark.shared_data
def test_fine_tuning_v3_on_nifti_and_dicom_studies_keeps_validation_vif(studies_root, tmp_path):
    """``--init v3`` (no stage 1) on shared NIfTI studies plus the phantom's DICOM study, v3's own
    loss and last learning rate: validation VIF within 3 % of v3's on the same slices."""
    from monai_emma.studies import Datalist
    from tests.engines.test_finetune import V3_FINETUNE, assert_one_epoch_keeps_vif

    volumes = SHARED_DATA / "volumes"
    if not volumes.is_dir():
        pytest.skip("../shared/data/volumes is not available")

    def entry(pair, case):
        a, b = pair.lower().split("_")
        return {a: str(volumes / pair / case / f"{a}.nii.gz"), b: str(volumes / pair / case / f"{b}.nii.gz")}

    training = [entry("MRI_CT", "case21"), entry("MRI_SPECT", "case9"), {"mri": "dicom/mri", "pet": "dicom/pet"}]
    validation = [entry("MRI_CT", "case2"), entry("MRI_SPECT", "case21")]
    path = _datalist(studies_root, training, validation, name="finetune.json", intensity={"ct": {"window": [0, 255]}})
    datalist = Datalist(path, cache_dir=tmp_path / "cache")
    train, val, _ = datalist.training_split(V3_FINETUNE.val_fraction, V3_FINETUNE.seed)
    assert_one_epoch_keeps_vif(datalist, train, val, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "split.json").read_text())["train"][-1] == "MRI_PET/dicom"


@pytest.mark.slow
def test_the_bundle_trains_and_evaluates_on_a_datalist(studies_root, tmp_path):
    from tests.test_bundle import CONFIGS, _run

    path = _datalist(studies_root, validation=VALIDATION, name="bundle.json")
    run = tmp_path / "run"
    small = "{'fuser_samples_per_epoch': 16, 'fuser_patch_size': 32, 'fuser_batch_size': 16, 'val_slices': 4}"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train_fuser.json")]
    cmd += ["--datalist", str(path), "--run_dir", str(run), "--epochs", "1", "--overrides", small]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "models" / "model.pt").is_file()
    split = json.loads((run / "models" / "split.json").read_text())
    assert split["datalist"] == str(path) and split["val"] == ["MRI_SPECT/s1"]
    assert len(list((run / "models" / "cache").glob("*.json"))) == 4

    out = tmp_path / "eval"
    _run("evaluate.json", datalist=str(path), output_dir=str(out), methods=["emma", "mean"], grid_pairs=2, device="cpu")
    assert json.loads((out / "summary.json").read_text())["root"] == [str(path)]

    bad = _datalist(tmp_path, [{"mri": str(studies_root / "nifti/mri.nii.gz"), "ct": "gone.nii.gz"}], name="bad.json")
    cmd[cmd.index("--datalist") + 1] = str(bad)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"monai-emma bundle: error: {bad}: training[0]: {tmp_path / 'gone.nii.gz'}: no such file or folder"
    )
