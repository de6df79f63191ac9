import numpy as np
import pytest

from monai_emma.transforms.colour import overlay


def test_overlay_is_grey_below_the_threshold_and_blended_above():
    fused = np.linspace(0, 1, 12).reshape(3, 4)
    functional = np.array([[0.0, 0.1, 0.2, 0.29], [0.3, 0.5, 0.7, 0.9], [1.0, 1.0, 0.0, 0.0]])
    out = overlay(fused, functional, threshold=0.3, opacity=0.5).astype(int)
    below = functional < 0.3
    grey = np.round(fused * 255).astype(int)
    assert (out[below] == grey[below][:, None]).all()
    assert (out[~below] != grey[~below][:, None]).any(axis=1).all()
    solid = overlay(fused, functional, threshold=0.3, opacity=1.0).astype(int)
    assert not (solid[~below] == grey[~below][:, None]).all(axis=1).any()  # opacity 1: the colour only
    assert (overlay(fused, functional, opacity=0.0) == grey[..., None]).all()
    with pytest.raises(ValueError, match="opacity"):
        overlay(fused, functional, opacity=2.0)
