"""The ``p3m`` command: a thin layer that maps options onto the library.

Each subcommand lives in its own module with ``add_parser(subparsers)``, which
registers its options and sets ``handler(args) -> int`` (the exit status).
Heavy imports (torch, onnxruntime) happen inside handlers, so ``p3m --version``
and ``p3m --help`` stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from p3m import __version__

SUBCOMMANDS = ("matte", "weights", "anonymize", "evaluate", "dataset", "train", "serve", "ikomia", "export")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--engine``, shared by the commands that build a ``Matter``."""
    parser.add_argument("--precision", default="fp32", type=str.lower, choices=("fp32", "bf16", "fp16"),
                        help="fp32 (default, faithful); bf16 on CUDA or CPUs with AVX512-BF16/AMX; fp16 on CUDA")
    parser.add_argument("--engine", default="torch", type=str.lower, choices=("torch", "onnxruntime"),
                        help="torch (default) or onnxruntime with --weights FILE.onnx from `p3m export`")


def model_errors(engine: str) -> tuple[type[Exception], ...]:
    """What building a ``Matter`` raises for a bad model, weights file or option (``CheckpointError``
    is a ``ValueError``); the torch engine's weights errors need torch, so they are added only for it."""
    errors: tuple[type[Exception], ...] = (KeyError, ValueError, FileNotFoundError)
    if engine == "torch":
        from p3m.weights import WeightsUnavailableError

        errors += (WeightsUnavailableError,)
    return errors


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--ray-address`` and ``--workers``, shared by the batch commands."""
    group = parser.add_argument_group("scaling out")
    group.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: this process, one file after the other (default); "
                            "ray: Ray actors, each with its own model (needs p3m[ray])")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="a running Ray cluster (HOST:PORT or auto); default: an embedded Ray on this machine. "
                            "Paths must be readable and writable by every worker (a shared file system)")
    group.add_argument("--workers", type=int, metavar="N",
                       help="Ray actors (default: one per GPU of the cluster, else one per 4 CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p3m", description="Privacy-preserving portrait matting (P3M-Net).")
    parser.add_argument("--version", action="version", version=f"p3m {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"p3m.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"p3m.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except CommandError as error:
        print(f"p3m {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p3m: interrupted", file=sys.stderr)
        return 130
