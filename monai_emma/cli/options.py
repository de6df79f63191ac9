"""Option groups that several commands share: where the model comes from, precision, the fusion
options of ``fuse`` and ``view``."""

from __future__ import annotations

import argparse

from monai_emma.cli.base import CLIError, parse_range, positive_int

__all__ = [
    "ZERO_EMPTY_HELP",
    "WEIGHTS_HELP",
    "add_model_options",
    "add_precision_option",
    "add_register_option",
    "add_fuse_arguments",
    "add_datalist_options",
    "datalist_of",
    "load_model",
]

ZERO_EMPTY_HELP = "keep the network's output where every source is zero (default: zero there, no halo)"
WEIGHTS_HELP = (
    "U-Fuser state dict or checkpoint, or a shipped set by name (v3, v2.1, v2, v1; default: the shipped default, v3)"
)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--weights | --bundle | --model-uri``, ``--tracking-uri``, ``--device``, ``--no-zero-empty``
    and ``--precision`` (inference)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help=WEIGHTS_HELP)
    src.add_argument("--bundle", help="EMMA MONAI bundle folder (uses models/model.pt)")
    src.add_argument("--model-uri", help="MLflow model URI, e.g. models:/emma-ufuser@candidate")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --model-uri (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-zero-empty", action="store_true", help=ZERO_EMPTY_HELP)
    add_precision_option(p, inference=True)


def add_precision_option(p: argparse.ArgumentParser, inference: bool = False) -> None:
    """``--precision``: ``auto|fp32|bf16`` for inference (default auto), ``fp32|bf16`` for training
    and evaluation (default fp32)."""
    if inference:
        p.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16"],
            default="auto",
            help="auto (default): bfloat16 where the CPU (AMX/AVX-512-BF16) or GPU computes it natively, else fp32",
        )
        return
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: bfloat16 autocast, faster on CPUs with AMX/AVX-512-BF16 and recent GPUs (default fp32)",
    )


def add_register_option(p: argparse.ArgumentParser, folder: bool = False) -> None:
    """``--register none|rigid|affine`` (volumes only)."""
    what = "each second volume to its anatomical one" if folder else "the second volume to the anatomical one"
    p.add_argument(
        "--register",
        choices=["none", "rigid", "affine"],
        default="none",
        help=f"align {what} first (separate studies; needs monai-emma[registration]; affine starts from the "
        "rigid solution and is kept only when it aligns better); default none: the files' coordinates "
        "(hybrid scanners)",
    )


def add_suv_options(p: argparse.ArgumentParser, default: str | None = "auto", what: str = "") -> None:
    """``--suv`` / ``--no-suv`` into ``args.suv`` (``"on"``, ``"off"`` or ``default``)."""
    suv = p.add_mutually_exclusive_group()
    suv.add_argument(
        "--suv",
        dest="suv",
        action="store_const",
        const="on",
        default=default,
        help=f"{what}PET DICOM in body-weight SUV, or an error naming the missing tag (default: when the tags allow)",
    )
    suv.add_argument("--no-suv", dest="suv", action="store_const", const="off", help=f"{what}keep PET in stored units")


