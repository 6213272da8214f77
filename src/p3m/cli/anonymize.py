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
        "anonymize", help="blur, pixelate or fill the faces in images and videos, and verify none is left",
        description="Detect faces in every frame as a viewer sees it, obfuscate them, and detect again on the "
                    "result: a file in which a face is still found is reported as not anonymized, is not "
                    "written (an earlier output of it is removed), and makes the command exit with status 1. "
                    "Images keep their format (JPEG at quality 95) and frames, in sRGB, without metadata. "
                    "Videos become H.264 MP4s with the source's timestamps and audio (re-encoded to AAC) and no "
                    "metadata; faces are tracked across frames, so a face the detector misses for a few frames stays "
                    "hidden, and every frame of the written video is checked.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image and video files, folders (searched recursively) or glob patterns")
    parser.add_argument("-o", "--out-dir", dest="output", required=True, metavar="OUT",
                        help="output folder; the inputs' relative paths are mirrored under it")
    parser.add_argument("--method", choices=METHODS, default="blur",
                        help="blur: the P3M-10k look (default); mosaic: large blocks; fill: flat gray")
    parser.add_argument("--masks", metavar="DIR",
                        help="also write a face mask per image here (PNG, 255 on faces, 0 elsewhere; not for videos)")
    parser.add_argument("--strip-audio", action="store_true",
                        help="videos: drop the audio (by default it is kept, re-encoded to AAC)")
    parser.add_argument("--report", metavar="FILE",
                        help="write a report with one entry per input: JSON, or with FILE.html an audit page "
                             "(thumbnails of the outputs, faces found, verification)")
    parser.add_argument("--audit-originals", action="store_true",
                        help="the HTML report also shows a thumbnail of each original (its faces included)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="T",
                        help=f"face detection score threshold in (0, 1) (default {DEFAULT_THRESHOLD}); "
                             "lower finds more faces")
    parser.add_argument("--verify-threshold", type=float, metavar="T",
                        help="score threshold of the check on the outputs (default: the lower of --threshold and "
                             f"{DEFAULT_THRESHOLD}, so a raised --threshold never loosens the check)")
    parser.add_argument("--dataset", action="store_true",
                        help="INPUT is one folder: write a P3M-10k tree OUT/blurred_image/ and OUT/facemask/, "
                             "and the alpha mattes in INPUT/mask/ (skipped as inputs; single-channel 8/16-bit, "
                             "the photo's size, no face in them) re-encoded as PNG to OUT/mask/")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(parser)
    parser.set_defaults(handler=run)


def _plan(args) -> tuple[list, list, list, list]:
    """(pairs, outputs, masks, mattes) for the chosen layout.

    ``mattes`` has one (source, PNG target) per pair in dataset mode, or
    None where the image has no matte; it is empty otherwise.
    """
    from p3m.inputs import check_output_folder, collect_inputs, output_paths
    from p3m.io.video import is_video_file

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
            by_key = {relative.with_suffix(""): source for source, relative in alphas}
            targets = output_paths(pairs, out / "mask", ".png")
            mattes = [(by_key[relative.with_suffix("")], target) if relative.with_suffix("") in by_key else None
                      for (_, relative), target in zip(pairs, targets)]
            return (pairs, output_paths(pairs, out / "blurred_image"),
                    output_paths(pairs, out / "facemask", ".png"), mattes)
        pairs = collect_inputs(args.inputs)
        outputs = _outputs(pairs, out)
        masks = output_paths(pairs, args.masks, ".png") if args.masks else [None] * len(pairs)
        masks = [None if is_video_file(source) else mask for (source, _), mask in zip(pairs, masks)]
        targets = {os.path.realpath(path) for path in outputs}
        clash = next((mask for mask in masks if mask is not None and os.path.realpath(mask) in targets), None)
        if clash is not None:
            raise CommandError(f"face mask {clash} would replace an anonymized image; "
                               "give --masks a folder apart from -o")
        return pairs, outputs, masks, []
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


def _outputs(pairs: list, out: Path) -> list[Path]:
    """Each input's output under ``out``: images keep their name, videos become ``.mp4``
    (an image's name never ends in a video suffix, so the two never collide).

    Raises:
        ValueError: two inputs would share an output, or an output would replace an input.
    """
    from p3m.inputs import output_paths
    from p3m.io.video import is_video_file
    from p3m.privacy.video import VIDEO_SUFFIX

    videos = [is_video_file(source) for source, _ in pairs]
    images = iter(output_paths([pair for pair, video in zip(pairs, videos) if not video], out))
    clips = iter(output_paths([pair for pair, video in zip(pairs, videos) if video], out, VIDEO_SUFFIX))
    return [next(clips) if video else next(images) for video in videos]


