"""Matting videos: the same per-frame ``Matter.predict``, written as videos or PNG sequences.

Per output kind: ``alpha`` and ``trimap`` become grayscale H.264 MP4s,
``composite`` an H.264 MP4 over the background, ``rgba`` a ProRes 4444 MOV
with an alpha channel; composite and RGBA videos carry the source's audio.
With ``frames`` each kind is a folder of numbered PNGs instead. Decoding,
inference and encoding run overlapped (decoding and encoding in threads of
their own). Every output is staged under a temporary name in its final folder
and renamed when the whole video is done, so an interrupted run leaves no
half video under a final name.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from p3m.inference.compose import Background, output_images
from p3m.inference.matter import Matter, MatteResult
from p3m.io import atomic_write, save_image
from p3m.io.video import VIDEO_CODECS, VideoFrame, VideoReader, VideoWriter

WRITER_KIND = {"alpha": "matte", "trimap": "matte", "composite": "colour", "rgba": "rgba"}
AUDIO_KINDS = ("composite", "rgba")
_PREFETCH = 4


@dataclass(frozen=True)
class VideoMatte:
    """The matte of one video frame: ``frame`` (image, pts, time) and ``result`` (as ``Matter.predict``)."""

    frame: VideoFrame
    result: MatteResult


def video_targets(out_dir: Path, relative: Path, outputs: Sequence[str], frames: bool = False) -> dict[str, Path]:
    """Output path per kind: ``OUT/<kind>/<relative>`` with the kind's video suffix,
    or, with ``frames``, a folder ``OUT/<kind>/<relative without suffix>/`` of PNGs."""
    if frames:
        return {kind: out_dir / kind / relative.with_suffix("") for kind in outputs}
    return {kind: out_dir / kind / relative.with_suffix(VIDEO_CODECS[WRITER_KIND[kind]][2]) for kind in outputs}


class TemporalSmoother:
    """Reduce frame-to-frame flicker of alphas without ghosting.

    The previous smoothed alpha is carried to the current frame along the
    optical flow (OpenCV's DIS) and blended in with a per-pixel weight
    ``strength * exp(-(colour_change / 6)^2) * exp(-(alpha_change / 0.1)^2)``
    (colour change: mean absolute RGB difference in 0-255, over 5x5 pixels):
    where the warped previous frame matches the current one and the alpha
    moved only a little, small fluctuations are averaged away; where the flow
    failed or the alpha really changed, the current alpha is kept as it is.

    Args:
        strength: weight of the past in [0, 1); 0 turns smoothing off.
    """

    COLOUR_SCALE = 6.0
    ALPHA_SCALE = 0.1

    def __init__(self, strength: float = 0.6):
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing strength must be in [0, 1), got {strength}")
        self.strength = strength
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __call__(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """image: (H, W, 3) uint8; alpha: (H, W) float32 in [0, 1] -> smoothed alpha, same shape."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if self._previous is None or self._previous[0].shape != gray.shape or self.strength == 0.0:
            self._previous = (gray, image, alpha)
            return alpha
        previous_gray, previous_image, previous_alpha = self._previous
        flow = self._flow.calc(gray, previous_gray, None)
        height, width = gray.shape
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
        warped_alpha = cv2.remap(previous_alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        warped_image = cv2.remap(previous_image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        colour_change = np.abs(image.astype(np.float32) - warped_image.astype(np.float32)).mean(axis=2)
        colour_change = cv2.blur(colour_change, (5, 5))
        alpha_change = np.abs(alpha - warped_alpha)
        weight = self.strength * np.exp(-np.square(colour_change / self.COLOUR_SCALE)
                                        - np.square(alpha_change / self.ALPHA_SCALE))
        smoothed = (weight * warped_alpha + (1.0 - weight) * alpha).astype(np.float32)
        self._previous = (gray, image, smoothed)
        return smoothed


def _prefetched(iterator: Iterator, executor: ThreadPoolExecutor, ahead: int = _PREFETCH) -> Iterator:
    """Items of ``iterator``, produced ``ahead`` of use in ``executor``'s one thread."""
    end = object()
    pending = deque(executor.submit(next, iterator, end) for _ in range(ahead))
    while True:
        item = pending.popleft().result()
        if item is end:
            return
        pending.append(executor.submit(next, iterator, end))
        yield item


def iter_video(matter: Matter, reader: VideoReader, temporal_smooth: float = 0.0) -> Iterator[VideoMatte]:
    """Matte every frame of an open ``reader`` with ``matter.predict``, decoding ahead in a thread.

    ``temporal_smooth`` > 0 applies :class:`TemporalSmoother` with that strength
    (the trimap stays per frame).
    """
    smoother = TemporalSmoother(temporal_smooth) if temporal_smooth > 0 else None
    with ThreadPoolExecutor(1, thread_name_prefix="p3m-decode") as decoder:
        for frame in _prefetched(iter(reader), decoder):
            result = matter.predict(frame.image)
            if smoother is not None:
                result = MatteResult(result.image, smoother(result.image, result.alpha), result.trimap)
            yield VideoMatte(frame, result)


@dataclass(frozen=True)
class VideoOptions:
    """How to write a video's outputs: kinds, composite background, foreground colour, PNG frames."""

    outputs: tuple[str, ...]
    background: Background | None = None
    foreground: str = "estimate"
    alpha_depth: int = 8
    frames: bool = False
    temporal_smooth: float = 0.0
    png_compression: int = 1  # zlib level of PNG frames, as p3m.inference.batch's default


def _atomic_folder(path: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder next to ``path`` with ``write`` and rename it to ``path`` when done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".p3m-{os.getpid()}-", suffix=".part", dir=path.parent))
    try:
        write(staging)
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".p3m-{os.getpid()}-", suffix=".old", dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _staged(paths: Sequence[Path], stage: Callable, body: Callable[[list[Path]], None]) -> None:
    """Run ``body`` on temporary paths for all ``paths``; each is renamed to its final name only if all succeed."""
    if not paths:
        body([])
        return
    stage(paths[0], lambda temporary: _staged(paths[1:], stage, lambda rest: body([temporary, *rest])))


def matte_video(matter: Matter, source: Path, targets: dict[str, Path], options: VideoOptions,
                progress: bool = False, **guards) -> int:
    """Matte the video ``source`` and write ``targets`` (kind -> path, from :func:`video_targets`).

    ``guards`` (``root``, ``inputs``) go to :func:`p3m.io.atomic_write` for every file written.

    Returns:
        the number of frames written.

    Raises:
        p3m.io.video.VideoReadError: the source is not a readable video (raised
            before anything is written) or fails while decoding (nothing is
            left under a final name).
    """
    with VideoReader(source) as reader:
        kinds = list(targets)
        count = 0

        def stage(path: Path, write: Callable[[Path], None]) -> Path:
            if options.frames:
                return _atomic_folder(path, write)
            return atomic_write(path, write, **guards)

        def run(temporaries: list[Path]) -> None:
            nonlocal count
            count = _write_frames(matter, reader, dict(zip(kinds, temporaries)), options, progress, guards)

        _staged([targets[kind] for kind in kinds], stage, run)
        return count


def predict_video(matter: Matter, source: str | os.PathLike, temporal_smooth: float = 0.0) -> Iterator[VideoMatte]:
    """Open ``source`` and matte its frames in order (see :func:`iter_video`)."""
    with VideoReader(source) as reader:
        yield from iter_video(matter, reader, temporal_smooth)


def _write_frames(matter: Matter, reader: VideoReader, temporaries: dict[str, Path], options: VideoOptions,
                  progress: bool, guards: dict) -> int:
    kinds = list(temporaries)
    depth = options.alpha_depth if options.frames else 8
    writers: dict[str, VideoWriter] = {}

    def encode(index: int, matte: VideoMatte) -> None:
        for kind, image in output_images(matte.result, kinds, options.foreground, depth, options.background):
            if options.frames:
                save_image(temporaries[kind] / f"{index:06d}.png", image, compress_level=options.png_compression, **guards)
            else:
                writers[kind].write(image, matte.frame.pts)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=reader.frame_count, desc=reader.path.name, unit="frame", dynamic_ncols=True,
                   leave=False, disable=None)
    count = 0
    try:
        if not options.frames:
            for kind, path in temporaries.items():
                audio = reader.path if kind in AUDIO_KINDS and reader.has_audio else None
                writers[kind] = VideoWriter(path, WRITER_KIND[kind], reader.frame_rate, reader.time_base,
                                            audio_from=audio)
        with ThreadPoolExecutor(1, thread_name_prefix="p3m-encode") as encoder:
            pending: deque = deque()
            try:
                # closed explicitly, so decoding stops before the caller closes the reader
                with closing(iter_video(matter, reader, options.temporal_smooth)) as mattes:
                    for matte in mattes:
                        pending.append(encoder.submit(encode, count, matte))
                        count += 1
                        while len(pending) > _PREFETCH:
                            pending.popleft().result()
                            if bar is not None:
                                bar.update()
                while pending:
                    pending.popleft().result()
                    if bar is not None:
                        bar.update()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return count
