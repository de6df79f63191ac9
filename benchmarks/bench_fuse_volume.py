"""End-to-end volume fusion throughput: a 256x256x128 MRI (1 mm) with a 2 mm PET on another grid.

Times ``monai-emma fuse``'s path in-process: read both NIfTI files, scale, resample the PET onto
the MRI grid, fuse every axial slice in batches, write the fused NIfTI. Reports slices per second
(median of repeats) and a breakdown of one run by stage.

Examples::

    python benchmarks/bench_fuse_volume.py                       # CPU, batch sizes 1, 4, 8, 16
    python benchmarks/bench_fuse_volume.py --device cuda --amp   # GPU, mixed precision
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_inputs(folder: Path, shape=(256, 256, 128), pet_spacing: float = 2.0) -> tuple[Path, Path]:
    """Phantom MRI on a 1 mm grid and PET on a rotated, shifted ``pet_spacing`` grid, as NIfTI."""
    import nibabel as nib
    from scipy import ndimage

    from monai_emma.data.phantom import PHANTOM_LABELS, phantom_labels

    head = 0.8 * shape[0]
    mri_aff = np.eye(4)
    mri_aff[:3, 3] = -(np.asarray(shape) - 1) / 2.0
    labels = phantom_labels(shape, mri_aff, head_mm=head)
    t1 = {"scalp": 900, "skull": 100, "csf": 200, "grey_matter": 600, "white_matter": 800, "ventricles": 200}
    mri = np.zeros(shape, np.float32)
    for name, value in {**t1, "lesion": 1000}.items():
        mri[labels == PHANTOM_LABELS[name]] = value
    mri += np.random.default_rng(0).normal(0, 15, shape).astype(np.float32)
    pet_shape = tuple(int(np.ceil(n * 1.2 / pet_spacing)) for n in shape)
    angle = np.deg2rad(5)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    pet_aff = np.eye(4)
    pet_aff[:3, :3] = rot * pet_spacing
    pet_aff[:3, 3] = -rot @ ((np.asarray(pet_shape) - 1) / 2.0 * pet_spacing) + [1.3, -0.7, 2.1]
    pet_labels = phantom_labels(pet_shape, pet_aff, head_mm=head)
    uptake = {"scalp": 1.0, "csf": 0.5, "grey_matter": 8.0, "white_matter": 3.0, "ventricles": 0.5, "lesion": 15.0}
    pet = np.zeros(pet_shape, np.float32)
    for name, value in uptake.items():
        pet[pet_labels == PHANTOM_LABELS[name]] = value
    pet = ndimage.gaussian_filter(pet, 6.0 / 2.355 / pet_spacing)
    paths = folder / "mri.nii.gz", folder / "pet.nii.gz"
    nib.save(nib.Nifti1Image(mri, mri_aff), str(paths[0]))
    nib.save(nib.Nifti1Image(pet.astype(np.float32), pet_aff), str(paths[1]))
    return paths


def run_once(mri: Path, pet: Path, out: Path, net, device: str, batch: int, amp: bool) -> dict[str, float]:
    """One end-to-end fusion with a per-stage breakdown: the pipeline ``fuse_volumes`` runs (read,
    scale, resample, reorient; fuse; post-process and back to the file's voxel order; write)."""
    from monai_emma.fusion import fusion_postprocessing, fusion_preprocessing
    from monai_emma.inferers import FusionInferer
    from monai_emma.io.dictionary import result_from_data
    from monai_emma.io.nifti import save_nifti_like

    t = {"start": time.perf_counter()}
    pre = fusion_preprocessing()
    d = pre({"anatomical": str(mri), "other": str(pet), "modality": "pet"})
    t["read+scale+resample"] = time.perf_counter()
    inferer = FusionInferer(sw_batch_size=batch, amp=amp, sw_device=device, device="cpu")
    d["pred"] = inferer(d["image"][None], net)[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t["fuse"] = time.perf_counter()
    result = result_from_data(fusion_postprocessing(pre)(d))
    t["post"] = time.perf_counter()
    save_nifti_like(result.fused, result.anatomical, out, overwrite=True)
    t["write"] = time.perf_counter()
    keys = list(t)
    return {k: t[k] - t[p] for p, k in zip(keys, keys[1:])} | {"total": t["write"] - t["start"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--slices", type=int, default=128)
    args = parser.parse_args()

    from monai_emma.fusion import fuse_volumes
    from monai_emma.model_source import resolve_fuser

    net, _ = resolve_fuser()
    net = net.to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mri, pet = make_inputs(folder, shape=(256, 256, args.slices))
        print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} amp={args.amp}")
        print(f"MRI 256x256x{args.slices} @ 1 mm, PET {2.0} mm rotated 5 deg; times in seconds")
        # warm-up (merged weights, allocator, first reads)
        fuse_volumes(mri, pet, model=net, modality="pet", device=args.device, batch_size=8)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            out = folder / "f.nii.gz"
            runs = [run_once(mri, pet, out, net, args.device, batch, args.amp) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            parts = " ".join(f"{k}={v:.2f}" for k, v in med.items())
            print(f"batch {batch:>2}: {args.slices / med['total']:.1f} slices/s end to end | {parts}")


if __name__ == "__main__":
    main()
