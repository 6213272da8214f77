"""``p3m evaluate``: score predicted alphas, or a model on a P3M-10k test split."""
from __future__ import annotations

import argparse
import os
import sys

from p3m.cli import CommandError

_DATASET_OPTIONS = ("model", "weights", "method", "max_size", "device", "save_pred")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted alphas against ground truth (SAD, MSE, MAD, Grad, Conn, ...)",
        description="Score alpha mattes with the official P3M metrics. Either pair two folders by file\n"
                    "name stem (--pred/--gt), or predict a P3M-10k test split with a model and score it\n"
                    "(--dataset). Undefined values (e.g. a trimap without unknown pixels) are left out\n"
                    "of the means, and the table says how many images each mean covers.",
        epilog="Examples:\n"
               "  p3m evaluate --pred out/ --gt P3M-10k/validation/P3M-500-P/mask "
               "--trimap P3M-10k/validation/P3M-500-P/trimap\n"
               "  p3m evaluate --dataset P3M-10k --split P3M-500-P --method resize --json scores.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    folders = parser.add_argument_group("score a folder of predictions")
    folders.add_argument("--pred", metavar="DIR", help="predicted alphas (8-bit images)")
    folders.add_argument("--gt", metavar="DIR", help="ground-truth alphas, paired with --pred by file name stem")
    folders.add_argument("--trimap", metavar="DIR", help="trimaps (0/128/255): adds the unknown-region, "
                                                        "foreground and background metrics")
    folders.add_argument("--facemask", metavar="DIR", help="face masks: adds SAD/MSE/MAD inside the face")
    folders.add_argument("--workers", type=int, default=1, metavar="N",
                         help="score images in N processes (default 1)")
    dataset = parser.add_argument_group("predict and score a P3M-10k test split")
    dataset.add_argument("--dataset", metavar="ROOT", help="P3M-10k root (holding validation/)")
    dataset.add_argument("--split", choices=("P3M-500-P", "P3M-500-NP"), help="test split")
    dataset.add_argument("--model", help="model name (default resnet34)")
    dataset.add_argument("--weights", metavar="FILE", help="checkpoint (default: the official weights)")
    dataset.add_argument("--method", choices=("resize", "hybrid"),
                         help="inference strategy (default resize, as the papers report)")
    dataset.add_argument("--max-size", type=int, metavar="N", help="per-side cap of a pass (default 1600)")
    dataset.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    dataset.add_argument("--save-pred", metavar="DIR", help="also write the predicted alphas as PNGs here")
    output = parser.add_argument_group("output")
    output.add_argument("--fast", action="store_true", help="skip Grad and Conn (the slow metrics)")
    output.add_argument("--json", metavar="FILE", help="write per-image scores and means as JSON")
    output.add_argument("--csv", metavar="FILE", help="write per-image scores and means as CSV")
    output.add_argument("--report", metavar="FILE",
                        help="FILE.html: a page with the metric table, each metric's distribution and the worst "
                             "images with their error maps (thumbnails embedded); FILE.json / FILE.csv: as --json / "
                             "--csv")
    output.add_argument("--worst", type=int, default=8, metavar="N",
                        help="images shown with their error maps in an HTML report, highest SAD first (default 8)")
    output.add_argument("--per-image", action="store_true", help="print every image's scores too")
    parser.set_defaults(handler=run)


def _check_form(args) -> None:
    folder_form = args.pred is not None or args.gt is not None
    dataset_form = args.dataset is not None
    if folder_form and dataset_form:
        raise CommandError("use either --pred/--gt or --dataset, not both")
    if folder_form:
        if args.pred is None or args.gt is None:
            raise CommandError("--pred and --gt go together")
        given = [f"--{name.replace('_', '-')}" for name in _DATASET_OPTIONS + ("split",) if getattr(args, name)]
        if given:
            raise CommandError(f"{', '.join(given)} only apply to --dataset")
    elif dataset_form:
        if args.split is None:
            raise CommandError("--dataset needs --split P3M-500-P or P3M-500-NP")
        if args.trimap or args.facemask:
            raise CommandError("--trimap/--facemask only apply to --pred/--gt (a dataset brings its own)")
        if args.workers != 1:
            raise CommandError("--workers only applies to --pred/--gt")
    else:
        raise CommandError("nothing to evaluate: give --pred DIR --gt DIR, or --dataset ROOT --split NAME")


_REPORT_KINDS = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv"}


def _report_kind(path: str) -> str:
    kind = _REPORT_KINDS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise CommandError(f"--report {path}: name a .html, .json or .csv file (the extension picks the format)")
    return kind


