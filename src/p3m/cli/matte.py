"""``p3m matte INPUT... -o OUT``: alpha mattes, cutouts and composites for image and video files and folders."""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

from p3m.cli import CommandError, add_engine_options, add_executor_options, model_errors


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "matte", help="matte portraits: alpha, RGBA cutout, composite",
        description="Matte portrait images and videos with P3M-Net. Outputs go to OUT/<kind>/, mirroring the "
                    "inputs' relative paths: PNG for images; for videos MP4 (alpha, trimap, composite with the "
                    "audio) and ProRes 4444 MOV (rgba, with the audio). Existing outputs are skipped unless "
                    "--overwrite.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image and video files, folders (recursive), globs or http(s) URLs")
    parser.add_argument("-o", "--out-dir", dest="out_dir", required=True, type=Path, metavar="OUT",
                        help="output folder")
    parser.add_argument("--model", default="resnet34", help="resnet34 (default), vitae-s or swin-t")
    parser.add_argument("--weights", type=Path, help="a local checkpoint instead of the official weights")
    parser.add_argument("--method", default="hybrid", type=str.lower, choices=("hybrid", "resize"),
                        help="hybrid: global 1/2 + local full scale (default); resize: one pass at 1/2")
    parser.add_argument("--max-size", "--input-size", dest="max_size", type=int, default=1600, metavar="N",
                        help="per-side cap of a network pass, as the official MAX_SIZE (default 1600)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU; the default), cpu, cuda, cuda:N or mps")
    add_engine_options(parser)
    parser.add_argument("--output", "--outputs", dest="outputs", default="alpha,rgba", metavar="KINDS",
                        help="comma-separated: alpha, rgba, composite, trimap (default alpha,rgba)")
    parser.add_argument("--background", default="white", metavar="COLOR|IMAGE",
                        help="composite background: a colour (white, #00ff00, 0,255,0) or an image file")
    parser.add_argument("--foreground", default="estimate", choices=("estimate", "ml", "original"),
                        help="cutout colour at soft edges: estimate (blur fusion, removes the old background), "
                             "ml (pymatting's multi-level estimator, slower) or original")
    parser.add_argument("--alpha-depth", type=int, default=8, choices=(8, 16), help="bits per alpha pixel")
    parser.add_argument("--png-compression", type=int, choices=range(10), metavar="0-9",
                        help="zlib level of every PNG written, 0 (fastest, largest) to 9 (smallest); "
                             "the default is a fast level (see README)")
    parser.add_argument("--privacy", action="store_true",
                        help="blur faces before the network sees the image (the alpha is for the original)")
    parser.add_argument("--frames", action="store_true",
                        help="videos: write each kind as a folder of numbered PNG frames instead of a video")
    parser.add_argument("--temporal-smooth", action="store_true",
                        help="videos: reduce flicker along the optical flow (default off: per frame, as images)")
    parser.add_argument("--temporal-strength", type=float, default=0.6, metavar="S",
                        help="weight of the past frames for --temporal-smooth, in (0, 1) (default 0.6)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--allow-private-urls", dest="allow_private_urls", action="store_true",
                        help="let URL inputs reach loopback, private and link-local addresses")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    urls = [text for text in args.inputs if _is_url(text)]
    local = [text for text in args.inputs if not _is_url(text)]
    with tempfile.TemporaryDirectory(prefix="p3m-urls-") as download_dir:
        return _run(args, local, urls, Path(download_dir))


