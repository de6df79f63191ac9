"""``monai-emma phantom``: the synthetic head as co-registered MRI, CT, PET and SPECT files."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_emma.cli.base import CLIError, Command

__all__ = ["PhantomCommand"]


class PhantomCommand(Command):
    name = "phantom"
    help = "write the synthetic head as co-registered MRI/CT/PET/SPECT (NIfTI, DICOM)"
    computes = False  # numpy only

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("output", help="folder; gets nifti/<modality>.nii.gz and dicom/<modality>/ series")
        p.add_argument("--format", choices=["nifti", "dicom", "both"], default="both")
        p.add_argument("--head-mm", type=float, default=180.0, help="head width in mm (default 180)")
        p.add_argument(
            "--mri-spacing",
            type=float,
            default=1.0,
            help="MRI voxel size in mm (default 1); every modality's voxels scale with it: CT 0.9 x 0.9 x 2, PET 2.5 "
            "and SPECT 4 times it (2: every modality's voxels twice as large, about 1/8 as many)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true")

    def check(self, args: argparse.Namespace) -> None:
        out = Path(args.output)
        if out.exists() and not out.is_dir():
            raise CLIError(f"{out}: is a file; phantom writes a folder")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise CLIError(f"{out}: folder exists and is not empty (use --overwrite)")
        if not args.mri_spacing > 0 or not args.head_mm > 0:
            raise CLIError("--mri-spacing and --head-mm must be positive")

    def run(self, args: argparse.Namespace) -> int:
        from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

        out = Path(args.output)
        kwargs = {"seed": args.seed, "head_mm": args.head_mm, "mri_spacing": args.mri_spacing}
        written = {}
        if args.format in ("nifti", "both"):
            written.update({f"{m} (NIfTI)": p for m, p in write_phantom_nifti(out / "nifti", **kwargs).items()})
        if args.format in ("dicom", "both"):
            written.update({f"{m} (DICOM)": p for m, p in write_phantom_dicom(out / "dicom", **kwargs).items()})
        for name, path in written.items():
            print(f"wrote {name}: {path}")
        return 0
