#!/usr/bin/env python3
"""Flicker (dtSSD) and error (MAD) of per-frame and temporally smoothed alphas on a synthetic clip.

usage: python scripts/temporal_stability.py --weights CKPT [--method resize] [--frames 24]
           [--size 256x320] [--strength 0.6]

The clip is a portrait from `p3m.data.synth` (its true alpha known) moving
across its background with sub-pixel, non-uniform motion. Metrics as
RobustVideoMatting reports them, alphas in [0, 1]: MAD x 1e3, and dtSSD x 1e2,
the root mean square over pixels of (pred_t - pred_t-1) - (true_t - true_t-1),
averaged over frames. Three sequences are scored per frame and smoothed
(`TemporalSmoother`, as `p3m matte --temporal-smooth`):
the true alpha itself (any error after smoothing is ghosting), the true alpha
with independent per-frame noise (a known flicker), and P3M-Net's predictions.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from p3m.data.synth import make_sample
from p3m.inference.matter import Matter
from p3m.inference.video import TemporalSmoother


def moving_clip(frames: int, width: int, height: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images (H, W, 3) uint8 and true alphas (H, W) float32 of a portrait drifting and swaying."""
    sample = make_sample(np.random.default_rng(0), (width, height))
    fg, alpha = sample.fg.astype(np.float32), sample.alpha.astype(np.float32) / 255
    bg = sample.bg.astype(np.float32)
    images, alphas = [], []
    for index in range(frames):
        shift_x = 0.08 * width * np.sin(2 * np.pi * index / frames) + 0.7 * index
        shift_y = 0.02 * height * np.sin(4 * np.pi * index / frames)
        angle = 3.0 * np.sin(2 * np.pi * index / frames)
        matrix = cv2.getRotationMatrix2D((width / 2, height), angle, 1.0)
        matrix[:, 2] += (shift_x, shift_y)
        moved_fg = cv2.warpAffine(fg, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        moved_alpha = cv2.warpAffine(alpha, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        weight = moved_alpha[..., None]
        images.append(np.clip(np.rint(weight * moved_fg + (1 - weight) * bg), 0, 255).astype(np.uint8))
        alphas.append(moved_alpha)
    return images, alphas


def mad(alphas, truths) -> float:
    return float(np.mean([np.abs(a - t).mean() for a, t in zip(alphas, truths)]) * 1e3)


def dtssd(alphas, truths) -> float:
    return float(np.mean([np.sqrt(np.square((a1 - a0) - (t1 - t0)).mean())
                          for a0, a1, t0, t1 in zip(alphas, alphas[1:], truths, truths[1:])]) * 1e2)


def smooth(images, alphas, strength: float) -> list[np.ndarray]:
    smoother = TemporalSmoother(strength)
    return [smoother(image, alpha) for image, alpha in zip(images, alphas)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--method", default="resize")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="256x320", help="WIDTHxHEIGHT")
    parser.add_argument("--strength", type=float, default=0.6)
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    images, truths = moving_clip(args.frames, width, height)
    rng = np.random.default_rng(1)
    noisy = [np.clip(truth + cv2.GaussianBlur(rng.normal(0, 0.08, truth.shape).astype(np.float32), (0, 0), 1.5),
                     0, 1) for truth in truths]
    matter = Matter(model=args.model, weights=args.weights, method=args.method, device="cpu")
    predicted = [matter.predict(image).alpha for image in images]
    print(f"{args.frames} frames {width}x{height}, smoothing strength {args.strength}; MAD x1e3, dtSSD x1e2")
    print("| sequence | MAD per frame | MAD smoothed | dtSSD per frame | dtSSD smoothed |")
    print("| --- | --- | --- | --- | --- |")
    for name, alphas in (("true alpha (ghosting check)", truths), ("true alpha + per-frame noise", noisy),
                         (f"P3M-Net {args.model} {args.method.upper()}", predicted)):
        smoothed = smooth(images, alphas, args.strength)
        print(f"| {name} | {mad(alphas, truths):.2f} | {mad(smoothed, truths):.2f} | "
              f"{dtssd(alphas, truths):.2f} | {dtssd(smoothed, truths):.2f} |")


if __name__ == "__main__":
    main()