def _report_guard(args, pairs, outputs, masks, mattes):
    """The files --report may not replace (the run's inputs and outputs); refused up front when it would."""
    from p3m.io import RunInputs, UnsafeOutputError, check_destination

    protected = RunInputs([source for source, _ in pairs] + list(outputs) + [m for m in masks if m is not None]
                          + [path for matte in mattes if matte is not None for path in matte])
    try:
        check_destination(args.report, inputs=protected)
    except UnsafeOutputError:
        raise CommandError(f"--report {args.report} is an input or an output of this run; "
                           "choose another file for the report") from None
    return protected


def _output_folders(args, pairs: list, mattes: list):
    """The guarded folders of the run: OUT, and the face masks' (OUT itself in dataset mode), both
    protecting every file the run reads (images, videos and dataset mattes)."""
    from p3m.io import OutputFolder, RunInputs, UnsafeOutputError

    inputs = RunInputs([source for source, _ in pairs] + [matte[0] for matte in mattes if matte is not None])
    try:
        out = OutputFolder(args.output, inputs)
        return out, OutputFolder(args.masks, inputs) if args.masks else out
    except UnsafeOutputError as error:
        raise CommandError(str(error)) from None


def _guard_folders(out_folder, outputs: list, masks_folder, masks: list) -> dict:
    """Create each output's folder without following links; a refused destination maps to its reason."""
    from p3m.io import UnsafeOutputError

    refused = {}
    for folder, paths in ((out_folder, outputs), (masks_folder, masks)):
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
    for name in ("threshold", "verify_threshold"):
        value = getattr(args, name)
        if value is not None and not 0.0 < value < 1.0:
            raise CommandError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    html_report = bool(args.report) and os.path.splitext(args.report)[1].lower() in (".html", ".htm")
    if args.audit_originals and not html_report:
        raise CommandError("--audit-originals needs an HTML --report (FILE.html)")
    pairs, outputs, masks, mattes = _plan(args)
    protected = _report_guard(args, pairs, outputs, masks, mattes) if args.report else None
    out_folder, masks_folder = _output_folders(args, pairs, mattes)

    from tqdm import tqdm

    from p3m import privacy
    from p3m.executors import ExecutorError, create_executor
    from p3m.io.video import is_video_file
    from p3m.privacy.video import MediaAnonymizeSetup, summarize_media

    try:
        executor = create_executor(args.executor, args.ray_address, args.workers)
    except ValueError as error:
        raise CommandError(str(error)) from None
    reports = []
    job_mattes = mattes or [None] * len(pairs)
    matte_targets = [matte[1] if matte is not None else None for matte in job_mattes]
    refused = _guard_folders(out_folder, outputs + matte_targets, masks_folder, masks)
    if args.dataset:
        refused.update({output: f"{source}: a video cannot go into a --dataset tree (P3M-10k holds images); "
                                "anonymize videos without --dataset"
                        for (source, _), output in zip(pairs, outputs) if is_video_file(source)})
    jobs = [(source, output, mask, refused.get(output) or refused.get(mask) or refused.get(target), matte)
            for (source, _), output, mask, matte, target in zip(pairs, outputs, masks, job_mattes, matte_targets)]
    interrupted = False
    try:
        with executor:
            setup = MediaAnonymizeSetup(args.method, args.threshold, args.verify_threshold, outputs=out_folder,
                                        masks=masks_folder, strip_audio=args.strip_audio,
                                        frame_progress=not args.quiet and args.executor == "local")
            for report in executor.map(setup, jobs, progress=not args.quiet and len(jobs) > 1):
                if not report.ok:
                    tqdm.write(f"error: {report.error}", file=sys.stderr)
                reports.append(report)
    except KeyboardInterrupt:
        interrupted = True
    except (privacy.DetectorError, ExecutorError) as error:
        raise CommandError(str(error)) from None

    if args.report:
        from p3m.io import write_text

        if html_report:
            from p3m.reports.anonymize import anonymize_page

            text = anonymize_page(reports, f"{' '.join(args.inputs)} -> {args.output}", args.audit_originals)
        else:
            text = json.dumps([report.to_dict() for report in reports], indent=2) + "\n"
        try:
            write_text(args.report, text, inputs=protected)
        except OSError as error:
            raise CommandError(f"{args.report}: cannot write report ({error.strerror or error})") from None
        except ValueError as error:  # UnsafeOutputError
            raise CommandError(str(error)) from None

    summary = summarize_media(reports)
    if interrupted:
        print(f"p3m anonymize: interrupted after {len(reports)} of {len(jobs)} files: {summary} -> {args.output}",
              file=sys.stderr)
        return 130
    if mattes:
        written = sum(matte is not None and report.ok for matte, report in zip(mattes, reports))
        summary += f"; {written} mattes written to mask/"
    print(f"p3m anonymize: {summary} -> {args.output}", file=sys.stderr)
    return 0 if all(report.ok for report in reports) else 1

