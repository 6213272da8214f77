"""``p3m dataset``: check a P3M-10k tree, make trimaps, write a synthetic dataset.

Each action is a function that adds its parser to ``actions``. A module
``p3m.cli.dataset_<name>`` with ``add_parser(actions)`` is picked up the same
way, for actions that live elsewhere (``prepare``, for training).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from p3m.cli import CommandError

_PLUGGED_ACTIONS = ("prepare",)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "dataset",
        help="P3M-10k tools: check a tree, make trimaps, write a synthetic dataset",
        description="Tools for the P3M-10k layout (train/, validation/P3M-500-P/, validation/P3M-500-NP/).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    for add in (_add_check, _add_trimaps, _add_synth):
        add(actions)
    for name in _PLUGGED_ACTIONS:
        try:
            module = importlib.import_module(f"p3m.cli.dataset_{name}")
        except ModuleNotFoundError as error:
            if error.name != f"p3m.cli.dataset_{name}":
                raise
            continue
        module.add_parser(actions)
    parser.set_defaults(handler=lambda args: _usage(parser))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_check(actions) -> None:
    from p3m.data.layout import SPLITS

    parser = actions.add_parser(
        "check", help="count files, find unpaired, mismatched, unreadable files and bad trimaps",
        description="Check a P3M-10k tree: every folder of every split, files paired by name stem, sizes equal to "
                    "the image's, every file decodable, trimaps only 0/128/255. Exit status 1 on any problem.")
    parser.add_argument("root", metavar="ROOT", help="dataset root (holding train/ and validation/)")
    parser.add_argument("--split", action="append", choices=tuple(SPLITS), metavar="NAME",
                        help=f"check only this split (repeatable; {', '.join(SPLITS)}); default all")
    parser.add_argument("--workers", type=int, default=4, metavar="N", help="decoding threads (default 4)")
    parser.set_defaults(handler=run_check)


def run_check(args) -> int:
    from p3m.data.check import check_dataset

    root = Path(args.root)
    if not root.is_dir():
        raise CommandError(f"{root}: not a folder")
    report = check_dataset(root, tuple(args.split) if args.split else None, workers=args.workers, progress=True)
    print(report.format_table(root))
    for line in report.problems:
        print(f"p3m dataset check: {line}", file=sys.stderr)
    print(f"{len(report.problems)} problem(s)" if report.problems else "no problems found")
    return 0 if report.ok else 1


def _add_trimaps(actions) -> None:
    from p3m.data.trimap import DEFAULT_KERNEL_SIZE, TRAIN_KERNEL_SIZES

    low, high = TRAIN_KERNEL_SIZES
    parser = actions.add_parser(
        "trimaps", help="write trimaps for a folder of alpha masks (official dilate/erode rule)",
        description="Write one trimap (0/128/255 PNG) per mask: the unknown band is the dilation of alpha > 0 minus "
                    "the erosion of alpha == 255, with an elliptical kernel. Inputs are never modified.")
    parser.add_argument("masks", metavar="MASK_DIR", help="folder of alpha masks")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (not MASK_DIR)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--kernel-size", type=int, default=DEFAULT_KERNEL_SIZE, metavar="N",
                      help=f"kernel size in pixels (default {DEFAULT_KERNEL_SIZE})")
    size.add_argument("--random-size", action="store_true",
                      help=f"a random size per mask in [{low}, {high}], the official training rule")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-size (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace trimaps already in the output folder")
    parser.set_defaults(handler=run_trimaps)


def run_trimaps(args) -> int:
    from p3m.data.trimap import write_trimaps

    if not args.random_size and args.kernel_size < 1:
        raise CommandError(f"--kernel-size must be at least 1, got {args.kernel_size}")
    try:
        run = write_trimaps(args.masks, args.out, None if args.random_size else args.kernel_size, seed=args.seed,
                            overwrite=args.overwrite, progress=True)
    except (NotADirectoryError, ValueError) as error:
        raise CommandError(str(error)) from None
    for line in run.problems:
        print(f"p3m dataset trimaps: {line}", file=sys.stderr)
    text = f"wrote {len(run.written)} trimap(s) to {args.out}"
    if run.skipped:
        text += f"; kept {len(run.skipped)} existing (use --overwrite to replace)"
    print(text)
    return 1 if run.problems else 0


def _add_synth(actions) -> None:
    from p3m.data.layout import SPLITS
    from p3m.data.synth import DEFAULT_SIZE

    parser = actions.add_parser(
        "synth", help="write a small synthetic dataset in the P3M-10k layout",
        description="Write drawn portraits with soft hair-like alpha edges, trimaps, face masks and face-blurred "
                    "images in the exact P3M-10k layout, to try every command without the real dataset. "
                    "The same seed and size give the same files.")
    parser.add_argument("out", metavar="OUT", help="dataset root to create")
    parser.add_argument("--count", type=int, default=8, metavar="N", help="samples per split (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", default=str(DEFAULT_SIZE), metavar="S|WxH",
                        help=f"longer side with a random portrait aspect, or an exact WIDTHxHEIGHT "
                             f"(default {DEFAULT_SIZE})")
    parser.add_argument("--split", action="append", choices=tuple(SPLITS), metavar="NAME",
                        help=f"write only this split (repeatable; {', '.join(SPLITS)}); default all")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    parser.set_defaults(handler=run_synth)


def run_synth(args) -> int:
    from p3m.data import layout
    from p3m.data.synth import parse_size, write_dataset

    out = Path(args.out)
    if args.count < 1:
        raise CommandError(f"--count must be at least 1, got {args.count}")
    try:
        size = parse_size(args.size)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"{out}: exists and is not an empty folder (use --overwrite to write into it)")
    splits = tuple(dict.fromkeys(args.split)) if args.split else tuple(layout.SPLITS)
    written = write_dataset(out, args.count, seed=args.seed, size=size, splits=splits, progress=True)
    print(f"wrote {sum(written.values())} files under {out} "
          f"({', '.join(f'{name}: {args.count} samples' for name in written)})")
    return 0
