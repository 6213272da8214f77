#!/usr/bin/env python3
"""Inference bench: engine x precision x method, each in its own process.

usage: python scripts/bench_inference.py --weights CKPT --image FILE [--model resnet34]
           [--onnx FILE.onnx] [--methods hybrid,resize] [--precisions fp32,bf16,fp16]
           [--repeat 3] [--device cpu] [--compare-src DIR]

Prints one row per configuration: median seconds of ``Matter.predict`` over
the repeats (after one warm-up call), the process's peak RSS, the speed ratio
to the faithful fp32 torch path of the same method measured in the same run,
and the alpha error against that path (max and mean absolute difference, SAD
difference in thousands, share of pixels off by more than 0.05).
``--onnx`` adds onnxruntime rows (a file from ``p3m export``); precisions the
hardware cannot run are listed as skipped. ``--compare-src DIR`` adds fp32
torch rows run with another checkout's ``src`` (e.g. an older p3m), for
before/after ratios in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"


def child(config: dict) -> None:
    """Run one configuration in this process; print its timings as JSON, save the alpha."""
    import numpy as np

    import p3m

    keywords = {"engine": config["engine"], "precision": config["precision"]} if config["engine"] else {}
    weights = config["onnx"] if config["engine"] == "onnxruntime" else config["weights"]
    matter = p3m.Matter(model=config["model"], weights=weights, method=config["method"], device=config["device"],
                        **keywords)
    matter.predict(config["image"])  # warm-up: one-off allocations, kernel selection
    seconds = []
    for _ in range(config["repeat"]):
        started = time.perf_counter()
        alpha = matter.predict(config["image"]).alpha
        seconds.append(time.perf_counter() - started)
    np.save(config["alpha_path"], alpha)
    print(json.dumps({"seconds": seconds}))


class MeasuredPopen(subprocess.Popen):
    """Popen that records the child's own peak RSS (``wait4``), not the maximum over all children."""

    peak_rss = None

    def _try_wait(self, wait_flags):
        pid, status, usage = os.wait4(self.pid, wait_flags)
        if pid == self.pid:
            self.peak_rss = usage.ru_maxrss * 1024  # kilobytes on Linux
        return pid, status


def run_config(config: dict, source: Path) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(source)}
    process = MeasuredPopen([sys.executable, __file__, "--child", json.dumps(config)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        last = (stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last}
    return {"seconds": json.loads(stdout.strip().splitlines()[-1])["seconds"], "rss": process.peak_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help="torch checkpoint")
    parser.add_argument("--image", help="the image to matte")
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--onnx", help="an exported graph: adds onnxruntime rows")
    parser.add_argument("--methods", default="hybrid,resize")
    parser.add_argument("--precisions", default="fp32,bf16,fp16", help="torch precisions to try")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-src", type=Path, help="another checkout's src folder: adds its fp32 torch rows")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if not args.weights or not args.image:
        parser.error("--weights and --image are required")
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            base = {"model": args.model, "weights": str(Path(args.weights).resolve()), "onnx": args.onnx,
                    "image": str(Path(args.image).resolve()), "method": method, "device": args.device,
                    "repeat": args.repeat}
            configs = [("torch", precision, SOURCE) for precision in args.precisions.split(",")]
            if args.onnx:
                configs.append(("onnxruntime", "fp32", SOURCE))
            if args.compare_src:
                configs.append((None, "fp32", args.compare_src.resolve()))
            reference = None
            for engine, precision, source in configs:
                alpha_path = os.path.join(scratch, f"{method}-{engine}-{precision}.npy")
                outcome = run_config({**base, "engine": engine, "precision": precision, "alpha_path": alpha_path},
                                     source)
                label = engine or f"torch ({source.parent.name})"
                if "error" in outcome:
                    rows.append((label, precision, method, f"skipped: {outcome['error'][:90]}"))
                    continue
                median = statistics.median(outcome["seconds"])
                alpha = np.load(alpha_path)
                if reference is None:
                    reference = (median, alpha)
                difference = np.abs(alpha - reference[1])
                rows.append((label, precision, method, f"{median:7.2f} s  {outcome['rss'] / 2**30:5.2f} GB  "
                             f"x{reference[0] / median:5.2f}  max {difference.max():.4f}  mean {difference.mean():.6f}  "
                             f"SAD {abs(float(alpha.sum() - reference[1].sum())) / 1000:.3f}k  "
                             f">0.05 {100 * (difference > 0.05).mean():.3f}%"))
    print(f"{args.model} on {args.image} ({args.device}, {args.repeat} repeats, median; ratio and error "
          "against torch fp32 of the same method, first row of each method)")
    for engine, precision, method, text in rows:
        print(f"{engine:<22} {precision:<5} {method:<7} {text}")


if __name__ == "__main__":
    main()