def _report_guard(args, evaluation):
    """The inputs of the run, with --json/--csv/--report refused up front when they would replace one of them."""
    from p3m.data import layout
    from p3m.io import RunInputs, UnsafeOutputError, check_destination

    if args.dataset is not None:
        spec = layout.get_split(args.split)
        folders = [spec.folder(args.dataset, role) for role in spec.folders]
    else:
        folders = [args.pred, args.gt, args.trimap, args.facemask]
    inputs = RunInputs(evaluation.files_of(folders))
    named = [(option, path) for option, path in (("--json", args.json), ("--csv", args.csv), ("--report", args.report))
             if path]
    for index, (option, path) in enumerate(named):
        for other, other_path in named[index + 1:]:
            if os.path.realpath(path) == os.path.realpath(other_path):
                raise CommandError(f"{option} and {other} name the same file {path}")
    for option, path in named:
        try:
            check_destination(path, inputs=inputs)
        except UnsafeOutputError:
            raise CommandError(f"{option} {path} is one of the files being evaluated; "
                               "choose another file for the scores") from None
    return inputs


def run(args) -> int:
    _check_form(args)
    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    if args.worst < 0:
        raise CommandError(f"--worst must be 0 or more, got {args.worst}")
    report_kind = _report_kind(args.report) if args.report else None
    from p3m import evaluation

    inputs = _report_guard(args, evaluation)

    predict = None
    try:
        if args.dataset is not None:
            report, predict = _evaluate_dataset(args, evaluation)
        else:
            report = evaluation.evaluate_folders(args.pred, args.gt, args.trimap, args.facemask,
                                                 fast=args.fast, progress=True, workers=args.workers)
    except (NotADirectoryError, ValueError) as error:
        raise CommandError(str(error)) from None

    for line in report.errors:
        print(f"p3m evaluate: {line}", file=sys.stderr)
    if args.per_image:
        for name, values in report.images.items():
            print(name + "  " + "  ".join(f"{key}={value:.6g}" for key, value in values.items()))
    print(report.format_table())
    summary = f"{len(report.images)} image(s) scored"
    if report.errors:
        summary += f", {len(report.errors)} problem(s) (listed above)"
    if report.interrupted:
        summary += ", interrupted (the scores cover the images done before it)"
    print(summary)
    writers = {"json": report.write_json, "csv": report.write_csv,
               "html": lambda path, **guards: _write_page(path, args, report, predict, **guards)}
    for path, kind in ((args.json, "json"), (args.csv, "csv"), (args.report, report_kind)):
        if path:
            try:
                writers[kind](path, inputs=inputs)
            except (OSError, ValueError) as error:
                raise CommandError(f"{path}: cannot write ({getattr(error, 'strerror', None) or error})") from None
    if report.interrupted:
        return 130
    return 0 if report.ok and report.images else 1


def _write_page(path, args, report, predict, **guards):
    from p3m.io import write_text
    from p3m.reports.evaluation import evaluation_page

    if args.dataset is not None:
        title = f"{args.split} of {args.dataset}, {args.model or 'resnet34'} ({args.method or 'resize'})"
    else:
        title = f"{args.pred} against {args.gt}"
    return write_text(path, evaluation_page(report, title, worst=args.worst, predict=predict), **guards)


def _evaluate_dataset(args, evaluation):
    """The split's report and the predictor that made it (image path -> alpha)."""
    import p3m
    from p3m.checkpoint import CheckpointError
    from p3m.weights import WeightsUnavailableError

    # Check the split's folders and --save-pred before building the model (which may download weights).
    evaluation.dataset_samples(args.dataset, args.split)
    if args.save_pred is not None:
        evaluation.check_prediction_folder(args.dataset, args.split, args.save_pred)
    options = {"model": args.model or "resnet34", "weights": args.weights, "method": args.method or "resize",
               "max_size": args.max_size or 1600, "device": args.device or "auto"}
    try:
        # The official test script scores full-size images: no 1080 px shrinking, and no Swin-T
        # small-image pass (the official code takes it for samples and RWP only).
        matter = p3m.Matter(**options, shorter_side_limit=None, small_image_pass=False)
    except (WeightsUnavailableError, CheckpointError, KeyError) as error:
        raise CommandError(str(error).strip("'\"")) from None
    print(f"p3m evaluate: {args.split} with {matter!r}", file=sys.stderr)

    def predict(path):
        return matter.predict(path).alpha

    return evaluation.evaluate_dataset(args.dataset, args.split, predict, save_pred=args.save_pred, fast=args.fast,
                                       progress=True), predict
