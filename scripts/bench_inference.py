#!/usr/bin/env python3
"""Time one Matter.predict call on a synthetic image of a given size.

usage: python scripts/bench_inference.py --weights CKPT [--model resnet34] [--method hybrid]
           [--size 1080x1620] [--repeat 1] [--threads N]

Prints the wall time of each call (the first includes one-off allocation);
run it under `/usr/bin/time -v` for the peak memory.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import p3m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--method", default="hybrid")
    parser.add_argument("--size", default="1080x1620", help="HEIGHTxWIDTH")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(side) for side in args.size.lower().split("x"))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    started = time.perf_counter()
    matter = p3m.Matter(model=args.model, weights=args.weights, method=args.method, device="cpu")
    print(f"load: {time.perf_counter() - started:.2f} s  ({matter!r}, torch threads {torch.get_num_threads()})")
    for run in range(args.repeat):
        started = time.perf_counter()
        result = matter.predict(image)
        print(f"predict {run + 1}: {time.perf_counter() - started:.2f} s  alpha {result.alpha.shape}")


if __name__ == "__main__":
    main()
