"""Components for the EMMA MONAI bundle (``bundles/emma``), referenced from its configs.

The bundle's configs spell out their pipelines with MONAI objects (``Compose`` of MONAI and
monai-emma transforms, MONAI's ``SupervisedEvaluator``, ``CheckpointLoader``, the package's
``EMMATrainer`` and evaluators); what they call from here is glue:

* :func:`bundle_root`: the bundle folder, whatever the working directory;
* :func:`sample_dataset`, :func:`fusion_jobs`, :func:`fusion_datalist`, :func:`collate_jobs`,
  :class:`FusionSummary`: inference jobs (NIfTI files, DICOM series, 2D pair folders), with a
  generated sample by default, and the summary of what was written;
* :func:`training_root`, :func:`training_init`, :func:`training_config`, :func:`training_split`,
  :func:`training_dataset`, :func:`stage_network`, :func:`stage_sensors`, :func:`stage_validator`,
  :func:`stage_trainer`: the pieces of a training stage, from the package's single training engine
  (``training_init``: fine-tuning from trained weights);
* :func:`export_pt2`: a ``torch.export`` program of the U-Fuser.
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

import numpy as np
import torch

__all__ = [
    "bundle_root",
    "sample_dataset",
    "BundleInputError",
    "input_error",
    "FusionJob",
    "fusion_jobs",
    "fusion_datalist",
    "collate_jobs",
    "FusionSummary",
    "training_root",
    "training_init",
    "training_config",
    "training_split",
    "training_dataset",
    "stage_network",
    "stage_sensors",
    "stage_validator",
    "stage_trainer",
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


class BundleInputError(FileNotFoundError):
    """A bundle id points at input that is not there (a dataset folder, data to fuse)."""


def _running_bundle_cli() -> bool:
    """True under ``python -m monai.bundle`` (also through torchrun), where MONAI would bury an
    input error under a long traceback ending in "Failed to evaluate ConfigExpression"."""
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return main.name == "__main__.py" and main.parent.name == "bundle" and main.parent.parent.name == "monai"


def input_error(message: str) -> BundleInputError:
    """The error for bad input named by a bundle id: raised as it is from Python, and as a one-line
    exit (``monai-emma bundle: error: ...``, status 2) under ``python -m monai.bundle``."""
    if _running_bundle_cli():
        print(f"monai-emma bundle: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return BundleInputError(message)


def sample_dataset(dataset_dir: str | None, output_dir: str, spacing: float = 2.0, seed: int = 0) -> str:
    """``dataset_dir`` when given; otherwise the phantom head written once (NIfTI and DICOM) to
    ``<output_dir>/sample`` at ``spacing`` mm."""
    if dataset_dir:
        if not Path(dataset_dir).exists():
            raise input_error(f"{dataset_dir}: no such dataset folder (--dataset_dir)")
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
        raise input_error(f"{root}: nothing to fuse (no mri + ct/pet/spect volumes, no 2D pair folders)")
    return jobs


def fusion_datalist(dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`fusion_jobs` as MONAI data items: ``{"name", "anatomical", "other", "modality", "kind"}``."""
    return [asdict(job) for job in fusion_jobs(dataset_dir)]


def collate_jobs(batch: list[dict]) -> dict:
    """One fusion job per batch (volumes differ in size): the job's dictionary as it is, with a
    batch axis on ``image`` for the network. The evaluator runs without decollation; the
    post-processing starts by removing that axis (``SqueezeDimd``)."""
    if len(batch) != 1:
        raise ValueError(f"fusion jobs go one per batch (batch_size 1), got {len(batch)}")
    item = dict(batch[0])
    item["image"] = item["image"].unsqueeze(0)
    return item


