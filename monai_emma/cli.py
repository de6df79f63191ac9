"""The ``monai-emma`` command line.

Heavy modules (torch, MONAI, MLflow, Ray) are imported inside the sub-commands, so
``monai-emma --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "CLIError"]


ZERO_EMPTY_HELP = "keep the network's output where every source is zero (default: zero there, no halo)"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from monai_emma.data.phantom import phantom_slice_pair
    from monai_emma.io.png import save_montage
    from monai_emma.networks import UFuser

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from monai_emma.model_source import ModelSourceError, resolve_fuser

    try:
        net, _ = resolve_fuser()
    except ModelSourceError as err:
        print(f"note: {err}; fusing with an untrained network")
        net = UFuser().eval()
    rows = []
    for modality in ("ct", "pet", "spect"):
        mri, other = phantom_slice_pair(args.size, modality, seed=args.seed)
        x = torch.from_numpy(np.stack([mri, other]))[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            fused = net(x)[0, 0].numpy()
        ms = 1e3 * (time.perf_counter() - t0)
        print(
            f"{modality:>5}: fused {args.size}x{args.size} in {ms:.0f} ms (range {fused.min():.2f}-{fused.max():.2f})"
        )
        rows.append([mri, other, fused])
    path = save_montage(rows, out / "demo_montage.png", titles=["MRI", "other", "EMMA"])
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    import torch

    from monai_emma.data.pairs import PairDataError
    from monai_emma.engines import recipe, run_training
    from monai_emma.engines.config import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in (
        "ignite.engine.engine.EMMATrainer",
        "ignite.engine.engine.Evaluator",
        "monai.data.nvimgcodec_pydicom_plugin",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    name = args.recipe or ("paper" if args.device.startswith("cuda") else "cpu")
    settings = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        sensor_epochs=args.sensor_epochs,
        fuser_epochs=args.fuser_epochs,
        sensor_lr=args.sensor_lr,
        fuser_lr=args.fuser_lr,
        seed=args.seed,
        alpha=args.alpha,
        prior_weight=args.prior_weight,
        sensor_preset=args.sensors,
        fused_dir=args.fused_dir,
        stage1_rules=tuple(args.rules.split(",")) if args.rules else None,
        amp=args.amp or None,
        precision=args.precision if args.precision != "fp32" else None,
    )
    try:
        for key, value in parse_overrides(args.override).items():
            if settings.get(key) is not None:
                raise ValueError(f"--override {key}: set twice (also by its own flag)")
            settings[key] = value
        cfg = recipe(name, **settings)
    except (ValueError, TypeError) as err:
        raise CLIError(f"training settings: {err}") from err
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
    try:
        results = run_training(args.data, args.output, cfg, device=args.device, resume=not args.restart)
    except PairDataError as err:
        raise CLIError(str(err)) from err
    for stage, res in results.items():
        last = res.history[-1] if res.history else {}
        summary = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith(("train_total", "val_")))
        print(f"{stage}: {res.weights} ({res.seconds / 60:.1f} min) {summary}")
        if res.timings.get("steps_count"):
            print(f"  {_time_breakdown(res.timings)}")
    return 0


def _time_breakdown(timings: dict[str, float]) -> str:
    """``steps 80.1 s (87 x 0.921 s), data 0.4 s, validation 9.8 s, checkpoint 0.3 s``"""
    n = int(timings["steps_count"])
    parts = [f"steps {timings['steps']:.1f} s ({n} x {timings['steps'] / n:.3f} s)"]
    parts += [f"{k} {timings[k]:.1f} s" for k in ("data", "validation", "checkpoint") if k in timings]
    return ", ".join(parts)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_emma.data.pairs import PairDataError
    from monai_emma.evaluation import evaluate, split_ids

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        result = evaluate(
            args.root,
            methods,
            ids=split_ids(args.split) if args.split else None,
            zero_empty=not args.no_zero_empty,
            weights=args.weights,
            output=args.output,
            grid_pairs=args.grid_pairs,
            device=args.device,
            mlflow_uri=args.mlflow_uri,
            precision=args.precision,
            peer_weights={"ifcnn": args.ifcnn_weights, "densefuse": args.densefuse_weights},
        )
    except (PairDataError, ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from err
    for kind, path in result.files.items():
        print(f"wrote {kind}: {path}")
    return 0


def _cmd_fuse_folder(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from monai_emma.data.pairs import PairDataError, list_images, read_image
    from monai_emma.fuse2d import fuse_slice_pair, luminance, network_fuser
    from monai_emma.io.png import save_png

    a_dir, b_dir, out_dir = Path(args.anatomical_dir), Path(args.other_dir), Path(args.output_dir)
    for d in (a_dir, b_dir):
        if not d.is_dir():
            raise CLIError(f"{d}: no such folder")
    if not list_images(a_dir) and _list_volumes(a_dir):
        return _fuse_volume_folder(args, a_dir, b_dir, out_dir)
    if args.register != "none":
        raise CLIError("--register is for volumes; 2D slices (PNG, ...) are fused as they are aligned")

    ia, ib = list_images(a_dir), list_images(b_dir)
    stems = sorted(set(ia) & set(ib))
    missing = sorted(set(ia) ^ set(ib))
    if not stems:
        raise CLIError(f"{a_dir} and {b_dir}: no images with matching names")
    if missing:
        print(f"note: {len(missing)} file(s) without a partner skipped: {', '.join(missing[:5])}", file=sys.stderr)
    report = None
    if args.report:
        modality = (args.modality or b_dir.name).lower()
        if modality not in ("ct", "pet", "spect", "ir"):
            raise CLIError(
                f"--report needs the second modality: give --modality (the folder {b_dir.name} does not say)"
            )
        if Path(args.report).exists() and not args.overwrite:
            raise CLIError(f"{args.report}: output exists (use --overwrite to replace it)")
        from monai_emma.fidelity import FidelityReport, default_sensors, slice_fidelity, write_report

        report = FidelityReport(("vis" if modality == "ir" else "mri", modality))
        bank = default_sensors()
    net, _ = _load_model(args)
    from monai_emma.precision import auto_note, resolve_precision

    precision = resolve_precision(args.precision, args.device)
    if note := auto_note(args.precision, args.device):
        print(f"note: {note}", file=sys.stderr)
    fuse = network_fuser(net, args.device, zero_empty=not args.no_zero_empty, precision=precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = [s for s in stems if (out_dir / f"{s}.png").exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{out_dir}: {len(existing)} output(s) exist, e.g. {existing[0]}.png (use --overwrite)")
    for index, stem in enumerate(tqdm(stems, desc="fuse", disable=args.quiet)):
        try:
            a_img, b_img = read_image(ia[stem]), read_image(ib[stem])
        except PairDataError as err:
            raise CLIError(str(err)) from err
        if a_img.shape[-2:] != b_img.shape[-2:]:
            raise CLIError(
                f"{ia[stem]} and {ib[stem]}: sizes differ ({a_img.shape[-2]}x{a_img.shape[-1]} vs "
                f"{b_img.shape[-2]}x{b_img.shape[-1]})"
            )
        image = fuse_slice_pair(fuse, a_img, b_img, stretch=args.stretch)
        save_png(image, out_dir / f"{stem}.png")
        if report is not None:
            fused_y = luminance(np.moveaxis(image, -1, 0) if image.ndim == 3 else image[None])
            scores = slice_fidelity(fused_y, luminance(a_img), luminance(b_img), report.modalities, bank)
            report.slices.append({"index": index, "name": stem, **scores})
    print(f"wrote {len(stems)} fused image(s) to {out_dir}")
    if report is not None:
        from monai_emma.fidelity import report_line

        print(f"wrote report: {write_report(report, args.report)}")
        print(report_line(report, unit="pairs"))
    return 0


def _list_volumes(folder: Path) -> dict[str, Path]:
    """Volume files of a folder by name without suffix (``sub-01.nii.gz`` -> ``sub-01``), sorted."""
    from monai_emma.io.volumes import VOLUME_SUFFIXES

    out = {}
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        suffix = next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)
        if p.is_file() and suffix and suffix not in (".img", ".rec"):  # Analyze and PAR/REC by their headers
            out[p.name[: -len(suffix)]] = p
    return out


def _fuse_volume_folder(args: argparse.Namespace, a_dir: Path, b_dir: Path, out_dir: Path) -> int:
    """fuse-folder of volumes: ``<stem>.nii.gz`` per pair matched by name (with ``--register``, its
    ``.tfm`` beside it). Each output is written whole or not at all; a failing pair stops the run
    with one line, and the pairs before it stay written."""
    from tqdm.auto import tqdm

    from monai_emma.fusion import FusionError, fuse_volumes
    from monai_emma.io.outputs import write_fusion
    from monai_emma.io.volumes import VolumeReadError
    from monai_emma.transforms.registration import check_registration

    check_registration(args.register)
    if args.report:
        raise CLIError("--report of fuse-folder is for 2D pairs; for volumes use fuse --report per pair")
    va, vb = _list_volumes(a_dir), _list_volumes(b_dir)
    stems = sorted(set(va) & set(vb))
    if not stems:
        raise CLIError(f"{a_dir} and {b_dir}: no volumes with matching names")
    missing = sorted(set(va) ^ set(vb))
    if missing:
        print(f"note: {len(missing)} file(s) without a partner skipped: {', '.join(missing[:5])}", file=sys.stderr)
    existing = [s for s in stems if (out_dir / f"{s}.nii.gz").exists()]
    if existing and not args.overwrite:
        raise CLIError(f"{out_dir}: {len(existing)} output(s) exist, e.g. {existing[0]}.nii.gz (use --overwrite)")
    net, source = _load_model(args)
    for stem in tqdm(stems, desc="fuse", disable=args.quiet):
        try:
            result = fuse_volumes(
                va[stem],
                vb[stem],
                model=net,
                modality=args.modality,
                device=args.device,
                stretch=args.stretch,
                zero_empty=not args.no_zero_empty,
                precision=args.precision,
                register=args.register,
            )
            write_fusion(result, out_dir / f"{stem}.nii.gz", overwrite=args.overwrite)
        except (VolumeReadError, FusionError, FileExistsError, ValueError) as err:
            raise CLIError(f"{stem}: {err}") from err
        if result.registration is not None:
            tqdm.write(f"{stem}: {result.registration.summary()}", file=sys.stderr)
    print(f"wrote {len(stems)} fused volume(s) to {out_dir} with {source}")
    return 0


def _parse_range(text: str | None, flag: str) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.replace(":", ",").split(","))
    except ValueError as err:
        raise CLIError(f"{flag} {text!r}: expected two numbers LOW,HIGH") from err
    if not hi > lo:
        raise CLIError(f"{flag} {text!r}: LOW must be below HIGH")
    return lo, hi


def _series_per_input(args: argparse.Namespace):
    """The --series-uid values for each input: one study folder given twice with two UIDs reads
    the first as the anatomical series and the second as the other; otherwise both get them all."""
    uids = list(args.series_uid or [])
    same = Path(args.anatomical).resolve() == Path(args.other).resolve()
    if same and Path(args.anatomical).is_dir():
        if len(uids) == 2:
            return uids[0], uids[1]
        from monai_emma.io.volumes import list_dicom_series

        series = list_dicom_series(args.anatomical)
        if len(series) > 1:
            listing = "; ".join(s.summary() for s in series.values())
            raise CLIError(
                f"{args.anatomical} given for both inputs holds {len(series)} series: give two --series-uid, "
                f"the anatomical series first: {listing}"
            )
    return uids or None, uids or None


def _window(text: str | None, flag: str):
    """A CT window rule from a preset or LOW,HIGH, or None."""
    from monai_emma.transforms.intensity import ct_window

    try:
        return ct_window(text) if text else None
    except ValueError as err:
        raise CLIError(f"{flag} {err}") from err


def _load_model(args: argparse.Namespace):
    import torch

    from monai_emma.model_source import ModelSourceError, resolve_fuser

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
    try:
        return resolve_fuser(
            weights=args.weights,
            bundle=args.bundle,
            model_uri=args.model_uri,
            tracking_uri=args.tracking_uri,
            map_location="cpu",
        )
    except ModelSourceError as err:
        raise CLIError(str(err)) from err


def _cmd_fuse(args: argparse.Namespace) -> int:
    from monai_emma.fidelity import fidelity_report, report_line, write_report
    from monai_emma.fusion import FusionError, fuse_images, fuse_volumes
    from monai_emma.io.outputs import OverlayStyle, output_format, write_fusion
    from monai_emma.io.volumes import VolumeReadError, read_volume
    from monai_emma.transforms.intensity import IntensityRule

    view_only = getattr(args, "view_only", False)  # `monai-emma view`: the viewer page is the output
    html_path = Path(args.output) if view_only else (Path(args.html) if args.html else None)
    if html_path is not None and html_path.suffix.lower() not in (".html", ".htm"):
        raise CLIError(f"{html_path}: the viewer page is an .html file")
    try:
        fmt = None if view_only else output_format(args.output, args.output_format)
    except ValueError as err:
        raise CLIError(str(err)) from err
    out = Path(args.output)
    for target in {out, *([html_path] if html_path else [])}:
        if target.exists() and not args.overwrite:
            raise CLIError(f"{target}: output exists (use --overwrite to replace it)")
    if args.report and Path(args.report).exists() and not args.overwrite:
        raise CLIError(f"{args.report}: output exists (use --overwrite to replace it)")
    from monai_emma.io.outputs import check_output
    from monai_emma.io.volumes import input_kind
    from monai_emma.transforms.colour import COLORMAPS
    from monai_emma.transforms.registration import check_registration

    # everything that can be checked before anything is loaded (a volume takes seconds to fuse)
    check_registration(args.register)  # SimpleITK present
    for flag, name in (("--colormap", args.colormap), ("--overlay-colormap", args.overlay_colormap)):
        if name and name not in COLORMAPS:
            raise CLIError(f"{flag} {name!r}: unknown colour map; choose one of {', '.join(COLORMAPS)}")
    try:
        kinds = [input_kind(p) for p in (args.anatomical, args.other)]
        if fmt is not None:
            check_output(out, fmt, "image2d" not in kinds, kinds[0])
    except (ValueError, VolumeReadError) as err:
        raise CLIError(str(err)) from err
    a_series, b_series = _series_per_input(args)
    pct = _parse_range(args.percentiles, "--percentiles")
    mri_pct = _parse_range(args.mri_percentiles, "--mri-percentiles")
    if args.window and pct:
        raise CLIError("give --window or --percentiles, not both")
    if args.anatomical_window and mri_pct:
        raise CLIError("give --anatomical-window or --mri-percentiles, not both")
    window = _window(args.window, "--window")
    try:
        other_rule = window or (IntensityRule("percentile", *pct) if pct else None)
        a_rule = IntensityRule("percentile", *mri_pct) if mri_pct else None
    except ValueError as err:
        raise CLIError(str(err)) from err
    a_rule = _window(args.anatomical_window, "--anatomical-window") or a_rule
    net, source = _load_model(args)
    try:
        a = read_volume(args.anatomical, a_series)
        b = read_volume(args.other, b_series)
        if a.is_3d or b.is_3d:
            result = fuse_volumes(
                a,
                b,
                model=net,
                modality=args.modality,
                anatomical_modality=args.anatomical_modality,
                anatomical_rule=a_rule,
                other_rule=other_rule,
                device=args.device,
                batch_size=args.batch_size,
                amp=args.amp,
                stretch=args.stretch,
                progress=not args.quiet,
                zero_empty=not args.no_zero_empty,
                suv=args.suv,
                precision=args.precision,
                register=args.register,
            )
        else:
            if args.register != "none":
                raise CLIError("--register is for volumes; 2D slices (PNG, JPEG, ...) are fused as they are aligned")
            result = fuse_images(
                a,
                b,
                model=net,
                modality=args.modality,
                device=args.device,
                stretch=args.stretch,
                resize=args.resize,
                zero_empty=not args.no_zero_empty,
                precision=args.precision,
            )
        style = None
        if args.overlay:
            style = OverlayStyle(args.overlay_colormap, args.overlay_threshold, args.overlay_opacity)
        # everything computed before anything is written: no half-written outputs
        report = fidelity_report(result) if args.report or html_path else None
        page = None
        if html_path is not None:
            from monai_emma.viewer import viewer_html

            page = viewer_html(result, report)
        files = {}
        if not view_only:
            options = {"colormap": args.colormap, "preview": args.preview, "overlay": style}
            files = write_fusion(result, out, fmt=fmt, overwrite=args.overwrite, **options)
        if args.report:
            files["report"] = write_report(report, args.report)
        if page is not None:
            from monai_emma.io.atomic import atomic_path

            with atomic_path(html_path) as tmp:
                tmp.write_text(page, encoding="utf-8")
            files["viewer"] = html_path
    except (VolumeReadError, FusionError, FileExistsError, ValueError) as err:
        raise CLIError(str(err)) from err
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    what = f"{result.fused.shape[-1]} slices" if result.is_3d else "1 image"
    print(f"fused {what} in {result.seconds:.1f} s with {source}")
    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    if report is not None:
        print(report_line(report))
    return 0


def _add_fuse_arguments(p: argparse.ArgumentParser, view: bool = False) -> None:
    """The arguments of ``fuse`` and ``view`` (which writes the viewer page instead of images)."""
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
    p.add_argument("--modality", choices=["ct", "pet", "spect", "ir"], help="second modality (default: guessed)")
    p.add_argument("--series-uid", action="append", help="SeriesInstanceUID to read from a folder of several series")
    p.add_argument(
        "--window",
        help="intensity window of the second modality: LOW,HIGH (CT default: -100,300 HU; PET in SUV: e.g. 0,8) "
        "or a CT preset (head, brain, subdural, soft-tissue, lung, bone)",
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
        "default head: -100,300)",
    )
    suv = p.add_mutually_exclusive_group()
    suv.add_argument(
        "--suv",
        dest="suv",
        action="store_const",
        const="on",
        default="auto",
        help="PET DICOM in body-weight SUV, or an error naming the missing tag (default: when the tags allow)",
    )
    suv.add_argument("--no-suv", dest="suv", action="store_const", const="off", help="keep PET in stored units")
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
    _add_model_options(p)
    p.add_argument("--batch-size", type=_positive_int, help="slices per network call (default: 4 on CPU, 16 on CUDA)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--stretch", action="store_true", help="min-max stretch each fused slice (the papers' protocol)")
    p.add_argument("--resize", action="store_true", help="resize a 2D second image to the anatomical size")
    p.add_argument(
        "--register",
        choices=["none", "rigid", "affine"],
        default="none",
        help="align the second volume to the anatomical one first (separate studies; needs "
        "monai-emma[registration]); default none: the files' coordinates (hybrid scanners)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_phantom(args: argparse.Namespace) -> int:
    from monai_emma.data.phantom import write_phantom_dicom, write_phantom_nifti

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"{out}: folder exists and is not empty (use --overwrite)")
    kwargs = {"seed": args.seed, "head_mm": args.head_mm, "mri_spacing": args.mri_spacing}
    written = {}
    if args.format in ("nifti", "both"):
        written.update({f"{m} (NIfTI)": p for m, p in write_phantom_nifti(out / "nifti", **kwargs).items()})
    if args.format in ("dicom", "both"):
        written.update({f"{m} (DICOM)": p for m, p in write_phantom_dicom(out / "dicom", **kwargs).items()})
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from monai_emma.extras import require
    from monai_emma.model_source import ModelSourceError, resolve_fuser

    require("mlflow", "monai-emma register")
    from monai_emma.registry import register_fuser

    try:
        net, where = resolve_fuser(weights=args.weights, bundle=args.bundle, map_location="cpu")
    except ModelSourceError as err:
        raise CLIError(str(err)) from err
    uri, version = register_fuser(
        net, args.tracking_uri, model_name=args.name, alias=args.alias, experiment=args.experiment, source=where
    )
    print(f"registered {where} as {uri} (alias {args.alias}) in {args.tracking_uri}")
    print(f"serve it: mlflow models serve -m {uri} --env-manager local -h 127.0.0.1 -p 5000")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--weights",
        help="U-Fuser state dict or checkpoint, or a shipped set by name (v1, v2, v2.1; default: the shipped default)",
    )
    src.add_argument("--bundle", help="EMMA MONAI bundle folder (uses models/model.pt)")
    src.add_argument("--model-uri", help="MLflow model URI, e.g. models:/emma-ufuser@candidate")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --model-uri (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-zero-empty", action="store_true", help=ZERO_EMPTY_HELP)
    _add_precision_option(p, inference=True)


def _add_precision_option(p: argparse.ArgumentParser, inference: bool = False) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from monai_emma import __version__

    parser = argparse.ArgumentParser(
        prog="monai-emma", description="EMMA multi-modality image fusion (MRI with CT, PET, SPECT) for MONAI."
    )
    parser.add_argument("--version", action="version", version=f"monai-emma {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="fuse generated phantom slices and write a PNG montage")
    demo.add_argument("--output", default="emma-output", help="output folder (default: emma-output)")
    demo.add_argument("--size", type=int, default=256, help="slice size in pixels")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="train both EMMA stages (pseudo-sensors, then the U-Fuser) in-process")
    train.add_argument(
        "--data",
        required=True,
        action="append",
        help="Harvard-style (<PAIR>/<MOD>/n.png) or IVF-style root; repeat to train on several roots",
    )
    train.add_argument("--output", default="emma-runs/train", help="run folder (checkpoints, weights, history)")
    train.add_argument("--recipe", choices=["cpu", "paper"], help="default: paper on CUDA, cpu otherwise")
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--epochs", type=int, help="epochs of both stages")
    train.add_argument("--sensor-epochs", type=int)
    train.add_argument("--fuser-epochs", type=int)
    train.add_argument("--batch-size", type=int, help="batch size of both stages")
    train.add_argument("--sensor-lr", type=float, help="stage-1 learning rate")
    train.add_argument("--fuser-lr", type=float, help="stage-2 learning rate")
    train.add_argument("--seed", type=int)
    train.add_argument("--alpha", type=float, help="weight of the equivariance term (paper: 0.1)")
    train.add_argument(
        "--prior-weight", type=float, help="weight of the max-fidelity prior in stage 2 (not in the paper; 0: off)"
    )
    train.add_argument(
        "--sensors",
        choices=["lite", "paper", "identity"],
        help="pseudo-sensor preset; identity skips stage 1 (the no-pseudo-sensing ablation)",
    )
    train.add_argument("--rules", help="stage-1 fusion rules to mix, e.g. mean,max,laplacian")
    train.add_argument("--fused-dir", help="folder of fused images (any method) for stage 1 instead of rules")
    train.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting, e.g. fuser_patch_size=96, fuser_schedule=cosine, prior_gradient_weight=4",
    )
    train.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    _add_precision_option(train)
    train.add_argument("--restart", action="store_true", help="ignore existing checkpoints in --output")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="fuse a paired dataset with EMMA and classical rules; score and report")
    ev.add_argument("root", nargs="+", help="Harvard-style or IVF-style folder(s) of pairs")
    ev.add_argument(
        "--split",
        metavar="SPLIT_JSON",
        help="score only the validation pairs of a training run (its split.json; give the run's data roots)",
    )
    ev.add_argument(
        "--methods",
        default="emma,mean,max,laplacian,wavelet",
        help="comma-separated methods: emma, mean, max, laplacian, wavelet, and the learned peers ifcnn, densefuse",
    )
    ev.add_argument(
        "--ifcnn-weights",
        metavar="PTH",
        help="IFCNN-MAX snapshot for --methods ...,ifcnn (default: $EMMA_IFCNN_WEIGHTS; Code/snapshots/IFCNN-MAX.pth "
        "of github.com/uzeful/IFCNN, not shipped)",
    )
    ev.add_argument(
        "--densefuse-weights",
        metavar="MODEL",
        help="DenseFuse snapshot for --methods ...,densefuse (default: $EMMA_DENSEFUSE_WEIGHTS; "
        "models/densefuse_gray.model of github.com/hli1221/densefuse-pytorch, not shipped)",
    )
    ev.add_argument("--weights", help="U-Fuser state dict for emma (default: the shipped weights)")
    ev.add_argument("--output", default="emma-eval", help="report folder (default: emma-eval)")
    ev.add_argument("--grid-pairs", type=int, default=4, help="pairs in the comparison grid")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--mlflow-uri", help="also log the tables and grid to this MLflow tracking URI")
    ev.add_argument("--no-zero-empty", action="store_true", help=ZERO_EMPTY_HELP)
    _add_precision_option(ev)
    ev.set_defaults(func=_cmd_evaluate)

    fu = sub.add_parser(
        "fuse",
        help="fuse an anatomical image with CT/PET/SPECT: 2D images, NIfTI volumes or DICOM series",
        description="Fuse ANATOMICAL (MRI, visible) with OTHER (CT, PET, SPECT, infrared). Volumes are resampled "
        "onto the anatomical grid and fused slice by slice; the output keeps the anatomical geometry.",
    )
    _add_fuse_arguments(fu)
    fu.set_defaults(func=_cmd_fuse)

    vw = sub.add_parser(
        "view",
        help="fuse and write one self-contained HTML viewer (3 planes, sliders, overlay, fidelity chart)",
        description="Fuse ANATOMICAL with OTHER as `fuse` does and write only the viewer page: the anatomical "
        "image, the other modality, the fusion and the overlay in linked axial/coronal/sagittal views, with "
        "the per-slice fidelity chart. It opens offline in any browser.",
    )
    _add_fuse_arguments(vw, view=True)
    vw.set_defaults(func=_cmd_fuse, view_only=True)

    ph = sub.add_parser("phantom", help="write the synthetic head as co-registered MRI/CT/PET/SPECT (NIfTI, DICOM)")
    ph.add_argument("output", help="folder; gets nifti/<modality>.nii.gz and dicom/<modality>/ series")
    ph.add_argument("--format", choices=["nifti", "dicom", "both"], default="both")
    ph.add_argument("--head-mm", type=float, default=180.0, help="head width in mm (default 180)")
    ph.add_argument("--mri-spacing", type=float, default=1.0, help="MRI voxel size in mm (default 1)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--overwrite", action="store_true")
    ph.set_defaults(func=_cmd_phantom)

    rg = sub.add_parser(
        "register", help="log and register a U-Fuser in an MLflow model registry (as the pipeline does), to serve it"
    )
    src = rg.add_mutually_exclusive_group()
    src.add_argument("--weights", help="U-Fuser file or shipped set by name (default: the shipped default)")
    src.add_argument("--bundle", help="EMMA MONAI bundle folder (uses models/model.pt)")
    rg.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///emma-runs/mlflow.db")
    rg.add_argument("--name", default="emma-ufuser", help="registered model name (default: emma-ufuser)")
    rg.add_argument("--alias", default="candidate", help="alias set on the new version (default: candidate)")
    rg.add_argument("--experiment", default="emma", help="MLflow experiment of the logging run (default: emma)")
    rg.set_defaults(func=_cmd_register)

    ff = sub.add_parser(
        "fuse-folder", help="fuse pairs matched by file name: 2D images (PNG, JPEG, BMP, TIFF) or volumes (NIfTI...)"
    )
    ff.add_argument("anatomical_dir", help="folder of anatomical images or volumes (MRI, visible)")
    ff.add_argument("other_dir", help="folder of the other modality (CT, PET, SPECT, infrared)")
    ff.add_argument("output_dir", help="created if needed; one 8-bit <stem>.png per 2D pair, <stem>.nii.gz per volume")
    ff.add_argument(
        "--register",
        choices=["none", "rigid", "affine"],
        default="none",
        help="volumes: align each second volume to its anatomical one first (monai-emma[registration])",
    )
    ff.add_argument("--modality", choices=["ct", "pet", "spect", "ir"], help="optional; colour comes from the pixels")
    _add_model_options(ff)
    ff.add_argument("--stretch", action="store_true", help="min-max stretch each fused image (the papers' protocol)")
    ff.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ff.add_argument("--report", help="also write a per-pair fidelity report (JSON): where a modality is lost")
    ff.add_argument("--quiet", action="store_true", help="no progress bar")
    ff.set_defaults(func=_cmd_fuse_folder)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (so tests can call it in-process)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 1
    from monai_emma.extras import MissingExtraError

    try:
        return func(args)
    except (CLIError, MissingExtraError) as err:
        if args.debug:
            raise
        print(f"monai-emma: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("monai-emma: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # never a bare traceback for users; --debug shows it
        if args.debug:
            raise
        from monai_emma.errors import first_line

        print(
            f"monai-emma: error: {type(err).__name__}: {first_line(err, 200)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
