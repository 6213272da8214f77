"""Time each metric on one synthetic 1080x1620 pair, and prepare pred/gt folders for timing `p3m evaluate`.

    python scripts/bench_evaluation.py metrics
    python scripts/bench_evaluation.py folders OUT --count 20   # then: time p3m evaluate --pred OUT/pred --gt OUT/gt ...

Predictions are the synthetic ground truth degraded the way a matting network
errs: a blurred transition band, noise, and a few wrong blobs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from p3m import metrics
from p3m.data.synth import make_sample
from p3m.data.trimap import trimap_from_alpha
from p3m.io import save_image

SIZE = (1080, 1620)  # width, height


def degrade(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    pred = cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), 2.5)
    pred += rng.normal(0, 6, pred.shape).astype(np.float32)
    for _ in range(4):
        y, x = rng.integers(0, alpha.shape[0]), rng.integers(0, alpha.shape[1])
        cv2.circle(pred, (int(x), int(y)), int(rng.integers(10, 60)), float(rng.choice([0, 255])), -1)
    return np.clip(np.round(pred), 0, 255).astype(np.uint8)


def bench_metrics(repeats: int) -> None:
    rng = np.random.default_rng(0)
    sample = make_sample(rng, SIZE)
    gt, face = sample.alpha, sample.face_mask
    pred = degrade(gt, rng)
    trimap = trimap_from_alpha(gt, 25)
    print(f"pair {gt.shape[1]}x{gt.shape[0]}, {repeats} runs each: wall ms median (min), CPU ms median")
    cases = {
        "SAD": lambda: metrics.sad(pred, gt),
        "MSE": lambda: metrics.mse(pred, gt),
        "MAD": lambda: metrics.mad(pred, gt),
        "trimap (SAD/MSE/MAD_TRIMAP, SAD_FG/BG)": lambda: metrics.trimap_metrics(pred, gt, trimap),
        "face (SAD/MSE/MAD_FACE)": lambda: metrics.face_metrics(pred, gt, face),
        "GRAD": lambda: metrics.gradient_error(pred, gt),
        "CONN": lambda: metrics.connectivity_error(pred, gt),
        "all 13 (compute_metrics)": lambda: metrics.compute_metrics(pred, gt, trimap, face),
        "all but GRAD/CONN (fast)": lambda: metrics.compute_metrics(pred, gt, trimap, face, fast=True),
    }
    for name, run in cases.items():
        run()
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
        print(f"{name:<40} {statistics.median(times):8.1f} ({min(times):6.1f}) {statistics.median(cpu):8.1f}")


def write_folders(out: Path, count: int) -> None:
    for index in range(count):
        rng = np.random.default_rng([1, index])
        sample = make_sample(rng, SIZE)
        save_image(out / "gt" / f"p_{index:05d}.png", sample.alpha)
        save_image(out / "pred" / f"p_{index:05d}.png", degrade(sample.alpha, rng))
        save_image(out / "trimap" / f"p_{index:05d}.png", trimap_from_alpha(sample.alpha, 25))
        save_image(out / "facemask" / f"p_{index:05d}.png", sample.face_mask)
    print(f"wrote {count} pairs under {out} (gt/, pred/, trimap/, facemask/)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    timing = actions.add_parser("metrics")
    timing.add_argument("--repeats", type=int, default=7)
    folders = actions.add_parser("folders")
    folders.add_argument("out", type=Path)
    folders.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    if args.action == "metrics":
        bench_metrics(args.repeats)
    else:
        write_folders(args.out, args.count)


if __name__ == "__main__":
    main()
