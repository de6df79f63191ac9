"""Study inputs named by URI: passed through the datalist untouched, read through pyarrow's
filesystems where the study is preprocessed (tested with file:// URIs: the same code path as s3://)."""

import json
import shutil

import numpy as np
import pytest

from monai_emma.data.datalist import DatalistError, Study, load_datalist
from monai_emma.io.remote import RemoteReadError, is_uri, local_copy, uri_fingerprint
from monai_emma.studies import StudyCache, StudyOptions, check_studies, preprocess_study


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    root = tmp_path_factory.mktemp("remote")
    write_phantom_nifti(root / "nifti", head_mm=48.0, mri_spacing=3.0)
    write_phantom_dicom(root / "dicom", head_mm=48.0, mri_spacing=3.0, modalities=("mri",))
    return root


def test_uris_are_told_from_paths():
    assert is_uri("s3://bucket/a.nii.gz") and is_uri("gs://b/x") and is_uri("file:///tmp/x")
    assert not is_uri("/tmp/s3://x") and not is_uri("relative/a.nii.gz") and not is_uri("C:\\data\\a.nii")


def test_local_copy_of_a_file_and_of_a_dicom_folder(phantom):
    src = phantom / "nifti" / "mri.nii.gz"
    with local_copy(src.as_uri()) as path:
        assert path.name == "mri.nii.gz" and path.read_bytes() == src.read_bytes()
        kept = path
    assert not kept.exists()  # removed on exit
    series = phantom / "dicom" / "mri"
    with local_copy(series.as_uri()) as path:
        assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in series.iterdir())


def test_a_missing_uri_is_one_line_naming_it(tmp_path):
    uri = (tmp_path / "gone.nii.gz").as_uri()
    with pytest.raises(RemoteReadError, match=rf"^{uri}: no such file or folder$"):
        with local_copy(uri):
            pass


def test_the_fingerprint_follows_the_content(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1234")
    before = uri_fingerprint(f.as_uri())
    f.write_bytes(b"123456")
    assert uri_fingerprint(f.as_uri()) != before


def test_a_datalist_passes_cloud_uris_through_untouched(tmp_path, phantom):
    mri = str(phantom / "nifti" / "mri.nii.gz")
    entries = [
        {"mri": "s3://bucket/studies/case 7/mri.nii.gz", "pet": "gs://other/case7/pet"},
        {"mri": mri, "ct": (phantom / "nifti" / "ct.nii.gz").as_uri()},
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    s3, local = load_datalist(tmp_path / "dataset.json")
    assert s3.anatomical == "s3://bucket/studies/case 7/mri.nii.gz" and s3.other == "gs://other/case7/pet"
    assert s3.name == "case 7" and local.other.startswith("file://")
    back = Study.from_entry(json.loads(json.dumps(s3.to_entry())))  # what a Ray Data row carries
    assert back == s3
    check_studies([s3])  # headers of URIs are read where the study is preprocessed, not here
    # a local path that is missing is still refused at once
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"mri": "nope.nii.gz", "ct": mri}]}))
    with pytest.raises(DatalistError, match="nope.nii.gz: no such file"):
        load_datalist(tmp_path / "dataset.json")


def test_a_study_read_by_uri_is_the_study_read_by_path(tmp_path, phantom):
    mri, ct = phantom / "nifti" / "mri.nii.gz", phantom / "nifti" / "ct.nii.gz"
    (tmp_path / "dataset.json").write_text(
        json.dumps({"training": [{"mri": str(mri), "ct": str(ct)}, {"mri": mri.as_uri(), "ct": ct.as_uri()}]})
    )
    by_path, by_uri = load_datalist(tmp_path / "dataset.json")
    a, b = preprocess_study(by_path), preprocess_study(by_uri)
    assert a["image"].shape == b["image"].shape and np.array_equal(a["image"], b["image"])
    assert b["study"]["anatomical"] == mri.as_uri()
    cache = StudyCache(tmp_path / "cache")
    stored = cache.store(by_uri, StudyOptions(), b)
    assert np.array_equal(cache.load(by_uri, StudyOptions())["image"], stored["image"])


def test_a_uri_that_vanished_is_reported_with_its_entry(tmp_path, phantom):
    ct = tmp_path / "ct.nii.gz"
    shutil.copy(phantom / "nifti" / "ct.nii.gz", ct)
    entry = {"mri": (phantom / "nifti" / "mri.nii.gz").as_uri(), "ct": ct.as_uri()}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry]}))
    (study,) = load_datalist(tmp_path / "dataset.json")
    ct.unlink()
    with pytest.raises(DatalistError, match=rf"training\[0\] \(MRI_CT/nifti\): {ct.as_uri()}: no such file"):
        preprocess_study(study)