class FusionSummary:
    """An evaluator handler that lists what every job wrote (``summary.json``) and, for 2D pair
    folders, writes one ``<PAIR>_preview.png`` montage of up to four pairs.

    Args:
        output_dir: where ``summary.json`` and the 2D previews go.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        self.records: list[dict[str, Any]] = []
        self.previews: dict[str, list] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Any) -> None:
        job = {**engine.state.batch, **engine.state.output}  # one job per iteration (collate_jobs)
        record = {k: str(job.get(k, "")) for k in ("name", "modality", "kind", "report") if k in job}
        record.update(
            anatomical=str(job["anatomical_volume"].path),
            other=str(job["other_volume"].path),
            **job.get("files", {}),
        )
        self.records.append(record)
        if job.get("kind") == "slices":
            rows = self.previews.setdefault(record["name"].split("/")[0], [])
            if len(rows) < 4:
                rows.append([np.asarray(job[k].detach().cpu())[0, ..., 0] for k in ("anatomical", "other", "pred")])

    def completed(self, engine: Any) -> None:
        from monai_emma.io.png import save_montage

        self.output_dir.mkdir(parents=True, exist_ok=True)
        for pair, rows in self.previews.items():
            path = save_montage(rows, self.output_dir / f"{pair}_preview.png", titles=["anatomical", "other", "fused"])
            self.records.append({"name": f"{pair} preview", "preview": str(path)})
        (self.output_dir / "summary.json").write_text(json.dumps(self.records, indent=1))


def training_root(
    dataset_dir: str | list[str] | None,
    output_dir: str,
    pairs_per_modality: int = 8,
    datalist: str | None = None,
    key: str | None = None,
):
    """``dataset_dir`` (one root, or a list of roots) when given; with ``datalist`` (``--datalist``,
    a MONAI datalist of volume studies) its :class:`~monai_emma.studies.Datalist`, whose list
    ``key`` (``evaluate.json``) is checked now, from the files' headers; otherwise a small
    Harvard-style set of 2D phantom pairs (MRI-CT, MRI-PET, MRI-SPECT) written once to
    ``<output_dir>/sample_pairs``."""
    if datalist:
        from monai_emma.data.datalist import DatalistError, load_datalist, read_datalist
        from monai_emma.studies import Datalist, check_studies

        if dataset_dir:
            raise input_error(f"--dataset_dir {dataset_dir} and --datalist {datalist}: give one of them")
        try:
            read_datalist(datalist)
            if key:
                check_studies(load_datalist(datalist, key))
        except DatalistError as err:
            raise input_error(str(err)) from None
        return Datalist(Path(datalist))
    roots = list(dataset_dir) if isinstance(dataset_dir, list | tuple) else [dataset_dir] if dataset_dir else []
    for root in roots:
        if not Path(root).is_dir():
            raise input_error(f"{root}: no such dataset folder (--dataset_dir)")
    if isinstance(dataset_dir, list | tuple):
        return [str(d) for d in dataset_dir]
    if dataset_dir:
        return str(dataset_dir)
    from monai_emma.data.phantom import write_phantom_pairs

    root = Path(output_dir) / "sample_pairs"
    if not root.is_dir():
        write_phantom_pairs(root, size=128, n=pairs_per_modality, modalities=("CT", "PET", "SPECT"))
    return str(root)


def training_init(init: str | None, init_sensors: str | None = None, tracking_uri: str | None = None):
    """``train_fuser.json``'s ``init`` (fine-tuning; "" or None: off) resolved with
    :func:`~monai_emma.engines.finetune.resolve_init`: a shipped set (``v3``), a weights file, a
    run or bundle folder, or an MLflow model URI (in ``init_tracking_uri``'s registry), with its
    sensors (or ``init_sensors``).

    Raises:
        BundleInputError: the init cannot be used (one line; exit 2 under ``python -m monai.bundle``).
    """
    if not init:
        if init_sensors:
            raise input_error("--init_sensors goes with --init (the sensors its weights are fine-tuned against)")
        return None
    from monai_emma.engines.finetune import InitError, resolve_init

    try:
        return resolve_init(str(init), init_sensors or None, tracking_uri or None, sensors_flag="--init_sensors")
    except InitError as err:
        raise input_error(str(err)) from err


def training_config(
    recipe: str = "cpu",
    batch_size: int | None = None,
    seed: int | None = None,
    overrides: dict | None = None,
    precision: str | None = None,
    init=None,
):
    """The :class:`~monai_emma.engines.TrainConfig` of a named recipe with overrides
    (``precision``: ``"fp32"`` or ``"bf16"``), recording ``init`` (:func:`training_init`) when given."""
    from monai_emma.engines import recipe as make_recipe
    from monai_emma.engines.finetune import finetune_config

    cfg = make_recipe(recipe, batch_size=batch_size, seed=seed, precision=precision, **(overrides or {}))
    return finetune_config(cfg, init)


def _is_main_rank() -> bool:
    """True outside distributed runs, and on rank 0 inside them."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def training_split(data_root, config, ckpt_dir: str | os.PathLike) -> tuple[list, list]:
    """(training pairs, validation pairs) of the engine's seeded split
    (:func:`~monai_emma.engines.two_stage.training_split`: a datalist's studies are split by study
    and cached in ``<ckpt_dir>/cache``); the main rank records the run in ``ckpt_dir``
    (``config.json``, ``split.json``: every root or the datalist, and the validation ids)."""
    from monai_emma.data.datalist import DatalistError
    from monai_emma.engines.stages import RunLayout
    from monai_emma.engines.two_stage import training_split as engine_split

    try:
        train, val, record = engine_split(data_root, config, Path(ckpt_dir) / "cache", progress=_is_main_rank())
    except DatalistError as err:
        raise input_error(str(err)) from None
    if _is_main_rank():
        RunLayout(ckpt_dir).write_record(config, data_root, train, val, record)
    return train, val


def _stage(stage: str):
    from monai_emma.engines.stages import get_stage

    return get_stage(stage)


def training_dataset(stage: str, train_pairs: list, config):
    """The stage's patch dataset (:class:`~monai_emma.data.pairs.PairedPatchDataset`)."""
    from monai_emma.engines.two_stage import stage_dataset

    return stage_dataset(train_pairs, config, _stage(stage))


def stage_network(stage: str, train_pairs: list, config, init=None) -> torch.nn.Module:
    """The network a stage trains: the sensor bank (stage 1) or a new U-Fuser (stage 2), seeded, or
    the U-Fuser of ``init`` (:func:`training_init`: fine-tuning)."""
    from monai_emma.engines.two_stage import stage_network as engine_network

    return engine_network(_stage(stage), train_pairs, config, init.state if init is not None else None)


def stage_sensors(ckpt_dir: str | os.PathLike, train_pairs: list, device: str | torch.device = "cpu", init=None):
    """Stage 2's frozen pseudo-sensors: with ``init`` (:func:`training_init`) the init's sensors,
    written to ``<ckpt_dir>/sensors.pt`` beside the model; else stage 1's output
    (``<ckpt_dir>/sensors.pt``) when present, else the shipped default sensors (so
    ``train_fuser.json`` runs on a fresh clone).

    Raises:
        FileNotFoundError: the shipped sensors do not cover the data's modalities (e.g. infrared).
        BundleInputError: the init's sensors do not cover them, or ``<ckpt_dir>/sensors.pt`` holds other sensors.
    """
    from monai_emma.engines.stages import SENSORS
    from monai_emma.engines.two_stage import modalities_of
    from monai_emma.networks import load_sensor_bank, pseudo_sensors
    from monai_emma.weights import SensorWeights

    own = Path(ckpt_dir) / SENSORS.weights_file
    if init is not None:
        from monai_emma.engines.finetune import InitError, publish_init_sensors

        try:
            init.check_modalities(modalities_of(train_pairs), flag="--init_sensors")
            if _is_main_rank():
                publish_init_sensors(init, own, sensors_flag="--init_sensors")
        except InitError as err:
            raise input_error(str(err)) from err
        logger.info("fine-tuning %s against %s", init.weights, init.sensors_source)
        return init.sensors.to(device).freeze()
    if own.is_file():
        bank = load_sensor_bank(own, map_location=device)
    else:
        bank = pseudo_sensors(weights=SensorWeights.DEFAULT)
        missing = sorted(set(modalities_of(train_pairs)) - set(bank.modalities))
        if missing:
            raise FileNotFoundError(
                f"{own}: no stage-1 sensors, and the shipped ones have none for {', '.join(missing)}; "
                "run train_sensors.json first"
            )
        logger.info(
            "stage 2 uses the shipped pseudo-sensors (%s); stage 1 writes %s", SensorWeights.DEFAULT.set_name, own
        )
    return bank.to(device).freeze()


def stage_validator(
    stage: str,
    val_pairs: list,
    config,
    device,
    network: torch.nn.Module,
    sensors=None,
    val_handlers: list | None = None,
):
    """The stage's MONAI evaluator (see :mod:`monai_emma.engines.validation`) with ``val_handlers``
    attached (MONAI's ``--tracking mlflow`` adds one), or None without validation pairs."""
    from monai_emma.engines.two_stage import stage_validator as engine_validator

    evaluator = engine_validator(_stage(stage), val_pairs, config, torch.device(device), network, sensors)
    for handler in val_handlers or []:
        if evaluator is not None:
            handler.attach(evaluator)
    return evaluator


def stage_trainer(
    stage: str,
    network: torch.nn.Module,
    dataset,
    config,
    ckpt_dir: str | os.PathLike,
    max_epochs: int | None = None,
    device: str | torch.device = "cpu",
    sensors=None,
    validator=None,
    inferer=None,
    train_handlers: list | None = None,
    val_interval: int = 1,
    distributed: bool = False,
    progress: bool = True,
    resume: bool = True,
):
    """The :class:`~monai_emma.engines.EMMATrainer` of one EMMA stage, from the package's engine.

    Stage ``"sensors"`` trains ``network`` (a sensor bank) and publishes ``<ckpt_dir>/sensors.pt``;
    stage ``"fuser"`` trains ``network`` (a U-Fuser) against ``sensors`` and publishes
    ``<ckpt_dir>/model.pt`` (the bundle's model file). Both checkpoint every epoch in the run layout
    under ``ckpt_dir`` and resume from there; ``validator`` runs every ``val_interval`` epochs and
    the best weights are kept.

    Args:
        stage: ``"sensors"`` or ``"fuser"``.
        network: the network to train (``network_def``).
        dataset: the patch dataset (``train#dataset``).
        config: the :class:`~monai_emma.engines.TrainConfig`.
        ckpt_dir: where weights, checkpoints and the run record go.
        max_epochs: epochs to train (default: the recipe's).
        device: training device.
        sensors: stage 2's frozen sensors.
        validator: ``validate#evaluator``.
        inferer: ``train#inferer``: how the step calls the network (MONAI ``SimpleInferer``).
        train_handlers: more handlers (MONAI's ``--tracking mlflow`` appends an ``MLFlowHandler``).
        val_interval: validate every this many epochs.
        distributed: DistributedDataParallel on the current process group (``multi_gpu_train.json``).
        progress: progress bar on the main rank.
        resume: continue from the latest checkpoint.
    """
    import shutil

    from monai_emma.engines.stages import FUSER, SENSORS, RunLayout
    from monai_emma.engines.two_stage import stage_trainer_for

    st = _stage(stage)
    layout = RunLayout(ckpt_dir)
    if max_epochs is not None:
        config = config.with_overrides(**{st.epochs_setting: int(max_epochs)})
    trainer, _ = stage_trainer_for(
        st,
        network,
        dataset,
        config,
        layout.stage_dir(st),
        torch.device(device),
        sensors=sensors,
        validator=validator,
        inferer=inferer,
        val_interval=val_interval,
        resume=resume,
        progress=progress,
        extra_handlers=list(train_handlers or []),
        distributed=distributed,
    )
    final = layout.weights(st)
    target = Path(ckpt_dir) / ("model.pt" if st is FUSER else SENSORS.weights_file)

    from ignite.engine import Events

    @trainer.on(Events.COMPLETED)
    def _publish(_engine) -> None:
        if _is_main_rank() and final.is_file():
            shutil.copyfile(final, target)

    return trainer


def export_pt2(network: torch.nn.Module, path: str | os.PathLike, size: int = 256) -> Path:
    """Export a U-Fuser with ``torch.export`` (dynamic batch, height and width; multiples of 8
    from 16 to 4096 pixels: at 8 the deepest level's reflect padding has nothing to reflect) to a
    ``.pt2`` file loadable with ``torch.export.load``."""
    from torch.export import Dim

    network = network.eval()
    batch = Dim("batch", min=1, max=64)
    h8, w8 = Dim("h8", min=2, max=512), Dim("w8", min=2, max=512)
    example = torch.rand(2, 2, size, size)
    # traced with gradients enabled: the plain path, whose parameters stay parameters
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch, 2: 8 * h8, 3: 8 * w8},), strict=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
