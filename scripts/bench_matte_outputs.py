#!/usr/bin/env python3
"""`p3m matte` end to end: the first run after install against the second, and camera-size photos.

usage: python scripts/bench_matte_outputs.py [--src DIR ...] [--sizes 12,48] [--method resize]

Each measurement is one `python -m p3m matte` process: wall seconds, CPU
seconds (user + system, all threads: steadier than wall time on a busy
machine) and its peak RSS, from GNU time, with the ResNet-34 kit checkpoint built by
tests/fixtures/make_checkpoint.py. First run: HOME and NUMBA_CACHE_DIR point at
empty folders, the default outputs of a 533x800 test portrait are written; the
second run repeats it with the caches as the first left them. Camera sizes: a
test portrait over a colour wave upscaled to each size with sensor-like noise
(JPEG quality 95), `--output alpha` against the default outputs (alpha, rgba).
Give --src several times (e.g. an older checkout's src/ and this one's) to
compare them in one run.

The kit checkpoint's weights are deterministic, not trained: its matte is soft
(0 < alpha < 1) on nearly every pixel, the worst case for the cutout, whose
colour work follows the soft band. ``--matte published`` keeps the same
processes (the network still runs) but swaps each matte for the official
model's published alpha of that portrait, resized to the photo: a trained
model's matte, soft on 3-7% of the pixels.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foreground import NAMES, camera_photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def build_checkpoint(path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_checkpoint", FIXTURES / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(FIXTURES / "r34_manifest.json"), str(path))


PUBLISHED_ALPHA = FIXTURES / "official_alpha" / "resnet34"
# Run in the child: `p3m matte` whose Matter.predict returns the published alpha of the
# portrait behind every photo (after running the network, so its cost is counted).
PUBLISHED_MATTE_MAIN = """
import sys, cv2, numpy as np
from PIL import Image
from p3m.inference.matter import Matter
from p3m.cli import main
published = np.asarray(Image.open(sys.argv.pop(1)), np.float32) / 255
network = Matter.predict
def predict(self, source):
    result = network(self, source)
    height, width = result.alpha.shape
    result.alpha[:] = np.clip(cv2.resize(published, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
    return result
Matter.predict = predict
sys.exit(main(sys.argv[1:]))
"""


def run_matte(src: Path, env: dict[str, str], arguments: list[str],
              published: Path | None = None) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (GB) of one `p3m matte` process run from ``src``.

    GNU time starts it, so the peak is the process's own (a child forked from this
    script would inherit this script's peak).
    """
    program = ["-m", "p3m"] if published is None else ["-c", PUBLISHED_MATTE_MAIN, str(published)]
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "cpu %U %S peak_kb %M", sys.executable, *program, "matte",
                           *arguments, "--quiet"], env={**env, "PYTHONPATH": str(src)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"p3m matte {' '.join(arguments)} failed: {done.stderr.strip()}")
    fields = done.stderr.strip().splitlines()[-1].split()
    return seconds, float(fields[1]) + float(fields[2]), int(fields[4]) / 1024 ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", type=Path, help="a src/ folder to run p3m from (repeatable)")
    parser.add_argument("--sizes", default="12,48", help="megapixels of the camera-size photos ('' for none)")
    parser.add_argument("--method", default="resize", help="the --method of every run (default resize)")
    parser.add_argument("--matte", choices=("kit", "published"), default="kit",
                        help="camera-size photos: the kit checkpoint's own matte (soft everywhere, the worst "
                             "case) or the official model's published alpha of the portrait (a trained matte)")
    parser.add_argument("--skip-first-run", action="store_true",
                        help="only the camera-size photos, with the user's caches as they are")
    args = parser.parse_args()
    sources = args.src or [ROOT / "src"]
    sizes = [float(size) for size in args.sizes.split(",") if size]
    with tempfile.TemporaryDirectory(prefix="p3m-bench-") as scratch:
        scratch = Path(scratch)
        checkpoint = scratch / "r34.pth"
        build_checkpoint(checkpoint)
        photos = {}
        for megapixels in sizes:
            photo, _ = camera_photo(megapixels)
            photos[megapixels] = scratch / f"photo_{megapixels:g}mp.jpg"
            Image.fromarray(photo).save(photos[megapixels], quality=95)
            del photo
        small = FIXTURES / "portraits" / "p_015cd10e.jpg"
        common = ["--weights", str(checkpoint), "--method", args.method]
        published = PUBLISHED_ALPHA / f"{NAMES[0]}.png" if args.matte == "published" else None
        print(f"p3m matte --method {args.method}, kit ResNet-34 checkpoint, {args.matte} matte; "
              "wall and CPU seconds and peak RSS per process")
        print("| src | run | wall s | CPU s | peak RSS |")
        print("| --- | --- | --- | --- | --- |")
        for index, src in enumerate(sources):
            home = scratch / f"home{index}"
            env = dict(os.environ)
            if not args.skip_first_run:  # else the caches as they are, warm when p3m has run before
                env.update(HOME=str(home), NUMBA_CACHE_DIR=str(home / "numba"))
                (home / "numba").mkdir(parents=True)
            runs = {}
            for label in () if args.skip_first_run else ("first run", "second run"):
                runs[label] = run_matte(src, env, [str(small), "-o", str(scratch / f"{label}{index}"), *common])
                print(f"| {src} | {label} (533x800, default outputs) | {_figures(runs[label])} |", flush=True)
            if runs:
                cached = sum(1 for path in (home / "numba").rglob("*") if path.is_file())
                print(f"| {src} | first / second | {_ratios(runs['first run'], runs['second run'])} | "
                      f"{cached} numba cache files |", flush=True)
            for megapixels, photo in photos.items():
                figures = {}
                for label, outputs in (("alpha only", ["--output", "alpha"]), ("default outputs", [])):
                    out = scratch / f"out{index}_{megapixels:g}_{len(outputs)}"
                    figures[label] = run_matte(src, env, [str(photo), "-o", str(out), *common, *outputs], published)
                    print(f"| {src} | {megapixels:g} MP, {label} | {_figures(figures[label])} |", flush=True)
                print(f"| {src} | {megapixels:g} MP, default / alpha only | "
                      f"{_ratios(figures['default outputs'], figures['alpha only'])} | |", flush=True)


def _figures(run: tuple[float, float, float]) -> str:
    return f"{run[0]:.1f} | {run[1]:.1f} | {run[2]:.2f} GB"


def _ratios(run: tuple[float, float, float], base: tuple[float, float, float]) -> str:
    return f"{run[0] / base[0]:.2f}x | {run[1] / base[1]:.2f}x"

if __name__ == "__main__":
    main()
