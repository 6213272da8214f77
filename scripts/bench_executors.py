#!/usr/bin/env python3
"""Images/s of `p3m matte` with the local executor and with Ray (1 and 2 workers), and Ray's start-up cost.

usage: python scripts/bench_executors.py --weights CKPT [--images 8] [--size 480x360] [--method resize]

Build the kit checkpoint first:
    python tests/fixtures/make_checkpoint.py tests/fixtures/r34_manifest.json /tmp/r34.pth

Each run is a fresh `p3m matte` process over the same synthetic portraits into
an empty folder; the wall time includes importing torch and loading the model
(and, for Ray, starting the embedded cluster and its actors). The Ray runs also
print their own rate over the images alone, after the actors are ready.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(count):
        image = np.full((height, width, 3), (40, 120, 200), np.uint8)
        image[height // 4:, width // 4: 3 * width // 4] = (220, 180, 150)
        image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{index:03d}.jpg", quality=95)


def time_matte(images: Path, out: Path, weights: str, method: str, extra: list[str]) -> tuple[float, str]:
    command = [sys.executable, "-m", "p3m", "matte", "--quiet", str(images), "-o", str(out),
               "--weights", weights, "--method", method, *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit status {result.returncode}):\n{result.stderr}")
    return seconds, result.stderr


def ray_startup() -> float:
    """Seconds to start an embedded Ray (as the executor does) and stop it, in this process."""
    import ray

    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    ray.shutdown()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="480x360", help="HEIGHTxWIDTH")
    parser.add_argument("--method", default="resize")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))
    print(f"{args.images} images {height}x{width}, {args.method}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="p3m-bench-") as scratch:
        images = Path(scratch) / "in"
        make_images(images, args.images, height, width)
        runs = {"local": ["--executor", "local"], "ray, 1 worker": ["--executor", "ray", "--workers", "1"],
                "ray, 2 workers": ["--executor", "ray", "--workers", "2"]}
        for index, (name, extra) in enumerate(runs.items()):
            seconds, err = time_matte(images, Path(scratch) / f"out{index}", args.weights, args.method, extra)
            rate = re.search(r"^ray: .*$", err, re.MULTILINE)
            print(f"{name:15s} {seconds:6.1f} s wall, {args.images / seconds:.3f} images/s end to end"
                  + (f"  [{rate.group(0)}]" if rate else ""))
    print(f"embedded Ray start + stop: {ray_startup():.1f} s")


if __name__ == "__main__":
    main()
