"""``p3m weights list | download NAME | path NAME``: the official pretrained weights
(P3M-Net on P3M-10k, and the ImageNet encoders ``NAME-imagenet`` training starts from)."""
from __future__ import annotations

import argparse

from p3m.cli import CommandError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list, download or locate the official weights",
                                   description="The official P3M-Net weights, cached under $P3M_HOME/weights "
                                               "(default ~/.cache/p3m/weights).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="weight files (P3M-Net and ImageNet encoders) and whether each is verified, corrupt or missing"
                       ).set_defaults(handler=list_weights)
    download = actions.add_parser("download", help="download weights into the cache")
    download.add_argument("name", help="entry name, e.g. resnet34 or resnet34-imagenet (see 'p3m weights list')")
    download.add_argument("--force", action="store_true",
                          help="download again even over a verified file (a corrupt one is always replaced)")
    download.set_defaults(handler=download_weights)
    path = actions.add_parser("path", help="print where a model's weights are cached")
    path.add_argument("name")
    path.set_defaults(handler=weights_path)


def list_weights(args: argparse.Namespace) -> int:
    """Each entry's file and its state: verified (matches its record), corrupt (with why) or missing."""
    from p3m.models.registry import list_models
    from p3m.weights import CORRUPT, entry, entry_names, status

    names = entry_names()
    for name in names:
        state, reason = status(name)
        published = entry(name)
        print(f"{name:<18} {published.file_name:<40} {state:<9} {published.url}")
        if state == CORRUPT:
            print(f"{'':<18} {reason}")
    for model in list_models():
        if model not in names:
            print(f"{model:<18} (no trained P3M-Net weights are published: train it with p3m train --model {model})")
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
    from p3m.weights import WeightsUnavailableError, canonical_name, entry

    try:
        known = canonical_name(name)
        entry(known)
    except KeyError as error:
        raise CommandError(str(error).strip("'\"")) from None
    except WeightsUnavailableError as error:
        raise CommandError(str(error)) from None
    return known