def add_fuse_arguments(p: argparse.ArgumentParser, view: bool = False) -> None:
    """The options of ``fuse`` and ``view`` (which writes the viewer page instead of images)."""
    p.add_argument("anatomical", help="MRI: PNG/JPEG/BMP/TIFF, .nii/.nii.gz, a DICOM file or a DICOM series folder")
    p.add_argument("other", help="CT, PET, SPECT or infrared, in any of the same formats")
    if view:
        p.add_argument("--output", "-o", required=True, help="the viewer page: a .html file")
    else:
        p.add_argument("--output", "-o", required=True, help=".png (2D), .nii/.nii.gz (3D) or a folder (DICOM)")
        p.add_argument("--output-format", choices=["png", "nifti", "dicom"], help="default: from the --output suffix")
        p.add_argument(
            "--html", help="also write the viewer page (one offline HTML file: views, sliders, fidelity chart)"
        )
    p.add_argument(
        "--viewer-voxel-mm",
        type=float,
        metavar="MM",
        help="viewer page: resample the volumes to voxels of at most MM mm to cap the page size (e.g. 2)",
    )
    p.add_argument("--modality", choices=["ct", "pet", "spect", "ir"], help="second modality (default: guessed)")
    p.add_argument("--series-uid", action="append", help="SeriesInstanceUID to read from a folder of several series")
    p.add_argument(
        "--window",
        help="intensity window of the second modality: LOW,HIGH in its units (CT: HU, default -100,300; PET in SUV: "
        "e.g. 0,8) or, for a CT, a preset (head, brain, subdural, soft-tissue, lung, bone)",
    )
    p.add_argument(
        "--anatomical-modality",
        choices=["mri", "ct"],
        help="the anatomical (base) image: mri, or ct for PET/CT and SPECT/CT (default: from DICOM Modality "
        "or Hounsfield values)",
    )
    p.add_argument(
        "--anatomical-window",
        help="CT base only: window LOW,HIGH in HU or a preset (head, brain, subdural, soft-tissue, lung, bone; "
        "default head: -100,300); refused for an MRI base",
    )
    add_suv_options(p)
    p.add_argument("--percentiles", help="foreground percentiles LOW,HIGH of the second modality (PET/SPECT: 0,99.5)")
    p.add_argument("--mri-percentiles", help="foreground percentiles LOW,HIGH of the anatomical image (0.5,99.5)")
    p.add_argument("--colormap", help="also write a colour rendering (hot, jet, inferno, magma, viridis, turbo…)")
    p.add_argument("--preview", help="also write a PNG montage of sources and fused slices")
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write a viewer-style overlay: the fusion in grey, PET/SPECT in colour above a threshold",
    )
    p.add_argument(
        "--overlay-threshold",
        type=float,
        help="no colour below this value of the second modality, in its units (SUV when converted; "
        "default: SUV 2.5, or 30%% of its window)",
    )
    p.add_argument("--overlay-opacity", type=float, default=0.5, help="colour weight where drawn (default 0.5)")
    p.add_argument("--overlay-colormap", default="hot", help="colour map of the overlay (default hot)")
    p.add_argument("--report", help="also write a per-slice fidelity report (JSON): where a modality is lost")
    add_model_options(p)
    p.add_argument("--batch-size", type=positive_int, help="slices per network call (default: 4 on CPU, 16 on CUDA)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--stretch", action="store_true", help="min-max stretch each fused slice (the papers' protocol)")
    p.add_argument("--resize", action="store_true", help="resize a 2D second image to the anatomical size")
    add_register_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_model(args: argparse.Namespace):
    """The U-Fuser named by :func:`add_model_options` (or ``register``'s options), as
    ``(network, where it came from)``."""
    import torch

    from monai_emma.model_source import ModelSourceError, resolve_fuser

    device = str(getattr(args, "device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")
    try:
        return resolve_fuser(
            weights=args.weights,
            bundle=args.bundle,
            model_uri=getattr(args, "model_uri", None),
            tracking_uri=getattr(args, "tracking_uri", None),
            map_location="cpu",
        )
    except ModelSourceError as err:
        raise CLIError(str(err)) from err


def add_datalist_options(p: argparse.ArgumentParser) -> None:
    """How the studies of a ``--datalist`` are preprocessed and cached (``train``, ``evaluate``);
    the command adds ``--datalist`` itself."""
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="with --datalist: where preprocessed studies are cached (default: <run or report folder>/cache)",
    )
    p.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="MOD=LOW,HIGH",
        help="with --datalist: intensity window of a modality in its units, e.g. ct=0,255 for 8-bit CT renderings "
        "or ct=brain (CT presets); repeatable; overrides the datalist's own 'intensity'",
    )
    p.add_argument(
        "--percentiles",
        action="append",
        default=[],
        metavar="MOD=LOW,HIGH",
        help="with --datalist: foreground percentiles of a modality, e.g. pet=0,99.5; repeatable",
    )
    p.add_argument(
        "--register",
        choices=["none", "rigid", "affine"],
        help="with --datalist: align each study's second volume to its anatomical one first (separate studies; "
        "needs monai-emma[registration]); default none: the files' coordinates",
    )
    add_suv_options(p, default=None, what="with --datalist: ")


def datalist_of(args: argparse.Namespace):
    """The :class:`~monai_emma.studies.Datalist` of ``--datalist`` with the options of
    :func:`add_datalist_options`, or None without ``--datalist`` (those options are then refused)."""
    from monai_emma.transforms.intensity import IntensityRule, ct_window

    given = [
        flag
        for flag, value in (
            ("--cache-dir", args.cache_dir),
            ("--window", args.window),
            ("--percentiles", args.percentiles),
            ("--register", args.register),
            ("--suv" if args.suv == "on" else "--no-suv", args.suv),
        )
        if value
    ]
    if not args.datalist:
        if given:
            raise CLIError(f"{given[0]} goes with --datalist (volume studies)")
        return None
    rules: dict[str, IntensityRule] = {}
    for flag, specs in (("--window", args.window), ("--percentiles", args.percentiles)):
        for spec in specs:
            modality, _, values = spec.partition("=")
            modality = modality.strip().lower()
            if modality not in ("mri", "ct", "pet", "spect") or not values:
                raise CLIError(f"{flag} {spec!r}: expected MOD=LOW,HIGH with MOD one of mri, ct, pet, spect")
            if modality in rules:
                raise CLIError(f"{flag} {spec!r}: {modality} has a rule already")
            if flag == "--window" and modality == "ct":
                try:
                    rules[modality] = ct_window(values)
                except ValueError as err:
                    raise CLIError(f"{flag} {spec!r}: {err}") from err
                continue
            low, high = parse_range(values, f"{flag} {modality}=")
            try:
                rules[modality] = IntensityRule("window" if flag == "--window" else "percentile", low, high, label=spec)
            except ValueError as err:
                raise CLIError(f"{flag} {spec!r}: {err}") from err
    from monai_emma.studies import Datalist, StudyOptions
    from monai_emma.transforms.registration import check_registration

    register = args.register or "none"
    try:
        check_registration(register)  # SimpleITK present, before any study is read
    except ValueError as err:
        raise CLIError(f"--register {register}: {err}") from err
    options = StudyOptions.make(rules, register=register, suv=args.suv or "auto")
    return Datalist(args.datalist, options, args.cache_dir)
