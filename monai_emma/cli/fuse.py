"""``monai-emma fuse`` (and ``view``): fuse an anatomical image with CT, PET or SPECT.

Every option is checked in :meth:`FuseCommand.check` before anything is read: formats, colour
maps, windows that cannot apply, 2D/3D mismatches, and every output (``-o`` and its renderings,
``--preview``, the registration's ``.tfm``, ``--report``, ``--html``). The outputs are then
written all-or-nothing through one :class:`~monai_emma.io.atomic.OutputSet`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from monai_emma.cli.base import CLIError, Command, parse_range, status
from monai_emma.cli.options import add_fuse_arguments, load_model

__all__ = ["FuseCommand", "ViewCommand"]

#: options that scale volumes; 2D images (8-bit, or 16-bit by their own range) take none of them
_VOLUME_ONLY = {
    "--window": "window",
    "--anatomical-window": "anatomical_window",
    "--percentiles": "percentiles",
    "--mri-percentiles": "mri_percentiles",
    "--anatomical-modality": "anatomical_modality",
    "--series-uid": "series_uid",
}

#: which option asked for each output of write_fusion
_FLAGS = {
    "fused": "-o",
    "colour": "--colormap",
    "overlay": "--overlay",
    "preview": "--preview",
    "transform": "--register",
}


class FuseCommand(Command):
    name = "fuse"
    help = "fuse an anatomical image with CT/PET/SPECT: 2D images, NIfTI volumes or DICOM series"
    description = (
        "Fuse ANATOMICAL (MRI, visible) with OTHER (CT, PET, SPECT, infrared). Volumes are resampled onto the "
        "anatomical grid and fused slice by slice; the output keeps the anatomical geometry. Nothing is written "
        "until everything has been computed, and then every output or none."
    )
    view_only = False  # `view`: the viewer page is the only output

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_fuse_arguments(p, view=self.view_only)

    # -- checks: everything that can be refused before an input is read ----------------------------
    def check(self, args: argparse.Namespace) -> None:
        from monai_emma.io.atomic import OutputError, OutputSet
        from monai_emma.io.outputs import check_output, fusion_targets, output_format
        from monai_emma.io.volumes import VolumeReadError, input_kind
        from monai_emma.transforms.colour import COLORMAPS
        from monai_emma.transforms.registration import check_registration

        self.html = Path(args.output) if self.view_only else (Path(args.html) if args.html else None)
        if self.html is not None and self.html.suffix.lower() not in (".html", ".htm"):
            raise CLIError(f"{self.html}: the viewer page is an .html file")
        if args.viewer_voxel_mm is not None and not args.viewer_voxel_mm > 0:
            raise CLIError(f"--viewer-voxel-mm {args.viewer_voxel_mm:g}: must be positive")
        try:
            self.fmt = None if self.view_only else output_format(args.output, args.output_format)
        except ValueError as err:
            raise CLIError(str(err)) from err
        try:
            check_registration(args.register)  # SimpleITK present
        except ValueError as err:
            raise CLIError(str(err)) from err
        for flag, name in (("--colormap", args.colormap), ("--overlay-colormap", args.overlay_colormap)):
            if name and name not in COLORMAPS:
                raise CLIError(f"{flag} {name!r}: unknown colour map; choose one of {', '.join(COLORMAPS)}")
        try:
            kinds = [input_kind(p) for p in (args.anatomical, args.other)]
        except VolumeReadError as err:
            raise CLIError(str(err)) from err
        flat = [k == "image2d" for k in kinds]
        if flat[0] != flat[1]:  # the same message whichever input is the 2D one
            image = args.anatomical if flat[0] else args.other
            raise CLIError(f"{image}: a 2D image cannot be fused with a 3D volume; give two 2D images or two volumes")
        self.is_3d = not flat[0]
        if self.fmt is not None:
            try:
                check_output(args.output, self.fmt, self.is_3d, kinds[0])
            except ValueError as err:
                raise CLIError(str(err)) from err
        self._check_scaling(args)
        self.outputs = OutputSet(overwrite=args.overwrite)
        try:
            if not self.view_only:
                targets = fusion_targets(
                    args.output,
                    self.fmt,
                    colour=bool(args.colormap),
                    overlay=args.overlay,
                    preview=args.preview,
                    registered=args.register != "none",
                )
                for label, path in targets.items():
                    self.outputs.add(path, _FLAGS[label], directory=label == "fused" and self.fmt == "dicom")
            if args.report:
                self.outputs.add(args.report, "--report")
            if self.html is not None:
                self.outputs.add(self.html, "-o" if self.view_only else "--html")
            self.outputs.check()
        except OutputError as err:
            raise CLIError(str(err)) from err

    def _check_scaling(self, args: argparse.Namespace) -> None:
        """Windows, percentiles and the options that only volumes take; sets the intensity rules."""
        from monai_emma.transforms.intensity import IntensityRule, ct_window

        if not self.is_3d:
            given = [flag for flag, attr in _VOLUME_ONLY.items() if getattr(args, attr)]
            given += ["--suv"] if args.suv == "on" else []
            given += ["--register"] if args.register != "none" else []
            if given:
                raise CLIError(
                    f"{given[0]} is for volumes; 2D images (PNG, JPEG, ...) are scaled by their bit depth and fused "
                    "as they are aligned"
                )
        elif args.resize:
            raise CLIError("--resize is for 2D images; volumes are resampled onto the anatomical grid")
        pct = parse_range(args.percentiles, "--percentiles")
        mri_pct = parse_range(args.mri_percentiles, "--mri-percentiles")
        if args.window and pct:
            raise CLIError("give --window or --percentiles, not both")
        if args.anatomical_window and mri_pct:
            raise CLIError("give --anatomical-window or --mri-percentiles, not both")

        def window(text: str | None, flag: str, hounsfield: bool = False) -> IntensityRule | None:
            if not text:
                return None
            try:
                rule = ct_window(text)
            except ValueError as err:
                raise CLIError(f"{flag} {err}") from err
            return dataclasses.replace(rule, units="HU" if hounsfield else rule.units, label=f"{flag} {text}")

        other = window(args.window, "--window")
        if other is not None and other.units == "HU" and args.modality in ("pet", "spect", "ir"):
            raise CLIError(
                f"--window {args.window}: a CT window preset in HU, but the second image is {args.modality.upper()}; "
                "give LOW,HIGH in its own units (SUV or stored values) or --percentiles"
            )
        base = window(args.anatomical_window, "--anatomical-window", hounsfield=True)
        if base is not None and args.anatomical_modality == "mri":
            raise CLIError(
                f"--anatomical-window {args.anatomical_window}: for a CT base only, and the anatomical image is MRI "
                "(--anatomical-modality mri); use --mri-percentiles"
            )
        try:
            self.other_rule = other or (IntensityRule("percentile", *pct) if pct else None)
            self.anatomical_rule = base or (IntensityRule("percentile", *mri_pct) if mri_pct else None)
        except ValueError as err:
            raise CLIError(str(err)) from err

    # -- the work --------------------------------------------------------------------------------
    def run(self, args: argparse.Namespace) -> int:
        from monai_emma.fusion import FusionError
        from monai_emma.io.atomic import OutputError
        from monai_emma.io.volumes import VolumeReadError

        series = _series_per_input(args)
        quiet = args.quiet or not self.is_3d  # a 2D pair takes a second: no progress lines
        try:
            with self.outputs.reserve():  # every output proven writable before an input is read
                net, source = load_model(args)
                result = self._fuse(args, net, series)
                report = page = None
                if args.report or self.html is not None:
                    from monai_emma.fidelity import fidelity_report

                    report = fidelity_report(result, progress=not quiet)  # a bar over the slices
                if self.html is not None:
                    from monai_emma.viewer import viewer_html

                    status("viewer page", quiet)
                    page = viewer_html(result, report, voxel_mm=args.viewer_voxel_mm)
                status(f"writing {len(self.outputs.targets)} output(s)", quiet)
                files = self._write(args, result, report, page)
                self.outputs.commit(set(files.values()))
        except (VolumeReadError, FusionError, OutputError, FileExistsError) as err:
            raise CLIError(str(err)) from err
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        what = f"{result.fused.shape[-1]} slices" if result.is_3d else "1 image"
        print(f"fused {what} in {result.seconds:.1f} s with {source}")
        for kind, path in files.items():
            if kind == "viewer":  # with its size: pages of volumes run to megabytes
                from monai_emma.viewer import describe_page

                path = path.parent / describe_page(path)
            print(f"wrote {kind}: {path}")
        if report is not None:
            from monai_emma.fidelity import report_line

            print(report_line(report))
        return 0

    def _fuse(self, args: argparse.Namespace, net, series):
        from monai_emma.fusion import fuse_images, fuse_volumes
        from monai_emma.io.volumes import read_volume

        a = read_volume(args.anatomical, series[0])
        b = read_volume(args.other, series[1])
        common = {
            "model": net,
            "modality": args.modality,
            "device": args.device,
            "stretch": args.stretch,
            "zero_empty": not args.no_zero_empty,
            "precision": args.precision,
        }
        if not self.is_3d:
            return fuse_images(a, b, resize=args.resize, **common)
        return fuse_volumes(
            a,
            b,
            anatomical_modality=args.anatomical_modality,
            anatomical_rule=self.anatomical_rule,
            other_rule=self.other_rule,
            batch_size=args.batch_size,
            amp=args.amp,
            progress=not args.quiet,
            suv=args.suv,
            register=args.register,
            **common,
        )

    def _write(self, args: argparse.Namespace, result, report, page: str | None) -> dict[str, Path]:
        """Every output to its temporary (the caller commits them); an ``OSError`` (a full disk,
        permissions) becomes one line naming the user's path."""
        from monai_emma.io.atomic import OutputError
        from monai_emma.io.outputs import OverlayStyle, write_fusion

        files: dict[str, Path] = {}
        if not self.view_only:
            style = None
            if args.overlay:
                style = OverlayStyle(args.overlay_colormap, args.overlay_threshold, args.overlay_opacity)
            options = {"colormap": args.colormap, "preview": args.preview, "overlay": style}
            try:
                files = write_fusion(
                    result, args.output, fmt=self.fmt, overwrite=True, stage=self.outputs.path, **options
                )
            except OSError as err:
                raise OutputError(self.outputs.describe(err, default=Path(args.output))) from None
        if args.report:
            from monai_emma.fidelity import write_report

            files["report"] = self._into(Path(args.report), lambda tmp: write_report(report, tmp))
        if page is not None:
            files["viewer"] = self._into(self.html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        return files

    def _into(self, target: Path, write) -> Path:
        """``write(temporary)`` for one output; an ``OSError`` names ``target``."""
        from monai_emma.io.atomic import OutputError

        try:
            write(self.outputs.path(target))
        except OSError as err:
            raise OutputError(f"{target}: cannot be written: {err.strerror or err}") from None
        return target


class ViewCommand(FuseCommand):
    name = "view"
    help = "fuse and write one self-contained HTML viewer (3 planes, sliders, overlay, fidelity chart)"
    description = (
        "Fuse ANATOMICAL with OTHER as `fuse` does and write only the viewer page: the anatomical image, the other "
        "modality, the fusion and the overlay in linked axial/coronal/sagittal views, with the per-slice fidelity "
        "chart. It opens offline in any browser."
    )
    view_only = True


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
