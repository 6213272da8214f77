"""``p3m weights list | download NAME | path NAME``: the official pretrained weights."""
from __future__ import annotations

import argparse

from p3m.cli import CommandError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list, download or locate the official weights",
                                   description="The official P3M-Net weights, cached under $P3M_HOME/weights "
                                               "(default ~/.cache/p3m/weights).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="models, their weight files and whether each is verified, corrupt or missing"
                       ).set_defaults(handler=list_weights)
    download = actions.add_parser("download", help="download a model's weights into the cache")
    download.add_argument("name", help="model name (see 'p3m weights list')")
    download.add_argument("--force", action="store_true",
                          help="download again even over a verified file (a corrupt one is always replaced)")
    download.set_defaults(handler=download_weights)
    path = actions.add_parser("path", help="print where a model's weights are cached")
    path.add_argument("name")
    path.set_defaults(handler=weights_path)


def list_weights(args: argparse.Namespace) -> int:
    """Each model's file and its state: verified (matches its record), corrupt (with why) or missing."""
    from p3m.models.registry import get_spec, list_models
    from p3m.weights import CORRUPT, status

    for name in list_models():
        spec = get_spec(name)
        if spec.weights is None:
            print(f"{name:<10} (no published weights)")
            continue
        state, reason = status(name)
        print(f"{name:<10} {spec.weights.file_name:<40} {state:<9} {spec.weights.url}")
        if state == CORRUPT:
            print(f"           {reason}")
    return 0


def download_weights(args: argparse.Namespace) -> int:
    from p3m.weights import WeightsUnavailableError, download

    try:
        print(download(_known(args.name), force=args.force))
    except WeightsUnavailableError as error:
        raise CommandError(str(error)) from None
    return 0


def weights_path(args: argparse.Namespace) -> int:
    from p3m.weights import cached_path

    path = cached_path(_known(args.name))
    print(path)
    return 0 if path.is_file() else 1


def _known(name: str) -> str:
    from p3m.models.registry import get_spec

    try:
        return get_spec(name).name
    except KeyError as error:
        raise CommandError(str(error).strip("'\"")) from None
