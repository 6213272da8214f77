#!/usr/bin/env python3
"""Time the matting decoder's last stages with and without HYBRID's transition region.

usage: python scripts/bench_region.py --alpha tests/fixtures/official_alpha/resnet34/p_015cd10e.png
           [--model resnet34] [--margins 8,16] [--repeat 5]

HYBRID's full-scale pass needs its local alpha only where the resized global
trimap is neither 0 nor 255. This script builds that region from a published
alpha (as ``bench_official.py --trimap-alphas`` does: transition within MARGIN
px of a fractional alpha) at the alpha's size, maps it to the network's input
size with ``resize_sources``, and times ``DualDecoder._level0_in_bands`` (the
stages the region can skip) on random inputs of the real shapes: without a
region, with each margin's region, and with a region covering everything.
The configurations alternate within each round, in one process, so that a
noisy machine slows them alike; the table gives medians and the ratio to the
run without a region.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_official import published_trimap  # noqa: E402

from p3m.inference.pipeline import pass_size, resize_sources  # noqa: E402
from p3m.models.folding import fold_batchnorms  # noqa: E402
from p3m.models.registry import create_model  # noqa: E402


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def pooled_with_indices(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, indices = F.max_pool2d(channels_last(torch.randn(shape)), 3, 2, 1, return_indices=True)
    return pooled, indices.int()


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
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--margins", default="8,16")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    image_height, image_width = cv2.imread(str(args.alpha), cv2.IMREAD_GRAYSCALE).shape
    height, width = pass_size(image_height, image_width, 1.0, 1600)
    decoder = fold_batchnorms(create_model(args.model).eval()).decoder
    planes = decoder.spec.semantic[3][-1]  # channels of TFI_0's three inputs
    coarse, coarse_indices = pooled_with_indices((1, planes, height // 2, width // 2))
    _, indices = pooled_with_indices((1, decoder.spec.matting[-1][-1], height, width))
    semantic = channels_last(torch.randn(1, planes, height // 4, width // 4))
    skip, stem = (channels_last(torch.randn(1, channels, height // 2, width // 2))
                  for channels in (planes, decoder.spec.stem_channels))
    regions = {"no region": None}
    for margin in (int(value) for value in args.margins.split(",")):
        regions[f"transition +{margin} px"] = transition_region(args.alpha, margin, height, width)
    regions["region everywhere"] = torch.ones(height, width, dtype=torch.bool)

    seconds = {name: [] for name in regions}
    with torch.inference_mode():
        for _ in range(args.repeat):
            for name, region in regions.items():
                started = time.perf_counter()
                decoder._level0_in_bands(semantic, coarse, coarse_indices, skip, stem, indices, region=region)
                seconds[name].append(time.perf_counter() - started)
    reference = statistics.median(seconds["no region"])
    print(f"{args.model}, network input {height}x{width}, {args.repeat} rounds, median seconds of the last stages")
    print("| region | share of pixels | median s | no region / this |")
    print("|---|---|---|---|")
    for name, region in regions.items():
        share = 1.0 if region is None else float(region.float().mean())
        median = statistics.median(seconds[name])
        print(f"| {name} | {share:.3f} | {median:.2f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
