#!/usr/bin/env python3
"""Time the full-scale pass's decoder with and without HYBRID's transition region.

usage: python scripts/bench_region.py --weights r34.pth --alpha tests/fixtures/official_alpha/resnet34/p_015cd10e.png
           [--model resnet34] [--margins 8,16] [--repeat 5]

HYBRID's full-scale pass needs its local alpha only where the resized global
trimap is neither 0 nor 255. This script builds that region from a published
alpha (as ``bench_official.py --trimap-alphas`` does: transition within MARGIN
px of a fractional alpha) at the alpha's size, maps it to the network's input
size with ``resize_sources``, and times the decoder of that pass
(``DualDecoder`` without the semantic head: the region skips tiles of its
last stages) on the features that the checkpoint's encoder gives for a random
image of that size: without a region, with each margin's region, and with a
region covering everything. The configurations alternate within each round,
in one process, so that a noisy machine slows them alike; the table gives
medians and the ratio to the run without a region.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_official import published_trimap  # noqa: E402

from p3m.checkpoint import load_weights  # noqa: E402
from p3m.inference.pipeline import pass_size, resize_sources  # noqa: E402
from p3m.models.folding import fold_batchnorms  # noqa: E402
from p3m.models.registry import create_model  # noqa: E402


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def transition_region(alpha_path: Path, margin: int, height: int, width: int) -> torch.Tensor:
    """(height, width) bool at the network's input size: where HYBRID's fusion takes the local alpha."""
    image_height, image_width = cv2.imread(str(alpha_path), cv2.IMREAD_GRAYSCALE).shape
    trimap = published_trimap(str(alpha_path), margin, image_height, image_width)
    half = cv2.resize(trimap, pass_size(image_height, image_width, 0.5, 1600)[::-1], interpolation=cv2.INTER_NEAREST)
    full = resize(half, (image_height, image_width)) * 255.0
    return torch.from_numpy(resize_sources(~((full == 0) | (full == 255)), (height, width)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=Path, required=True, help="a published alpha (PNG) of a portrait")
    parser.add_argument("--weights", type=Path, required=True,
                        help="a checkpoint of --model (tests/fixtures/make_checkpoint.py makes one)")
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--margins", default="8,16")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    image_height, image_width = cv2.imread(str(args.alpha), cv2.IMREAD_GRAYSCALE).shape
    height, width = pass_size(image_height, image_width, 1.0, 1600)
    network = fold_batchnorms(load_weights(create_model(args.model), args.weights, args.model).eval())
    with torch.inference_mode():
        features = tuple(network.encoder(channels_last(torch.randn(1, 3, height, width))))
    regions = {"no region": None}
    for margin in (int(value) for value in args.margins.split(",")):
        regions[f"transition +{margin} px"] = transition_region(args.alpha, margin, height, width)
    regions["region everywhere"] = torch.ones(height, width, dtype=torch.bool)

    seconds = {name: [] for name in regions}
    with torch.inference_mode():
        for _ in range(args.repeat):
            for name, region in regions.items():
                started = time.perf_counter()
                network.decoder(list(features), need_global=False, local_region=region)
                seconds[name].append(time.perf_counter() - started)
    reference = statistics.median(seconds["no region"])
    print(f"{args.model}, network input {height}x{width}, {args.repeat} rounds, median seconds of the decoder")
    print("| region | share of pixels | median s | no region / this |")
    print("|---|---|---|---|")
    for name, region in regions.items():
        share = 1.0 if region is None else float(region.float().mean())
        median = statistics.median(seconds[name])
        print(f"| {name} | {share:.3f} | {median:.2f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
