"""``p3m export --model resnet34|vitae-s [--weights CKPT] -o model.onnx``: an ONNX graph for onnxruntime."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p3m.cli import CommandError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write the network as an ONNX graph (dynamic height and width)",
        description="Export P3M-Net to ONNX: input `image` (N, 3, H, W) normalised, H and W multiples of 32; "
                    "outputs `global_logits` and `local_alpha`. Run it with "
                    "`p3m matte --engine onnxruntime --weights FILE` or Matter(engine='onnxruntime').")
    parser.add_argument("--model", default="resnet34", help="resnet34 (default) or vitae-s (swin-t cannot be exported)")
    parser.add_argument("--weights", type=Path, help="a local checkpoint instead of the official weights")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the .onnx file to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from p3m.checkpoint import CheckpointError, load_weights
    from p3m.models.export import export_onnx
    from p3m.models.registry import get_spec
    from p3m.weights import WeightsUnavailableError, resolve

    if args.weights is not None and args.output.resolve() == args.weights.resolve():
        raise CommandError(f"-o {args.output} would overwrite the checkpoint")
    try:
        spec = get_spec(args.model)
        network = load_weights(spec.build(), resolve(spec.name, args.weights), spec.name)
        export_onnx(network, spec, args.output)
    except (WeightsUnavailableError, CheckpointError, KeyError, ValueError) as error:
        raise CommandError(str(error).strip("'\"")) from None
    print(f"p3m export: {spec.name} -> {args.output}", file=sys.stderr)
    return 0
