"""``p3m anonymize``: obfuscate the faces in images, verify, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from p3m.cli import CommandError, add_executor_options

# Mirrors p3m.privacy.METHODS and DEFAULT_THRESHOLD, kept here so that `p3m --help`
# does not import OpenCV (a test checks they agree).
METHODS = ("blur", "mosaic", "fill")
DEFAULT_THRESHOLD = 0.5


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "anonymize", help="blur, pixelate or fill the faces in images, and verify none is left",
        description="Detect faces, obfuscate them, and detect again on the result: an image in which a face "
                    "is still found is reported as not anonymized, is not written, and makes the command "
                    "exit with status 1. Outputs keep the input's format (JPEG at quality 95) without its "
                    "metadata.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("-o", "--out-dir", dest="output", required=True, metavar="OUT",
                        help="output folder; the inputs' relative paths are mirrored under it")
    parser.add_argument("--method", choices=METHODS, default="blur",
                        help="blur: the P3M-10k look (default); mosaic: large blocks; fill: flat gray")
    parser.add_argument("--masks", metavar="DIR",
                        help="also write a face mask per image here (PNG, 255 on faces, 0 elsewhere)")
    parser.add_argument("--report", metavar="FILE", help="write a JSON report with one entry per input")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="T",
                        help=f"face detection score threshold in (0, 1) (default {DEFAULT_THRESHOLD}); "
                             "lower finds more faces")
    parser.add_argument("--dataset", action="store_true",
                        help="INPUT is one folder: write a P3M-10k tree OUT/blurred_image/ and OUT/facemask/, "
                             "and copy the alpha mattes in INPUT/mask/ (skipped as inputs) of the images written "
                             "to OUT/mask/")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(parser)
    parser.set_defaults(handler=run)


def _plan(args) -> tuple[list, list, list, list]:
    """(pairs, outputs, masks, alpha copies) for the chosen layout.

    An alpha copy is (source, target, key): the matte is copied only when the
    image whose relative path without suffix is ``key`` was written.
    """
    from p3m.inputs import check_output_folder, collect_inputs, output_paths

    out = Path(args.output)
    try:
        check_output_folder(out, args.inputs)
        if args.masks:
            check_output_folder(args.masks, args.inputs)
        if args.dataset:
            if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
                raise CommandError("--dataset takes exactly one folder as INPUT")
            if args.masks:
                raise CommandError("--masks cannot be combined with --dataset (face masks go to OUT/facemask/)")
            root = Path(args.inputs[0])
            pairs = [pair for pair in collect_inputs([str(root)]) if pair[1].parts[0] != "mask"]
            if not pairs:
                raise CommandError(f"{root}: no images outside its mask/ folder")
            alphas = collect_inputs([str(root / "mask")]) if (root / "mask").is_dir() else []
            alpha_copies = [(source, target, relative.with_suffix(""))
                            for (source, relative), target in zip(alphas, output_paths(alphas, out / "mask"))]
            return (pairs, output_paths(pairs, out / "blurred_image"),
                    output_paths(pairs, out / "facemask", ".png"), alpha_copies)
        pairs = collect_inputs(args.inputs)
        outputs = output_paths(pairs, out)
        masks = output_paths(pairs, args.masks, ".png") if args.masks else [None] * len(pairs)
        targets = {os.path.realpath(path) for path in outputs}
        clash = next((mask for mask in masks if mask is not None and os.path.realpath(mask) in targets), None)
        if clash is not None:
            raise CommandError(f"face mask {clash} would replace an anonymized image; "
                               "give --masks a folder apart from -o")
        return pairs, outputs, masks, []
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


def _copy(source: Path, target: Path, root: Path) -> None:
    import shutil

    from p3m.io import RunInputs, atomic_write

    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), root=root, inputs=RunInputs([source]))


def _check_report(args, pairs, outputs, masks, alpha_copies) -> None:
    """Refuse a --report that would replace an input or one of the run's outputs."""
    from p3m.io import RunInputs, UnsafeOutputError, check_destination

    protected = RunInputs([source for source, _ in pairs] + list(outputs) + [m for m in masks if m is not None]
                          + [source for source, _, _ in alpha_copies] + [target for _, target, _ in alpha_copies])
    try:
        check_destination(args.report, inputs=protected)
    except UnsafeOutputError:
        raise CommandError(f"--report {args.report} is an input or an output of this run; "
                           "choose another file for the report") from None