def _run(args: argparse.Namespace, local: list[str], urls: list[str], download_dir: Path) -> int:
    from p3m.executors import ExecutorError, create_executor
    from p3m.inference.batch import MatteOptions, MatteSetup, collect_report, has_pending_work
    from p3m.inference.matter import Matter
    from p3m.inference.video import video_targets
    from p3m.inputs import check_output_folder, collect_inputs, output_paths
    from p3m.io import OutputFolder
    from p3m.io.video import is_video_file

    try:
        options = MatteOptions(outputs=tuple(kind.strip() for kind in args.outputs.split(",") if kind.strip()),
                               background=args.background, foreground=args.foreground,
                               alpha_depth=args.alpha_depth, overwrite=args.overwrite, frames=args.frames,
                               temporal_smooth=args.temporal_strength if args.temporal_smooth else 0.0,
                               **({} if args.png_compression is None else {"png_compression": args.png_compression}))
        executor = create_executor(args.executor, args.ray_address, args.workers)
        check_output_folder(args.out_dir, local)
        pairs = collect_inputs(local) if local else []
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from None
    url_of, downloaded, fetch_failures = _download(urls, download_dir, args.allow_private_urls)
    pairs += downloaded
    images = [pair for pair in pairs if not is_video_file(pair[1])]
    videos = [pair for pair in pairs if is_video_file(pair[1])]
    try:
        for kind in options.outputs:  # refuse two inputs sharing an output, or an output over an input
            output_paths(images, args.out_dir / kind, suffix=".png")
            suffix = video_targets(args.out_dir, Path("video.mp4"), [kind], args.frames)[kind].suffix
            output_paths(videos, args.out_dir / kind, suffix=suffix)
        read = [source for source, _ in pairs]
        if "composite" in options.outputs and Path(options.background).is_file():
            read.append(Path(options.background))
        outputs = OutputFolder(args.out_dir, read)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if "composite" in options.outputs:
        from p3m.inference.compose import Background

        try:
            Background(options.background)
        except (ValueError, OSError) as error:
            raise CommandError(f"--background: {error}") from None
    if not has_pending_work(pairs, args.out_dir, options):
        print(f"p3m matte: 0 done, {len(pairs)} skipped (outputs exist), {len(fetch_failures)} failed "
              f"-> {args.out_dir}", file=sys.stderr)
        return 1 if fetch_failures else 0
    matter_args = dict(model=args.model, weights=args.weights, method=args.method, max_size=args.max_size,
                       device=args.device, privacy=args.privacy, precision=args.precision, engine=args.engine)
    if args.executor == "local":
        try:
            matter = Matter(**matter_args)
        except model_errors(args.engine) as error:
            raise CommandError(str(error).strip("'\"")) from None
    else:  # each Ray worker builds its own
        matter = partial(Matter, **matter_args)

    def report_error(path: Path, message: str) -> None:
        from tqdm import tqdm

        if path in url_of:  # name the URL, not the temporary download
            message = message.replace(str(path), url_of[path])
        tqdm.write(f"error: {message}", file=sys.stderr)

    show_progress = not args.quiet and len(pairs) > 1
    try:
        with executor:
            setup = MatteSetup(matter, args.out_dir, options, outputs, frame_progress=not args.quiet)
            outcomes = executor.map(setup, pairs, desc="matting", progress=show_progress)
            report = collect_report(pairs, outcomes, on_error=report_error)
    except ExecutorError as error:
        raise CommandError(str(error)) from None
    report.failed.extend(fetch_failures)
    report.total += len(fetch_failures)
    print(f"p3m matte: {report.summary()} -> {args.out_dir}", file=sys.stderr)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _download(urls: list[str], folder: Path, allow_private: bool):
    """Fetch each URL (through the guarded fetcher) into ``folder``.

    Returns:
        {downloaded file: url}, the (file, relative output path) pairs, and
        [(url, message)] for the URLs that could not be fetched.
    """
    from p3m.io.fetch import FetchError, fetch_url
    from p3m.io import atomic_write

    sources, pairs, failures = {}, [], []
    for index, url in enumerate(urls):
        try:
            content = fetch_url(url, allow_private=allow_private).content
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            failures.append((url, str(error)))
            continue
        name = _url_file_name(url)
        path = atomic_write(folder / str(index) / name, lambda tmp: tmp.write_bytes(content))
        sources[path] = url
        pairs.append((path, Path(name)))
    return sources, pairs, failures


def _url_file_name(url: str) -> str:
    """The last path segment of ``url`` reduced to safe characters, for the output name."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download"
