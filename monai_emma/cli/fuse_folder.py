"""``monai-emma fuse-folder``: fuse pairs matched by file name, 2D images or volumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monai_emma.cli.base import CLIError, Command
from monai_emma.cli.options import add_model_options, add_register_option, load_model

__all__ = ["FuseFolderCommand", "list_volumes"]


def list_volumes(folder: Path) -> dict[str, Path]:
    """Volume files of a folder by name without suffix (``sub-01.nii.gz`` -> ``sub-01``), sorted."""
    from monai_emma.io.volumes import VOLUME_SUFFIXES

    out = {}
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        suffix = next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)
        if p.is_file() and suffix and suffix not in (".img", ".rec"):  # Analyze and PAR/REC by their headers
            out[p.name[: -len(suffix)]] = p
    return out


class FuseFolderCommand(Command):
    name = "fuse-folder"
    help = "fuse pairs matched by file name: 2D images (PNG, JPEG, BMP, TIFF) or volumes (NIfTI...)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("anatomical_dir", help="folder of anatomical images or volumes (MRI, visible)")
        p.add_argument("other_dir", help="folder of the other modality (CT, PET, SPECT, infrared)")
        p.add_argument(
            "output_dir", help="created if needed; one 8-bit <stem>.png per 2D pair, <stem>.nii.gz per volume"
        )
        add_register_option(p, folder=True)
        p.add_argument(
            "--modality", choices=["ct", "pet", "spect", "ir"], help="optional; colour comes from the pixels"
        )
        add_model_options(p)
        p.add_argument("--stretch", action="store_true", help="min-max stretch each fused image (the papers' protocol)")
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        p.add_argument("--report", help="also write a per-pair fidelity report (JSON): where a modality is lost")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def check(self, args: argparse.Namespace) -> None:
        from monai_emma.data.pairs import list_images
        from monai_emma.io.atomic import OutputError, OutputSet
        from monai_emma.transforms.registration import check_registration

        a_dir, b_dir, out_dir = Path(args.anatomical_dir), Path(args.other_dir), Path(args.output_dir)
        for d in (a_dir, b_dir):
            if not d.is_dir():
                raise CLIError(f"{d}: no such folder")
        if out_dir.exists() and not out_dir.is_dir():
            raise CLIError(f"{out_dir}: is a file; fuse-folder writes into a folder")
        self.volumes = not list_images(a_dir) and bool(list_volumes(a_dir))
        if self.volumes:
            check_registration(args.register)
            if args.report:
                raise CLIError("--report of fuse-folder is for 2D pairs; for volumes use fuse --report per pair")
        elif args.register != "none":
            raise CLIError("--register is for volumes; 2D slices (PNG, ...) are fused as they are aligned")
        self.report_modality = None
        if args.report:
            modality = (args.modality or b_dir.name).lower()
            if modality not in ("ct", "pet", "spect", "ir"):
                raise CLIError(
                    f"--report needs the second modality: give --modality (the folder {b_dir.name} does not say)"
                )
            self.report_modality = modality
        self.outputs = OutputSet(overwrite=args.overwrite)
        try:
            if args.report:
                self.outputs.add(args.report, "--report")
            self.outputs.check()
        except OutputError as err:
            raise CLIError(str(err)) from err

    def run(self, args: argparse.Namespace) -> int:
        if self.volumes:
            return self._run_volumes(args)
        return self._run_images(args)

    def _run_images(self, args: argparse.Namespace) -> int:
        import numpy as np
        from tqdm.auto import tqdm

        from monai_emma.data.pairs import PairDataError, list_images, read_image
        from monai_emma.fuse2d import fuse_slice_pair, luminance, network_fuser
        from monai_emma.io.atomic import OutputError
        from monai_emma.io.png import save_png
        from monai_emma.precision import auto_note, resolve_precision

        a_dir, b_dir, out_dir = Path(args.anatomical_dir), Path(args.other_dir), Path(args.output_dir)
        ia, ib = list_images(a_dir), list_images(b_dir)
        stems = _matched(ia, ib, a_dir, b_dir, "images", out_dir, ".png", args.overwrite)
        report = bank = None
        if self.report_modality:
            from monai_emma.fidelity import FidelityReport, default_sensors

            modality = self.report_modality
            report = FidelityReport(("vis" if modality == "ir" else "mri", modality))
            bank = default_sensors()
        net, _ = load_model(args)
        precision = resolve_precision(args.precision, args.device)
        if note := auto_note(args.precision, args.device):
            print(f"note: {note}", file=sys.stderr)
        fuse = network_fuser(net, args.device, zero_empty=not args.no_zero_empty, precision=precision)
        out_dir.mkdir(parents=True, exist_ok=True)
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
                from monai_emma.fidelity import slice_fidelity

                fused_y = luminance(np.moveaxis(image, -1, 0) if image.ndim == 3 else image[None])
                scores = slice_fidelity(fused_y, luminance(a_img), luminance(b_img), report.modalities, bank)
                report.slices.append({"index": index, "name": stem, **scores})
        print(f"wrote {len(stems)} fused image(s) to {out_dir}")
        if report is not None:
            from monai_emma.fidelity import report_line, write_report

            try:
                with self.outputs.reserve():
                    write_report(report, self.outputs.path(args.report))
                    self.outputs.commit()
            except OutputError as err:
                raise CLIError(str(err)) from err
            except OSError as err:
                raise CLIError(self.outputs.describe(err)) from err
            print(f"wrote report: {args.report}")
            print(report_line(report, unit="pairs"))
        return 0

    def _run_volumes(self, args: argparse.Namespace) -> int:
        """``<stem>.nii.gz`` per pair matched by name (with ``--register``, its ``.tfm`` beside it).
        Each output is written whole or not at all; a failing pair stops the run with one line, and
        the pairs before it stay written."""
        from tqdm.auto import tqdm

        from monai_emma.fusion import FusionError, fuse_volumes
        from monai_emma.io.outputs import write_fusion
        from monai_emma.io.volumes import VolumeReadError

        a_dir, b_dir, out_dir = Path(args.anatomical_dir), Path(args.other_dir), Path(args.output_dir)
        va, vb = list_volumes(a_dir), list_volumes(b_dir)
        stems = _matched(va, vb, a_dir, b_dir, "volumes", out_dir, ".nii.gz", args.overwrite)
        net, source = load_model(args)
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


def _matched(
    a: dict[str, Path], b: dict[str, Path], a_dir: Path, b_dir: Path, what: str, out_dir: Path, suffix: str, overwrite
) -> list[str]:
    """The stems both folders have (a note names the ones without a partner); their outputs
    ``<out_dir>/<stem><suffix>`` must not exist unless ``overwrite``."""
    stems = sorted(set(a) & set(b))
    if not stems:
        raise CLIError(f"{a_dir} and {b_dir}: no {what} with matching names")
    missing = sorted(set(a) ^ set(b))
    if missing:
        print(f"note: {len(missing)} file(s) without a partner skipped: {', '.join(missing[:5])}", file=sys.stderr)
    existing = [s for s in stems if (out_dir / f"{s}{suffix}").exists()]
    if existing and not overwrite:
        raise CLIError(f"{out_dir}: {len(existing)} output(s) exist, e.g. {existing[0]}{suffix} (use --overwrite)")
    return stems
