"""monai-emma: EMMA (Equivariant Multi-Modality Image Fusion) as a MONAI plugin."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
BUNDLE_MODELS = HERE / "bundles" / "emma" / "models"


class BuildWithBundleModels(build_py):
    """Put the EMMA bundle's default weights (``bundles/emma/models/*.pt``, the one copy in the
    repository) into the wheel as ``monai_emma/weights/bundle_models``, so that an installed
    package has its default weights without the bundle folder."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "monai_emma" / "weights" / "bundle_models"
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(BUNDLE_MODELS.glob("*.pt")):
            shutil.copy2(f, target / f.name)


TRACKING = ["mlflow>=3.0", "psutil>=5.9"]  # psutil: MLflow system metrics
# ray[default]: the dashboard and job server behind `ray start --head` and `ray job submit`
DISTRIBUTED = ["ray[default,train,data]>=2.40"]
# rigid/affine registration of separate studies before fusion (--register)
REGISTRATION = ["SimpleITK>=2.3"]
# ONNX export of the U-Fuser, and ONNX Runtime to run or check it
EXPORT = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"]

setup(
    name="monai-emma",
    version="0.2.0",
    description="EMMA multi-modality medical image fusion (MRI with CT, PET, SPECT) for MONAI",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["monai_emma", "monai_emma.*"]),
    include_package_data=True,
    package_data={"monai_emma": ["weights/*.pt", "weights/*.json", "viewer/*.html"]},
    cmdclass={"build_py": BuildWithBundleModels},
    install_requires=[
        "torch>=2.4",
        "monai[nibabel,pydicom,ignite,fire]>=1.4",
        "nibabel>=5.0",
        "pydicom>=2.4",
        "numpy>=1.24",
        "pillow>=10.0",
        "PyWavelets>=1.5",
        "tqdm>=4.60",
        "opencv-python-headless>=4.8",
        "pynrrd>=1.0",  # NRRD volumes (MONAI's NrrdReader)
        # compressed DICOM (JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE) through pydicom's
        # plugins; BSD-licensed, unlike pylibjpeg-libjpeg (GPL-3.0), which only 12-bit JPEG Extended needs
        "python-gdcm>=3.0",
    ],
    extras_require={
        "tracking": TRACKING,
        "distributed": DISTRIBUTED,
        "registration": REGISTRATION,
        "export": EXPORT,
        "all": TRACKING + DISTRIBUTED + REGISTRATION + EXPORT,
        # 12-bit JPEG Extended DICOM (GPL-3.0 decoder): not part of [all]
        "jpeg12": ["pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"],
        "dev": TRACKING
        + DISTRIBUTED
        + REGISTRATION
        + EXPORT
        + [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.5",
            # the literature's reference evaluator, timed by benchmarks/bench_metrics.py
            "scikit-image>=0.22",
            "scikit-learn>=1.3",
            # drives the OS's Chromium in the viewer's browser tests (they skip without Chromium)
            "playwright>=1.40",
        ],
    },
    entry_points={"console_scripts": ["monai-emma=monai_emma.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
