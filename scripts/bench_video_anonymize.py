#!/usr/bin/env python3
"""Frames per second of video anonymization (`p3m anonymize clip.mp4`) on a generated 720p clip.

usage: python scripts/bench_video_anonymize.py [--frames 30] [--size 1280x720] [--face-height 160]
           [--portrait p_bac3c1ff] [--repeat 1]

The clip is a test portrait (tests/fixtures/portraits) scaled so its face is
--face-height px tall, the view panning across it, as H.264 with an AAC
track. Printed, in one run: frames/s of the detector alone on the decoded
frames (one pass), and of the whole anonymization (detect every frame, track,
obfuscate and encode, decode and search every written frame again), so the
ratio shows what tracking, encoding and verification add.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from p3m.io.video import VideoReader
from p3m.privacy import FaceDetector, detect_faces
from p3m.privacy.video import anonymize_video

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def _face_clips():
    spec = importlib.util.spec_from_file_location("face_clips", FIXTURES / "face_clips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--face-height", type=float, default=160.0, help="face height in px, hairline to chin")
    parser.add_argument("--portrait", default="p_bac3c1ff", choices=("p_bac3c1ff", "p_07141906"))
    parser.add_argument("--repeat", type=int, default=1, help="time each measure this many times, keep the best")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    clips = _face_clips()
    with tempfile.TemporaryDirectory(prefix="p3m-bench-") as folder:
        source = clips.write_clip(Path(folder) / "clip.mp4",
                                  clips.face_frames(args.portrait, width, height, args.frames, args.face_height,
                                                    step=4.0), audio=True)
        with VideoReader(source) as reader:
            images = [frame.image for frame in reader]
        detect_faces(images[0], detector=FaceDetector())  # onnxruntime's first run sets itself up

        detect_seconds, anonymize_seconds, report = [], [], None
        for _ in range(args.repeat):
            detector = FaceDetector()  # a fresh one each time: the detector caches tiles it has searched
            start = time.perf_counter()
            found = [len(detect_faces(image, detector=detector)) for image in images]
            detect_seconds.append(time.perf_counter() - start)
            detector = FaceDetector()
            start = time.perf_counter()
            report = anonymize_video(source, Path(folder) / "out" / "clip.mp4", detector=detector)
            anonymize_seconds.append(time.perf_counter() - start)
        detect_rate = args.frames / min(detect_seconds)
        anonymize_rate = args.frames / min(anonymize_seconds)
    print(f"{args.frames} frames, {width}x{height}, face {args.face_height:.0f} px ({args.portrait}); "
          f"faces found on {sum(n > 0 for n in found)} of {len(found)} frames")
    print(f"status: {report.status}, tracks: {len(report.tracks)}, frames held: "
          f"{sum(track.held_frames for track in report.tracks)}, encode+verify passes: {report.rounds}")
    for track in report.tracks:
        print(f"  track {track.id}: {track.to_dict()}")
    print(f"detector alone, one pass: {detect_rate:.2f} frames/s")
    print(f"anonymize (detect, track, hide, encode, verify): {anonymize_rate:.2f} frames/s "
          f"({detect_rate / anonymize_rate:.2f}x the detector pass's time)")


if __name__ == "__main__":
    main()
