"""Shared fixtures: a tiny synthetic Harvard-style dataset, and the optional shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config) -> None:
    """Under pytest-xdist (two workers), one torch thread per worker: the workers share the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def write_phantom_dataset(root: Path, size: int = 64, n: int = 4, modalities=("CT", "PET")) -> Path:
    from monai_emma.data.phantom import write_phantom_pairs

    return write_phantom_pairs(root, size=size, n=n, modalities=modalities)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom_pairs"))


@pytest.fixture(scope="session")
def second_root(tmp_path_factory) -> Path:
    """Another Harvard-style root (MRI-CT and MRI-SPECT, 3 pairs each) for multi-root training."""
    return write_phantom_dataset(tmp_path_factory.mktemp("more") / "more", n=3, modalities=("CT", "SPECT"))


@pytest.fixture(scope="session")
def one_type_root(tmp_path_factory) -> Path:
    """One pair type (MRI-CT) of 7 pairs: the default split leaves one validation slice."""
    return write_phantom_dataset(tmp_path_factory.mktemp("one_type") / "ct7", n=7, modalities=("CT",))


def _shared(name: str) -> Path:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"../shared/data/{name} is not available")
    return root


@pytest.fixture(scope="session")
def harvard_root() -> Path:
    return _shared("harvard")


@pytest.fixture(scope="session")
def ivf_root() -> Path:
    return _shared("ivf")


class PickChannel:
    """A stand-in fuser that returns one input channel: makes geometry visible in tests."""

    def __init__(self, channel: int) -> None:
        self.channel = channel

    def __call__(self, x):
        return x[:, self.channel : self.channel + 1]


@pytest.fixture(scope="session")
def phantom_volume_files(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The 3D phantom (small head) as NIfTI files and DICOM series: ``{"nifti": {...}, "dicom": {...}}``."""
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    root = tmp_path_factory.mktemp("phantom_volumes")
    return {
        "nifti": write_phantom_nifti(root / "nifti", head_mm=48.0),
        "dicom": write_phantom_dicom(root / "dicom", head_mm=48.0),
    }


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A randomly initialised U-Fuser's state dict (seed 0) as a file: fast, deterministic weights
    for CLI tests that check plumbing, not quality."""
    import torch

    from monai_emma.networks import UFuser

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "ufuser.pt"
    torch.save(UFuser().state_dict(), path)
    return path
