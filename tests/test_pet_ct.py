"""PET/CT and SPECT/CT: the CT as the anatomical base, its windows, and how modalities are told."""

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_emma.cli import main
from monai_emma.fusion import fuse_volumes
from monai_emma.io.volumes import guess_modality, read_volume
from monai_emma.networks import UFuser
from monai_emma.transforms.intensity import CT_WINDOWS, ct_window


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UFuser().eval()


def test_ct_window_presets_and_ranges():
    assert ct_window("brain").low == 0 and ct_window("brain").high == 80
    assert ct_window("Soft_Tissue") == ct_window("soft-tissue")
    assert ct_window("-1350:150") == ct_window("lung")
    assert set(CT_WINDOWS) >= {"head", "brain", "soft-tissue", "lung", "bone"}
    with pytest.raises(ValueError, match="expected a window preset"):
        ct_window("liver-ish")
    with pytest.raises(ValueError, match="LOW must be below HIGH"):
        ct_window("300,-100")


def test_dicom_ct_is_the_anatomical_base(phantom_volume_files, net, tmp_path, capsys):
    dicom = phantom_volume_files["dicom"]
    result = fuse_volumes(dicom["ct"], dicom["pet"], model=net, precision="fp32")
    assert result.anatomical_modality == "ct" and result.modality == "pet"
    assert any("anatomical image CT (DICOM Modality CT)" in n for n in result.notes)
    hu = read_volume(dicom["ct"]).array
    # the head window (-100..300 HU) scaled the CT, on its own grid
    np.testing.assert_allclose(result.anatomical_scaled, np.clip((hu + 100) / 400, 0, 1), atol=1e-5)
    # the brain window is one option away, and changes only the CT's scaling
    out = tmp_path / "brain.nii.gz"
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    args = ["fuse", str(dicom["ct"]), str(dicom["pet"]), "-o", str(out), "--weights", str(weights), "--quiet"]
    assert main([*args, "--anatomical-window", "brain", "--precision", "fp32"]) == 0
    assert "CT + PET" in str(nib.load(str(out)).header["descrip"].astype(str))
    assert main([*args[:4], str(tmp_path / "bad.nii.gz"), *args[5:], "--anatomical-window", "liver"]) == 2
    assert "--anatomical-window 'liver': expected a window preset" in capsys.readouterr().err


def test_nifti_ct_base_by_hounsfield_values_and_override(phantom_volume_files, net, tmp_path):
    nifti = phantom_volume_files["nifti"]
    ct = tmp_path / "head.nii.gz"  # a name that says nothing
    shutil.copy(nifti["ct"], ct)
    result = fuse_volumes(ct, nifti["spect"], model=net, precision="fp32")
    assert result.anatomical_modality == "ct" and result.modality == "spect"
    assert any("Hounsfield" in n and "--anatomical-modality mri" in n for n in result.notes)
    forced = fuse_volumes(ct, nifti["spect"], model=net, precision="fp32", anatomical_modality="mri")
    assert forced.anatomical_modality == "mri"
    assert not np.allclose(forced.anatomical_scaled, result.anatomical_scaled)


def test_spect_told_by_its_file_name_and_the_note_says_how(phantom_volume_files, tmp_path):
    nifti = phantom_volume_files["nifti"]
    spect = read_volume(nifti["spect"])
    assert guess_modality(spect)[0] == "spect" and "file name" in guess_modality(spect)[1]
    unnamed = tmp_path / "study_2.nii.gz"
    shutil.copy(nifti["spect"], unnamed)
    modality, how = guess_modality(read_volume(unnamed))
    assert modality == "pet" and "--modality spect" in how
    both = tmp_path / "pet_spect.nii.gz"  # two words: no guess from the name
    shutil.copy(nifti["spect"], both)
    assert "file name" not in guess_modality(read_volume(both))[1]
