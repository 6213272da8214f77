#!/usr/bin/env python3
"""Foreground colour estimation: quality against a known foreground, speed and memory, PNG levels.

usage: python scripts/bench_foreground.py [--methods estimate,ml,original] [--sizes 12,48]
           [--png-levels 0,1,2,3,4,6,9] [--skip quality,speed,png]

Quality: each test portrait (tests/fixtures/samples, 1080x1620) is the known
foreground F, its official alpha (tests/fixtures/official_alpha/resnet34) the
matte; the photo I = alpha F + (1 - alpha) B over a contrasting background B
(saturated green, a colour wave, another portrait mirrored, mid grey) is rounded
to 8 bits and each method estimates F from I and alpha. Errors, in 8-bit levels,
over the soft band (0 < alpha < 1):
  fg error      alpha-weighted mean |F_est - F| (mean over RGB)
  recomposite   mean |composite(F_est, alpha, N) - composite(F, alpha, N)|, 8-bit composites over a new background N
Speed: one process per method and size (a portrait upscaled to 12 / 48 MP with
mild noise), timing foreground_rgb8; peak RSS is the process's during the call
(Linux VmHWM, reset before it), "added" the part above what it held before.
PNG: encoding time (best of 3) and size of the 12 MP RGBA cutout and 8-bit alpha per zlib level.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from p3m.inference.compose import alpha_to_uint, composite, cutout, foreground_colour, foreground_rgb8

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
NAMES = ("p_015cd10e", "p_0865636e", "p_819ea202")
BACKGROUNDS = ("green", "wave", "photo", "grey")


def load_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 foreground in [0, 1] and (H, W) float32 alpha of one test portrait."""
    fg = np.asarray(Image.open(FIXTURES / "samples" / f"{name}.jpg").convert("RGB"), np.float32) / 255
    alpha = np.asarray(Image.open(FIXTURES / "official_alpha" / "resnet34" / f"{name}.png"), np.float32) / 255
    return fg, alpha


