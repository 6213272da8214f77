#!/usr/bin/env python3
"""Frames per second of `p3m matte` on a synthetic 720p clip, RESIZE and HYBRID.

usage: python scripts/bench_video.py --weights CKPT [--frames 8] [--size 1280x720]
           [--methods resize,hybrid] [--outputs alpha,composite] [--estimate]

For each method it prints the frames/s of Matter.predict alone on the decoded
frames and of the whole pipeline (decode, inference, encode of the outputs,
overlapped in threads), both timed in the same run, so their ratio shows what
decoding and encoding add. The clip is a portrait from `p3m.data.synth`
panning across its background, encoded as H.264 with an AAC track.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from p3m.data.synth import make_sample
from p3m.inference.compose import Background
from p3m.inference.matter import Matter
from p3m.inference.video import VideoOptions, matte_video, video_targets
from p3m.io.video import VideoReader


def write_clip(path: Path, width: int, height: int, frames: int, rate: int = 25) -> None:
    sample = make_sample(np.random.default_rng(0), (width, height))
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=rate)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    sound = container.add_stream("aac", rate=48000, layout="mono")
    for index in range(frames):
        shifted = np.roll(sample.image, 4 * index, axis=1)
        container.mux(video.encode(av.VideoFrame.from_ndarray(shifted, format="rgb24")))
    container.mux(video.encode(None))
    tone = (0.2 * np.sin(np.arange(frames * 48000 // rate) * 2 * np.pi * 440 / 48000)).astype(np.float32)[None]
    for start in range(0, tone.shape[1], 1024):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="flt",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = 48000, start
        container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))
    container.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--methods", default="resize,hybrid")
    parser.add_argument("--outputs", default="alpha,composite")
    parser.add_argument("--estimate", action="store_true",
                        help="also time the pipeline with the foreground colour estimated (pymatting)")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    outputs = tuple(args.outputs.split(","))
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        write_clip(clip, width, height, args.frames)
        with VideoReader(clip) as reader:
            frames = [frame.image for frame in reader]
        for method in args.methods.split(","):
            matter = Matter(weights=args.weights, method=method, device="cpu")
            matter.predict(frames[0])  # warm-up: one-off allocations
            started = time.perf_counter()
            for image in frames:
                matter.predict(image)
            alone = len(frames) / (time.perf_counter() - started)
            options = VideoOptions(outputs, Background("white"), foreground="original")
            targets = video_targets(Path(folder) / method, Path("clip.mp4"), outputs)
            started = time.perf_counter()
            count = matte_video(matter, clip, targets, options)
            pipeline = count / (time.perf_counter() - started)
            print(f"{method:6s} {width}x{height}: Matter.predict {alone:.3f} frames/s; "
                  f"p3m matte ({','.join(outputs)}, foreground original) {pipeline:.3f} frames/s "
                  f"({pipeline / alone:.2f}x)", flush=True)
            if args.estimate:
                options = VideoOptions(outputs, Background("white"), foreground="estimate")
                targets = video_targets(Path(folder) / f"{method}-estimate", Path("clip.mp4"), outputs)
                started = time.perf_counter()
                count = matte_video(matter, clip, targets, options)
                print(f"{method:6s} {width}x{height}: p3m matte ({','.join(outputs)}, foreground estimate) "
                      f"{count / (time.perf_counter() - started):.3f} frames/s", flush=True)


if __name__ == "__main__":
    main()
