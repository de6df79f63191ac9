"""PET in body-weight SUV from the DICOM headers: a synthetic series whose SUV is known by
construction (values, dose, weight, times, per-slice rescale slopes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_emma.fusion import FusionError, fuse_volumes, fusion_preprocessing
from monai_emma.io.suv import SUVError, suv_info
from tests.conftest import PickChannel

WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 72.5, 3.7e8, 6586.2  # F-18
INJECTION, SERIES = "101500.00", "112000.00"  # 65 minutes of decay


def _suv_volume(shape=(16, 16, 6)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    suv = np.clip(3.0 - 2.0 * (x**2 + y**2 + 0.3 * z**2), 0, None) * 1.5
    suv[4:7, 4:7, :] += np.linspace(2.0, 9.0, shape[2])  # a lesion, hotter in every slice
    return suv


def write_pet_series(folder: Path, suv: np.ndarray, drop: str | None = None, **changes) -> Path:
    """One file per slice, Bq/ml stored as uint16 with its own RescaleSlope."""
    folder.mkdir(parents=True, exist_ok=True)
    decay_s = 65 * 60
    bqml = suv * DOSE_BQ * 2.0 ** (-decay_s / HALF_LIFE_S) / (WEIGHT_KG * 1000.0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(suv.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "PT", study, series, frame
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = suv.shape[1], suv.shape[0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 3.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        slab = bqml[:, :, k].T  # file row r, column c = array[c, r]
        slope = float(slab.max()) / 65000.0 if slab.max() > 0 else 1.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.round(slab / float(ds.RescaleSlope)).astype(np.uint16).tobytes()
        ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", WEIGHT_KG
        ds.SeriesDate, ds.SeriesTime, ds.AcquisitionTime = "20260301", SERIES, SERIES
        radio = pydicom.Dataset()
        radio.RadionuclideTotalDose, radio.RadionuclideHalfLife = DOSE_BQ, HALF_LIFE_S
        radio.RadiopharmaceuticalStartTime = INJECTION
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
        for key, value in changes.items():
            setattr(ds, key, value)
        if drop:
            delattr(ds, drop) if drop in ds else delattr(ds.RadiopharmaceuticalInformationSequence[0], drop)
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def test_suv_equals_the_construction(tmp_path):
    suv = _suv_volume()
    pet = write_pet_series(tmp_path / "pet", suv)
    d = fusion_preprocessing(suv="on").transforms[0]({"anatomical": pet, "other": pet, "modality": "pet"})
    d = fusion_preprocessing(suv="on").transforms[1](d)
    info = d["suv"]
    assert info.decay_minutes == pytest.approx(65.0) and d["other_units"] == "SUVbw"
    got = np.asarray(d["other"])[0]
    # every slice, with its own rescale slope, gives the SUV it was made from (uint16 rounding aside)
    for k in range(suv.shape[2]):
        tolerance = suv[:, :, k].max() / 65000.0 * 0.51 + 1e-6
        np.testing.assert_allclose(got[:, :, k], suv[:, :, k], rtol=1e-4, atol=tolerance)
        assert got[:, :, k].max() == pytest.approx(suv[:, :, k].max(), rel=1e-4)


def test_fusion_in_suv_records_it_and_windows_in_suv(tmp_path):
    suv = _suv_volume()
    pet = write_pet_series(tmp_path / "pet", suv)
    from monai_emma.transforms.intensity import IntensityRule

    res = fuse_volumes(pet, pet, model=PickChannel(1), modality="pet", other_rule=IntensityRule("window", 0, 8))
    assert res.other_units == "SUVbw" and any("body-weight SUV" in n for n in res.notes)  # automatic
    expect = np.clip(suv / 8.0, 0, 1)  # a window of 0-8 SUV
    assert np.abs(np.sort(res.other_scaled.ravel()) - np.sort(expect.ravel())).max() < 1e-3
    from monai_emma.io.outputs import write_fusion

    out = tmp_path / "fused.nii.gz"
    write_fusion(res, out)
    import nibabel as nib

    assert b"SUVbw" in nib.load(str(out)).header["descrip"].tobytes()
    from monai_emma.fidelity import fidelity_report

    assert fidelity_report(res).as_dict()["units"] == {"pet": "SUVbw"}  # the report records it too
    off = fuse_volumes(pet, pet, model=PickChannel(1), modality="pet", suv="off")
    assert off.other_units == ""


@pytest.mark.parametrize(
    "drop,changes,message",
    [
        ("PatientWeight", {}, "PatientWeight missing"),
        ("RadionuclideTotalDose", {}, "RadionuclideTotalDose missing"),
        ("RadiopharmaceuticalStartTime", {}, "RadiopharmaceuticalStartTime"),
        (None, {"Units": "CNTS"}, "Units is 'CNTS', not BQML"),
        (None, {"DecayCorrection": "NONE"}, "DecayCorrection is 'NONE'"),
        (None, {"PatientWeight": 0}, "PatientWeight is"),
    ],
)
def test_missing_or_inconsistent_tags(drop, changes, message, tmp_path):
    pet = write_pet_series(tmp_path / "pet", _suv_volume((8, 8, 3)), drop=drop, **changes)
    with pytest.raises(FusionError, match=f"pet: no SUV: {message}"):
        fuse_volumes(pet, pet, model=PickChannel(1), modality="pet", suv="on")
    res = fuse_volumes(pet, pet, model=PickChannel(1), modality="pet")  # automatic: a note, percentiles
    assert res.other_units == "" and any("not converted to SUV" in n and message.split()[0] in n for n in res.notes)


def test_suv_info_needs_pet():
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    with pytest.raises(SUVError, match="not PT"):
        suv_info([ds])


def test_overlay_threshold_defaults_to_suv_2_5(tmp_path):
    import nibabel as nib

    from monai_emma.io.outputs import OverlayStyle, write_fusion

    suv = _suv_volume()
    pet = write_pet_series(tmp_path / "pet", suv)
    res = fuse_volumes(pet, pet, model=PickChannel(0), modality="pet")
    files = write_fusion(res, tmp_path / "f.nii.gz", overlay=OverlayStyle(), preview=tmp_path / "p.png")
    rgb = np.asarray(nib.load(str(files["overlay"])).dataobj)
    rgb = np.stack([rgb["R"], rgb["G"], rgb["B"]], -1).astype(int)
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    suv_on_grid = res.other_scaled * (res.other_scale[1] - res.other_scale[0]) + res.other_scale[0]
    assert grey[suv_on_grid < 2.4].all()  # below SUV 2.5: the grey fusion only
    assert not grey[(suv_on_grid > 2.6) & (res.other_scaled < 0.9)].any()  # above: colour (hot ends in white)
    assert files["preview"].is_file()


def test_cli_suv_errors_in_one_line_and_writes_nothing(tmp_path, capsys):
    from monai_emma.cli import main

    pet = write_pet_series(tmp_path / "pet", _suv_volume((8, 8, 3)), drop="PatientWeight")
    out = tmp_path / "out.nii.gz"
    assert main(["fuse", str(pet), str(pet), "-o", str(out), "--modality", "pet", "--suv", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no SUV: PatientWeight missing" in err and not out.exists()


def test_the_sample_pet_is_a_body_weight_suv_study(phantom_volume_files, tmp_path):
    """The documented example runs on the shipped sample: its PET DICOM carries the tags of a
    real SUV study, and --suv gives back the phantom's uptake in SUV."""
    from monai_emma.cli import main

    dicom, nifti = phantom_volume_files["dicom"], phantom_volume_files["nifti"]
    out = tmp_path / "fused.nii.gz"
    assert (
        main(["fuse", str(dicom["mri"]), str(dicom["pet"]), "-o", str(out), "--suv", "--window", "0,8", "--quiet"]) == 0
    )
    from monai_emma.io.suv import suv_info
    from monai_emma.io.volumes import read_volume

    pet = read_volume(dicom["pet"])
    info = suv_info(pet.headers)
    assert info.weight_kg == 70 and info.decay_correction == "START"
    import nibabel as nib

    suv = nib.load(str(nifti["pet"])).get_fdata()
    assert np.abs(pet.array * info.factor - suv).max() < 1e-3 * suv.max()