def make_background(kind: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1]."""
    if kind == "green":
        return np.broadcast_to(np.float32([0.0, 1.0, 0.0]), (height, width, 3))
    if kind == "grey":
        return np.full((height, width, 3), 0.5, np.float32)
    if kind == "photo":
        other = np.asarray(Image.open(FIXTURES / "portraits" / "p_07141906.jpg").convert("RGB"), np.float32) / 255
        return np.ascontiguousarray(cv2.resize(other, (width, height))[:, ::-1])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([0.5 + 0.5 * np.sin(x / 37 + y / 53), 0.5 + 0.5 * np.cos(y / 29),
                     0.5 + 0.5 * np.sin((x - y) / 41)], axis=-1)


def quality(methods: list[str]) -> None:
    errors = {method: {kind: [] for kind in BACKGROUNDS} for method in methods}
    for name in NAMES:
        fg, alpha = load_pair(name)
        height, width = alpha.shape
        weight = alpha[:, :, None]
        soft = (alpha > 0) & (alpha < 1)
        new_background = np.rint(make_background("wave", height, width)[::-1, ::-1] * 255).astype(np.uint8)
        truth = composite(fg, alpha, new_background).astype(np.float32)
        for kind in BACKGROUNDS:
            photo = np.rint((weight * fg + (1 - weight) * make_background(kind, height, width)) * 255).astype(np.uint8)
            for method in methods:
                estimate = foreground_colour(photo, alpha, method)
                fg_error = (np.abs(estimate - fg).mean(-1) * alpha)[soft].sum() / alpha[soft].sum()
                recomposite = np.abs(composite(estimate, alpha, new_background) - truth).mean(-1)[soft].mean()
                errors[method][kind].append((255 * fg_error, recomposite))
    print("\nquality: 3 portraits x 4 backgrounds, soft band, 8-bit levels (lower is better)")
    header = "| method | " + " | ".join(f"fg error {kind}" for kind in BACKGROUNDS) + " | fg error mean | recomposite mean |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    reference = np.mean([value[0] for values in errors.get("ml", {}).values() for value in values]) if "ml" in errors else None
    for method in methods:
        per_kind = [np.mean([value[0] for value in errors[method][kind]]) for kind in BACKGROUNDS]
        everything = [value for kind in BACKGROUNDS for value in errors[method][kind]]
        fg_mean = np.mean([value[0] for value in everything])
        ratio = f" ({fg_mean / reference:.2f}x ml)" if reference else ""
        print(f"| {method} | " + " | ".join(f"{value:.2f}" for value in per_kind)
              + f" | {fg_mean:.2f}{ratio} | {np.mean([value[1] for value in everything]):.2f} |")


def camera_photo(megapixels: float) -> tuple[np.ndarray, np.ndarray]:
    """A test portrait composited over the colour wave, upscaled to about ``megapixels``, with sensor-like noise."""
    fg, alpha = load_pair(NAMES[0])
    height, width = alpha.shape
    photo = alpha[:, :, None] * fg + (1 - alpha[:, :, None]) * make_background("wave", height, width)
    scale = (megapixels * 1e6 / (height * width)) ** 0.5
    size = (round(width * scale), round(height * scale))
    photo = cv2.resize(np.rint(photo * 255).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 2.0, photo.shape).astype(np.float32)
    photo = np.clip(photo + noise, 0, 255).astype(np.uint8)
    return photo, np.clip(cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR), 0, 1)


def status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_one(method: str, megapixels: float) -> None:
    """Child process: time one foreground_rgb8 call, print JSON."""
    photo, alpha = camera_photo(megapixels)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS
    before = status_kb("VmRSS")
    started = time.perf_counter()
    foreground_rgb8(photo, alpha, method)
    seconds = time.perf_counter() - started
    peak = status_kb("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024,
                      "band": float(((alpha > 0) & (alpha < 1)).mean()), "shape": list(alpha.shape)}))


def speed(methods: list[str], sizes: list[float]) -> None:
    print("\nspeed: foreground_rgb8 on a portrait upscaled to each size, one process each")
    print("| method | size | seconds | peak RSS | added by the call |")
    print("| --- | --- | --- | --- | --- |")
    for megapixels in sizes:
        for method in methods:
            done = subprocess.run([sys.executable, __file__, "--child", method, str(megapixels)],
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"| {method} | {megapixels:g} MP | failed: {done.stderr.strip().splitlines()[-1]} | | |")
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            height, width = figures["shape"]
            print(f"| {method} | {megapixels:g} MP ({width}x{height}, band {100 * figures['band']:.1f}%) | "
                  f"{figures['seconds']:.2f} | {figures['peak_mb'] / 1024:.2f} GB | {figures['added_mb'] / 1024:.2f} GB |",
                  flush=True)


def png_levels(levels: list[int]) -> None:
    photo, alpha = camera_photo(12)
    images = {"RGBA cutout": cutout(foreground_rgb8(photo, alpha), alpha), "8-bit alpha": alpha_to_uint(alpha, 8)}
    print(f"\nPNG: {alpha.shape[1]}x{alpha.shape[0]}, Pillow compress_level, best of 3")
    print("| image | level | seconds | MB |")
    print("| --- | --- | --- | --- |")
    for label, array in images.items():
        for level in levels:
            best = float("inf")
            for _ in range(3):
                buffer = io.BytesIO()
                started = time.perf_counter()
                Image.fromarray(array).save(buffer, "PNG", compress_level=level)
                best = min(best, time.perf_counter() - started)
            print(f"| {label} | {level} | {best:.2f} | {buffer.tell() / 1e6:.1f} |", flush=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        measure_one(sys.argv[2], float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="estimate,ml,original")
    parser.add_argument("--sizes", default="12,48", help="megapixels for the speed table")
    parser.add_argument("--png-levels", default="0,1,2,3,4,6,9")
    parser.add_argument("--skip", default="", help="sections to leave out: quality, speed, png")
    args = parser.parse_args()
    methods = args.methods.split(",")
    skip = set(args.skip.split(","))
    if "quality" not in skip:
        quality(methods)
    if "speed" not in skip:
        speed(methods, [float(size) for size in args.sizes.split(",")])
    if "png" not in skip:
        png_levels([int(level) for level in args.png_levels.split(",")])


if __name__ == "__main__":
    main()
