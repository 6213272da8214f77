#!/usr/bin/env python3
"""Images/s of `p3m matte` with the local executor and with Ray (1 and 2 workers), and Ray's start-up cost.

usage: python scripts/bench_executors.py --weights CKPT [--images 8] [--size 480x360] [--method resize]
       python scripts/bench_executors.py --weights CKPT --compare-src OTHER/src [--method resize,hybrid]

Build the kit checkpoint first:
    python tests/fixtures/make_checkpoint.py tests/fixtures/r34_manifest.json /tmp/r34.pth

Each run is a fresh `p3m matte` process over the same synthetic portraits into
an empty folder; the wall time includes importing torch and loading the model
(and, for Ray, starting the embedded cluster and its actors). The Ray runs also
print their own rate over the images alone, after the actors are ready.

``--compare-src`` compares this tree's local batch (``matte_files``, the step the
local executor runs) with another checkout's (e.g. an untouched main), each in a
fresh process with the model already loaded and warmed up, so the figures are the
batch alone: seconds, images/s, CPU seconds of the process, and the ratio to the
network alone (``Matter.predict`` on the same images decoded beforehand). The
rows alternate between the trees; both trees' outputs must be byte-equal.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
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


BATCH_CHILD = r"""
import json, resource, sys, time
import torch
from p3m.inference import Matter
from p3m.inference.batch import MatteOptions, matte_files
from p3m.inputs import collect_inputs
from p3m.io import read_image

images, out, weights, method, threads, network_only = sys.argv[1:]
if int(threads):
    torch.set_num_threads(int(threads))
matter = Matter(weights=weights, method=method)
pairs = collect_inputs([images])
matter.predict(pairs[0][0])


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


decoded = [read_image(source) for source, _ in pairs] if network_only == "1" else None
started, cpu_started = time.perf_counter(), cpu()
if decoded:
    for image in decoded:
        matter.predict(image)
else:
    report = matte_files(matter, pairs, out, MatteOptions())
    assert report.ok and len(report.written) == len(pairs), report.summary()
print(json.dumps({"seconds": time.perf_counter() - started, "cpu": cpu() - cpu_started,
                  "threads": torch.get_num_threads()}))
"""


def time_batch(src: Path, images: Path, out: Path, weights: str, method: str, threads: int = 0,
               network_only: bool = False) -> dict:
    """The batch alone, timed in a fresh process importing p3m from ``src``."""
    command = [sys.executable, "-c", BATCH_CHILD, str(images), str(out), weights, method, str(threads),
               str(int(network_only))]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    if result.returncode != 0:
        sys.exit(f"the batch with {src} failed (exit status {result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_files(first: Path, second: Path) -> bool:
    names = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    return names == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file()) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names)


def compare(other_src: Path, images: Path, scratch: Path, weights: str, methods: list[str], count: int,
            repeats: int) -> None:
    """Print the batch of ``other_src`` (before) and of this tree (after) side by side, per method:
    the median of ``repeats`` rounds, each round running every variant once."""
    here = Path(__file__).resolve().parents[1] / "src"
    print(f"before: {other_src}\nafter:  {here}")
    print(f"{'method':7s} {'run (torch threads)':34s} {'seconds':>8s} {'images/s':>9s} {'CPU s':>7s} {'x network':>10s}")
    for method in methods:
        runs = {"network only (decoded images)": (here, 0, True),
                "before (sequential)": (other_src, 0, False), "after (overlapped)": (here, 0, False),
                "before (sequential), 1 thread": (other_src, 1, False), "after (overlapped), 1 thread": (here, 1, False)}
        rows = {name: [] for name in runs}
        for _ in range(repeats):
            for index, (name, (src, threads, network_only)) in enumerate(runs.items()):
                out = scratch / f"{method}{index}"
                shutil.rmtree(out, ignore_errors=True)
                rows[name].append(time_batch(src, images, out, weights, method, threads, network_only))
        seconds = {name: statistics.median(row["seconds"] for row in results) for name, results in rows.items()}
        for name, results in rows.items():
            label = f"{name} ({results[0]['threads']})"
            cpu = statistics.median(row["cpu"] for row in results)
            print(f"{method:7s} {label:34s} {seconds[name]:8.1f} {count / seconds[name]:9.3f} {cpu:7.1f} "
                  f"{seconds[name] / seconds['network only (decoded images)']:10.2f}")
        print(f"{method:7s} after / before: {seconds['before (sequential)'] / seconds['after (overlapped)']:.2f}x "
              f"the images/s; outputs byte-equal: {same_files(scratch / f'{method}1', scratch / f'{method}2')}")
    print(f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())} (1, 5, 15 min)")


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
    parser.add_argument("--method", default="resize", help="resize or hybrid (a comma-separated list with --compare-src)")
    parser.add_argument("--compare-src", type=Path, metavar="SRC",
                        help="compare the local batch with the one of another checkout's src folder instead")
    parser.add_argument("--repeats", type=int, default=1, help="--compare-src: rounds, the median is printed")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))
    print(f"{args.images} images {height}x{width}, {args.method}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="p3m-bench-") as scratch:
        images = Path(scratch) / "in"
        make_images(images, args.images, height, width)
        if args.compare_src:
            compare(args.compare_src.resolve(), images, Path(scratch), args.weights, args.method.split(","),
                    args.images, args.repeats)
            return
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