def _guard_folders(outputs: list, out_root: Path, masks_root: Path | None, masks: list) -> dict:
    """Create each output's folder without following links; a refused destination maps to its reason."""
    from p3m.io import OutputFolder, UnsafeOutputError

    refused = {}
    for root, paths in ((out_root, outputs), (masks_root, masks)):
        if root is None:
            continue
        folder = OutputFolder(root)
        for path in paths:
            if path is None:
                continue
            try:
                folder.check(path)
                folder.mkdir(Path(path).parent)
            except (UnsafeOutputError, OSError) as error:
                refused[path] = str(error)
    return refused


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold < 1.0:
        raise CommandError(f"--threshold must be between 0 and 1, got {args.threshold}")
    pairs, outputs, masks, alpha_copies = _plan(args)
    if args.report:
        _check_report(args, pairs, outputs, masks, alpha_copies)

    from tqdm import tqdm

    from p3m import privacy
    from p3m.executors import ExecutorError, create_executor

    try:
        executor = create_executor(args.executor, args.ray_address, args.workers)
    except ValueError as error:
        raise CommandError(str(error)) from None
    reports = []
    refused = _guard_folders(outputs, Path(args.output), Path(args.masks) if args.masks else None, masks)
    jobs = [(source, output, mask, refused.get(output) or refused.get(mask))
            for (source, _), output, mask in zip(pairs, outputs, masks)]
    interrupted = False
    try:
        with executor:
            for report in executor.map(privacy.AnonymizeSetup(args.method, args.threshold), jobs,
                                       progress=not args.quiet and len(jobs) > 1):
                if not report.ok:
                    tqdm.write(f"error: {report.error}", file=sys.stderr)
                reports.append(report)
    except KeyboardInterrupt:
        interrupted = True
    except (privacy.DetectorError, ExecutorError) as error:
        raise CommandError(str(error)) from None

    # Only the mattes of written images, so that OUT stays a paired tree.
    written = {relative.with_suffix("") for (_, relative), report in zip(pairs, reports) if report.output is not None}
    copies = [(source, target) for source, target, key in alpha_copies if key in written]
    copy_failures = 0
    for source, target in ([] if interrupted else copies):
        try:
            _copy(source, target, Path(args.output))
        except (OSError, ValueError) as error:
            copy_failures += 1
            print(f"error: {source}: cannot copy to {target} ({getattr(error, 'strerror', None) or error})",
                  file=sys.stderr)

    if args.report:
        from p3m.io import write_text

        entries = [report.to_dict() for report in reports]
        try:
            write_text(args.report, json.dumps(entries, indent=2) + "\n")
        except OSError as error:
            raise CommandError(f"{args.report}: cannot write report ({error.strerror or error})") from None

    summary = privacy.summarize(reports)
    if interrupted:
        print(f"p3m anonymize: interrupted after {len(reports)} of {len(jobs)} images: {summary} -> {args.output}",
              file=sys.stderr)
        return 130
    if alpha_copies:
        summary += f"; {len(copies) - copy_failures} of {len(alpha_copies)} mattes copied to mask/"
        if len(copies) < len(alpha_copies):
            summary += f" ({len(alpha_copies) - len(copies)} left out: no image written for them)"
    print(f"p3m anonymize: {summary} -> {args.output}", file=sys.stderr)
    return 0 if all(report.ok for report in reports) and not copy_failures else 1
