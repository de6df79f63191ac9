import numpy as np
import pytest

from monai_emma.data.phantom import phantom_slice_pair


@pytest.mark.parametrize("modality", ["ct", "pet", "spect"])
def test_phantom_pair(modality):
    mri, other = phantom_slice_pair(96, modality, seed=3)
    assert mri.shape == other.shape == (96, 96)
    assert mri.dtype == np.float32 and 0 <= mri.min() and mri.max() <= 1
    assert other.max() > 0.5  # bone (CT) or the hot lesion (PET/SPECT)
    again = phantom_slice_pair(96, modality, seed=3)
    assert np.array_equal(again[0], mri) and np.array_equal(again[1], other)


def test_ct_shows_bone_mri_does_not():
    mri, ct = phantom_slice_pair(128, "ct")
    ring = ct > 0.8
    assert ring.any() and mri[ring].mean() < 0.3


def test_unknown_modality():
    with pytest.raises(ValueError, match="unknown modality"):
        phantom_slice_pair(32, "xray")
