"""monai-emma: EMMA (Equivariant Multi-Modality Image Fusion) as a MONAI plugin."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="monai-emma",
    version="0.1.0",
    description="EMMA multi-modality medical image fusion (MRI with CT, PET, SPECT) for MONAI",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["monai_emma", "monai_emma.*"]),
    include_package_data=True,
    package_data={"monai_emma": ["weights/*.pt", "weights/*.json"]},
    install_requires=[
        "torch>=2.4",
        "monai[nibabel,pydicom,ignite,fire]>=1.4",
        "nibabel>=5.0",
        "pydicom>=2.4",
        "ray[train]>=2.40",
        "mlflow>=3.0",
        "numpy>=1.24",
        "pillow>=10.0",
        "scikit-image>=0.22",
        "PyWavelets>=1.5",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "psutil>=5.9",  # MLflow system metrics in the Ray pipeline
        "opencv-python-headless>=4.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "ruff>=0.5",
        ],
    },
    entry_points={"console_scripts": ["monai-emma=monai_emma.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
