"""``p3m dataset prepare``: estimate the training fg/bg colours needed by the composition loss."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from p3m.cli import CommandError


def add_parser(actions) -> None:
    parser = actions.add_parser(
        "prepare", help="estimate train/fg and train/bg from image + alpha (for the composition loss)",
        description="Estimate foreground and background colours of every training image from its alpha "
                    "(pymatting multilevel estimation) and write them to ROOT/train/fg and ROOT/train/bg. "
                    "Resumable: samples that already have both are skipped. `p3m train` turns the "
                    "composition loss on when every sample has fg and bg.")
    parser.add_argument("root", metavar="ROOT", help="dataset root (holding train/)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="parallel processes (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="re-estimate samples that already have fg and bg")
    parser.set_defaults(handler=run_prepare)


def run_prepare(args) -> int:
    from p3m.data.prepare import prepare_fgbg

    root = Path(args.root)
    if not root.is_dir():
        raise CommandError(f"{root}: not a folder")
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    try:
        report = prepare_fgbg(root, workers=args.workers, overwrite=args.overwrite, progress=True)
    except NotADirectoryError as error:
        raise CommandError(str(error)) from None
    for line in report.problems:
        print(f"p3m dataset prepare: {line}", file=sys.stderr)
    text = f"estimated fg/bg for {len(report.written)} image(s)"
    if report.skipped:
        text += f"; {len(report.skipped)} already had both (use --overwrite to redo)"
    if report.problems:
        text += f"; {len(report.problems)} problem(s) (listed above)"
    print(text)
    return 0 if report.ok else 1
