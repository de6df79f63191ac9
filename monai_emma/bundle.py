"""Components for the EMMA MONAI bundle (``bundles/emma``), referenced from its configs by ``_target_``.

The bundle holds configuration and weights only; everything it runs lives here and in the
package, so ``monai-emma fuse``, ``monai-emma train``, the bundle and the Ray pipeline share one
code path:

* :func:`bundle_root`: the bundle folder, whatever the working directory;
* :func:`sample_dataset`, :func:`fusion_jobs`, :class:`BundleInference`: inference on volumes
  (NIfTI files, DICOM series) or 2D pair folders, with a generated sample by default;
* :func:`stage_trainer`: a stage-1 or stage-2 MONAI trainer from the training engine;
* :func:`load_weights`, :func:`export_pt2`: checkpoints in and out.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "bundle_root",
    "sample_dataset",
    "FusionJob",
    "fusion_jobs",
    "BundleInference",
    "training_root",
    "stage_trainer",
    "load_weights",
    "export_pt2",
]

logger = logging.getLogger("monai_emma.bundle")

ANATOMICAL_NAMES = ("mri", "mr", "t1", "t2", "flair", "anat")
OTHER_NAMES = {"ct": "ct", "pet": "pet", "pt": "pet", "spect": "spect", "nm": "spect"}


def bundle_root() -> str:
    """The folder of the bundle being run, so configs can resolve paths relative to it.

    Order: the ``config_root_path`` of the MONAI workflow running this config (found on the call
    stack: ``python -m monai.bundle run`` and ``monai.bundle.run`` alike), then ``--config_file``
    on the command line, then ``./configs/metadata.json`` in the working directory, then the
    ``bundles/emma`` folder beside this package (a source checkout).
    """
    for frame in inspect.stack(context=0):
        owner = frame.frame.f_locals.get("self")
        # the instance dict, not getattr: ConfigWorkflow maps unknown attributes to config ids
        root = getattr(owner, "__dict__", {}).get("config_root_path")
        if root is not None:
            root = Path(root).resolve()
            return str(root.parent if root.name == "configs" else root)
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else None
        if arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            cfg_dir = Path(first).resolve().parent
            return str(cfg_dir.parent if cfg_dir.name == "configs" else cfg_dir)
    if (Path.cwd() / "configs" / "metadata.json").is_file():
        return str(Path.cwd())
    return str(Path(__file__).resolve().parents[1] / "bundles" / "emma")


def sample_dataset(dataset_dir: str | None, output_dir: str, spacing: float = 2.0, seed: int = 0) -> str:
    """``dataset_dir`` when given; otherwise the phantom head written once (NIfTI and DICOM) to
    ``<output_dir>/sample`` at ``spacing`` mm."""
    if dataset_dir:
        if not Path(dataset_dir).exists():
            raise FileNotFoundError(f"{dataset_dir}: no such dataset folder")
        return str(dataset_dir)
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    root = Path(output_dir) / "sample"
    if not (root / "nifti" / "mri.nii.gz").is_file():
        write_phantom_nifti(root / "nifti", seed=seed, mri_spacing=spacing)
        write_phantom_dicom(root / "dicom", seed=seed, mri_spacing=spacing)
        logger.info("wrote the phantom sample to %s", root)
    return str(root)


@dataclass(frozen=True)
class FusionJob:
    """One fusion to run: an anatomical input, a second modality, and the output name."""

    name: str
    anatomical: str
    other: str
    modality: str | None
    kind: str  # "volume" or "slices"


def _entry_name(p: Path) -> str:
    name = p.name.lower()
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _volume_entries(folder: Path) -> list[Path]:
    from monai_emma.io.volumes import _is_dicom_file

    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
            out.append(p)
        elif p.is_dir() and any(_is_dicom_file(f) for f in list(p.iterdir())[:5] if f.is_file()):
            out.append(p)
    return out


def fusion_jobs(dataset_dir: str | os.PathLike) -> list[FusionJob]:
    """The fusions a dataset folder asks for.

    * Volumes: in ``dataset_dir`` and each sub-folder, an anatomical entry (a NIfTI file or DICOM
      series folder named ``mri``, ``t1``, ``t2``…) is fused with each sibling named ``ct``,
      ``pet``/``pt`` or ``spect``/``nm``; the job is named ``<folder>_<modality>``.
    * 2D slices: Harvard-style pair folders (``<PAIR>/<MOD>/<n>.png``), one job per pair.

    Raises:
        FileNotFoundError: nothing to fuse.
    """
    from monai_emma.data.pairs import PairDataError, find_pairs

    root = Path(dataset_dir)
    jobs: list[FusionJob] = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        entries = _volume_entries(folder)
        anat = [e for e in entries if _entry_name(e).startswith(ANATOMICAL_NAMES)]
        for a in anat[:1]:
            for e in entries:
                modality = OTHER_NAMES.get(_entry_name(e))
                if modality:
                    jobs.append(FusionJob(f"{folder.name}_{modality}", str(a), str(e), modality, "volume"))
    if not jobs:
        try:
            pairs = find_pairs(root)
        except PairDataError:
            pairs = []
        jobs = [
            FusionJob(f"{p.pair}/{p.stem}", str(p.a), str(p.b), p.b_modality, "slices") for p in pairs if p.b_modality
        ]
    if not jobs:
        raise FileNotFoundError(f"{root}: nothing to fuse (no mri + ct/pet/spect volumes, no 2D pair folders)")
    return jobs


class BundleInference:
    """Fuse every job of a dataset folder and write the results (what ``inference.json`` runs).

    Volumes give ``<output_dir>/<name>.nii.gz`` (on the anatomical grid), a colour rendering
    ``<name>_colour.nii.gz`` for PET/SPECT and a ``<name>_preview.png`` montage; 2D pairs give
    ``<output_dir>/<PAIR>/<stem>.png`` like ``monai-emma fuse-folder`` and one
    ``<PAIR>_preview.png`` per pair folder. A ``summary.json`` lists what was written.

    Args:
        network: the fuser (e.g. from :func:`load_weights`).
        dataset_dir: see :func:`fusion_jobs`.
        output_dir: created if needed.
        device: where the network runs.
        batch_size: slices per network call (default: 4 on CPU, 16 on CUDA).
        amp: mixed precision on CUDA.
        colormap: colour map of the PET/SPECT renderings (``None``: none).
        stretch: min-max stretch each fused slice (the papers' protocol).
        progress: progress bars.
        zero_empty: the fused image is 0 where both inputs are (no halo in empty background).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataset_dir: str,
        output_dir: str,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        amp: bool = False,
        colormap: str | None = "jet",
        stretch: bool = False,
        progress: bool = True,
        zero_empty: bool = True,
    ) -> None:
        self.network, self.dataset_dir, self.output_dir = network, dataset_dir, Path(output_dir)
        self.zero_empty = zero_empty
        self.device, self.batch_size, self.amp = torch.device(device), batch_size, amp
        self.colormap, self.stretch, self.progress = colormap, stretch, progress

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        from monai_emma.fusion import fuse_images, fuse_volumes
        from monai_emma.io.outputs import write_fusion
        from monai_emma.io.png import save_montage

        jobs = fusion_jobs(self.dataset_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = []
        previews: dict[str, list] = {}
        for job in tqdm(jobs, desc="fuse", disable=not self.progress):
            if job.kind == "volume":
                res = fuse_volumes(
                    job.anatomical,
                    job.other,
                    model=self.network,
                    modality=job.modality,
                    device=self.device,
                    batch_size=self.batch_size,
                    amp=self.amp,
                    stretch=self.stretch,
                    zero_empty=self.zero_empty,
                )
                colour = self.colormap if job.modality in ("pet", "spect") else None
                files = write_fusion(
                    res,
                    self.output_dir / f"{job.name}.nii.gz",
                    colormap=colour,
                    preview=self.output_dir / f"{job.name}_preview.png",
                    overwrite=True,
                )
            else:
                net, dev = self.network, self.device
                res = fuse_images(
                    job.anatomical, job.other, model=net, device=dev, stretch=self.stretch, zero_empty=self.zero_empty
                )
                files = write_fusion(res, self.output_dir / f"{job.name}.png", overwrite=True)
                rows = previews.setdefault(job.name.split("/")[0], [])
                if len(rows) < 4:
                    rows.append([res.anatomical_scaled, res.other_scaled, res.fused])
            records.append({**asdict(job), "seconds": round(res.seconds, 3), **{k: str(v) for k, v in files.items()}})
        for pair, rows in previews.items():
            path = save_montage(rows, self.output_dir / f"{pair}_preview.png", titles=["anatomical", "other", "fused"])
            records.append({"name": f"{pair} preview", "preview": str(path)})
        (self.output_dir / "summary.json").write_text(json.dumps(records, indent=1))
        return records


def load_weights(network: torch.nn.Module, path: str | os.PathLike, map_location: str = "cpu") -> torch.nn.Module:
    """Load a state dict (or a training checkpoint holding ``"network"``) into ``network``; returns it."""
    from monai_emma.model_source import read_state_dict

    network.load_state_dict(read_state_dict(path, map_location))
    return network


def training_root(dataset_dir: str | list[str] | None, output_dir: str, pairs_per_modality: int = 8) -> str | list[str]:
    """``dataset_dir`` (one root, or a list of roots) when given; otherwise a small Harvard-style
    set of 2D phantom pairs (MRI-CT, MRI-PET, MRI-SPECT) written once to ``<output_dir>/sample_pairs``."""
    if isinstance(dataset_dir, list | tuple):
        return [str(d) for d in dataset_dir]
    if dataset_dir:
        return str(dataset_dir)
    from monai_emma.data.phantom import write_phantom_pairs

    root = Path(output_dir) / "sample_pairs"
    if not root.is_dir():
        write_phantom_pairs(root, size=128, n=pairs_per_modality, modalities=("CT", "PET", "SPECT"))
    return str(root)


def _is_main_rank() -> bool:
    """True outside distributed runs, and on rank 0 inside them."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def stage_trainer(
    stage: str,
    dataset_dir: str | list[str],
    ckpt_dir: str,
    recipe: str = "cpu",
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    handlers: list | None = None,
    distributed: bool = False,
    progress: bool = True,
    resume: bool = True,
    overrides: dict | None = None,
):
    """The MONAI ``SupervisedTrainer`` of one EMMA stage, from the package's training engine.

    Stage ``"sensors"`` writes ``<ckpt_dir>/sensors.pt``; stage ``"fuser"`` reads it and writes
    ``<ckpt_dir>/model.pt`` (the U-Fuser state dict, the bundle's model file). Both checkpoint every
    epoch under ``<ckpt_dir>/<stage>/`` and resume from there; validation computes fusion losses
    and metrics and keeps the best weights. The data split is the engine's (seeded); ``split.json``
    (every root, the validation ids) and ``config_<stage>.json`` in ``ckpt_dir`` record the run.

    Args:
        stage: ``"sensors"`` or ``"fuser"``.
        dataset_dir: Harvard- or IVF-style root of 2D pairs, or a list of roots trained together.
        ckpt_dir: where weights and checkpoints go.
        recipe: ``"cpu"`` or ``"paper"``.
        epochs, batch_size, seed: recipe overrides (``None``: the recipe's).
        device: training device.
        handlers: extra ignite handlers (MONAI's ``--tracking mlflow`` appends an ``MLFlowHandler``).
        distributed: DistributedDataParallel on the current process group (``multi_gpu_*.json``).
        progress: progress bar on the main rank.
        resume: continue from the latest checkpoint.
        overrides: more :meth:`~monai_emma.engines.TrainConfig.with_overrides` settings.
    """
    import shutil

    from monai_emma.data.pairs import find_pairs, split_pairs, split_record
    from monai_emma.engines import fuser_trainer, load_sensor_bank, sensor_trainer
    from monai_emma.engines import recipe as make_recipe
    from monai_emma.engines.two_stage import FUSER_FILE, SENSORS_FILE

    if stage not in ("sensors", "fuser"):
        raise ValueError(f"stage must be 'sensors' or 'fuser', not {stage!r}")
    key = "sensor_epochs" if stage == "sensors" else "fuser_epochs"
    cfg = make_recipe(recipe, **{key: epochs, "batch_size": batch_size, "seed": seed}, **(overrides or {}))
    pairs = find_pairs(dataset_dir)
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    ckpt = Path(ckpt_dir)
    if _is_main_rank():
        ckpt.mkdir(parents=True, exist_ok=True)  # the run record, as monai-emma train writes it
        (ckpt / f"config_{stage}.json").write_text(cfg.to_json())
        (ckpt / "split.json").write_text(json.dumps(split_record(dataset_dir, train_pairs, val_pairs), indent=1))
    kwargs = dict(resume=resume, progress=progress, extra_handlers=list(handlers or []), distributed=distributed)
    device = torch.device(device)
    if stage == "sensors":
        trainer, _ = sensor_trainer(train_pairs, val_pairs, cfg, ckpt / "sensors", device, **kwargs)
        final, target = ckpt / "sensors" / SENSORS_FILE, ckpt / SENSORS_FILE
    else:
        sensors_file = ckpt / SENSORS_FILE
        if not sensors_file.is_file():
            raise FileNotFoundError(f"{sensors_file}: run train_sensors.json first (stage 1 writes the sensors)")
        sensors = load_sensor_bank(sensors_file, map_location=device)
        trainer, _ = fuser_trainer(train_pairs, val_pairs, sensors, cfg, ckpt / "fuser", device, **kwargs)
        final, target = ckpt / "fuser" / FUSER_FILE, ckpt / "model.pt"

    from ignite.engine import Events

    @trainer.on(Events.COMPLETED)
    def _publish(_engine) -> None:
        if _is_main_rank() and final.is_file():
            shutil.copyfile(final, target)

    return trainer


def export_pt2(network: torch.nn.Module, path: str | os.PathLike, size: int = 256) -> Path:
    """Export a U-Fuser with ``torch.export`` (dynamic batch, height and width; multiples of 8
    from 8 to 4096 pixels) to a ``.pt2`` file loadable with ``torch.export.load``."""
    from torch.export import Dim

    network = network.eval()
    batch = Dim("batch", min=1, max=64)
    h8, w8 = Dim("h8", min=1, max=512), Dim("w8", min=1, max=512)
    example = torch.rand(2, 2, size, size)
    # traced with gradients enabled: the plain path, whose parameters stay parameters
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch, 2: 8 * h8, 3: 8 * w8},), strict=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
