"""Matting a batch of files into an output folder, one subfolder per output kind.

``OUT/alpha/``, ``OUT/rgba/``, ``OUT/composite/``, ``OUT/trimap/`` mirror each
input's relative path, as PNG for images and as videos (or PNG sequences) for
videos (see :mod:`p3m.inference.video`). Complete outputs (non-empty and decodable)
are skipped unless ``overwrite``, so an interrupted batch resumes and redoes
what a crash left half-done; a file that fails at any step is reported and the
batch goes on; Ctrl-C stops it with the report of what was done. Every file
goes through the one writer, bound to ``OUT`` and the batch's inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from p3m.executors.local import LocalExecutor
from p3m.inference.compose import FOREGROUND_MODES, Background, output_images
from p3m.inference.matter import Matter, MatteResult
from p3m.inference.overlap import overlapped
from p3m.inference.video import VideoOptions, matte_video, video_targets
from p3m.io import ImageReadError, OutputFolder, UnsafeOutputError, output_complete, read_image
from p3m.io.video import VideoReadError, is_video_file

OUTPUT_KINDS = ("alpha", "rgba", "composite", "trimap")
# zlib level 1 instead of Pillow's 6: a 12 MP cutout encodes 3.5x faster for 19% more bytes,
# and 30% faster than level 3 for 3% more (scripts/bench_foreground.py).
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_OUTPUTS = ("alpha", "rgba")
WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"


@dataclass(frozen=True)
class MatteOptions:
    """What to write for each image."""

    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    background: str = "white"
    foreground: str = "estimate"
    alpha_depth: int = 8
    overwrite: bool = False
    png_compression: int = DEFAULT_PNG_COMPRESSION  # zlib level 0-9, every PNG written
    frames: bool = False  # videos as PNG sequences
    temporal_smooth: float = 0.0  # videos: flicker reduction strength in [0, 1)

    def __post_init__(self):
        unknown = [kind for kind in self.outputs if kind not in OUTPUT_KINDS]
        if unknown or not self.outputs:
            raise ValueError(f"unknown output kind {', '.join(unknown) or '(none)'}; choose from {', '.join(OUTPUT_KINDS)}")
        if self.alpha_depth not in (8, 16):
            raise ValueError(f"alpha depth must be 8 or 16, got {self.alpha_depth}")
        if self.foreground not in FOREGROUND_MODES:
            raise ValueError(f"unknown foreground mode {self.foreground!r}; use one of {', '.join(FOREGROUND_MODES)}")
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"PNG compression must be 0-9, got {self.png_compression}")
        if not 0.0 <= self.temporal_smooth < 1.0:
            raise ValueError(f"temporal smoothing strength must be in [0, 1), got {self.temporal_smooth}")


@dataclass
class BatchReport:
    """Outcome of a batch: written, skipped (all outputs already there) and failed files."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False
    total: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def summary(self) -> str:
        text = (f"{len(self.written)} done, {len(self.skipped)} skipped (outputs exist), "
                f"{len(self.failed)} failed")
        if self.interrupted:
            left = self.total - len(self.written) - len(self.skipped) - len(self.failed)
            text += f", interrupted ({left} not started; run again to resume)"
        return text


def output_targets(out_dir: Path, relative: Path, outputs: Sequence[str], frames: bool = False) -> dict[str, Path]:
    if is_video_file(relative):
        return video_targets(out_dir, relative, outputs, frames)
    return {kind: out_dir / kind / relative.with_suffix(".png") for kind in outputs}


def has_pending_work(pairs: Sequence[tuple[Path, Path]], out_dir: os.PathLike, options: MatteOptions) -> bool:
    """Whether any output is still to be written (so a finished batch needs no model)."""
    if options.overwrite:
        return bool(pairs)
    return any(not _complete(path, options.frames) for _, relative in pairs
               for path in output_targets(Path(out_dir), relative, options.outputs, options.frames).values())


def encode_png(image: np.ndarray, compress_level: int = DEFAULT_PNG_COMPRESSION) -> bytes:
    """The PNG bytes of an output image, as ``p3m matte`` writes them (and ``p3m serve`` returns them)."""
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_outputs(result: MatteResult, targets: dict[str, Path], options: MatteOptions,
                  background: Background | None, outputs: OutputFolder | None = None) -> None:
    """Write each requested kind for one result (atomically, one file per kind), through
    ``outputs`` when given (else guarded only by the targets' common folder)."""
    if outputs is None:
        outputs = OutputFolder(Path(os.path.commonpath([path.parent for path in targets.values()])), clean=False)
    for kind, image in output_images(result, tuple(targets), options.foreground, options.alpha_depth, background):
        data = encode_png(image, options.png_compression)
        outputs.write(targets[kind], lambda tmp: tmp.write_bytes(data))


class MatteSetup:
    """The per-file matting step, built where it runs (a picklable recipe for ``p3m.executors``).

    ``matter`` is a :class:`Matter`, or a callable without arguments that builds
    one (``functools.partial(Matter, ...)``): a worker calls it once and mattes
    every file it gets with that model. Calling the setup returns a :class:`MatteStep`.
    """

    def __init__(self, matter: Matter | Callable[[], Matter], out_dir: os.PathLike, options: MatteOptions,
                 outputs: OutputFolder, frame_progress: bool = False):
        self.matter, self.out_dir, self.options, self.outputs = matter, Path(out_dir), options, outputs
        self.frame_progress = frame_progress

    def __call__(self) -> "MatteStep":
        matter = self.matter if isinstance(self.matter, Matter) else self.matter()
        background = Background(self.options.background) if "composite" in self.options.outputs else None
        return MatteStep(matter, self.out_dir, self.options, background, self.outputs, self.frame_progress)


@dataclass
class _Job:
    """One file on its way through :class:`MatteStep`'s stages."""

    source: Path
    relative: Path
    targets: dict[str, Path]
    image: np.ndarray | None = None  # (H, W, 3) uint8, decoded by load
    result: MatteResult | None = None  # set by run
    outcome: tuple[str, str | None] | None = None  # set as soon as it is known


class MatteStep:
    """Mattes one (source, relative) pair, an image or a video, into ``out_dir``; never raises for a bad file.

    ``step(pair)`` returns ("written" | "skipped" | "failed", the one-line error
    or None). It runs three stages in turn: :meth:`load` (skip complete outputs,
    decode), :meth:`run` (the network; a video is matted whole here) and
    :meth:`finish` (foreground, encoding, writes); :meth:`overlapped` runs the
    first and last beside the network over many pairs.
    """

    def __init__(self, matter: Matter, out_dir: Path, options: MatteOptions, background: Background | None,
                 outputs: OutputFolder, frame_progress: bool = False):
        self.matter, self.out_dir, self.options, self.background = matter, out_dir, options, background
        self.outputs, self.frame_progress = outputs, frame_progress

    def __call__(self, pair: tuple[Path, Path]) -> tuple[str, str | None]:
        return self.finish(self.run(self.load(pair)))

    def overlapped(self, pairs: Iterable[tuple[Path, Path]]) -> Iterator[tuple[str, str | None]]:
        """The outcome of each pair, in order, decoding the next image and writing the
        previous one's outputs while the network works (see :func:`p3m.inference.overlap.overlapped`)."""
        return overlapped(pairs, self.load, self.run, self.finish)

    def load(self, pair: tuple[Path, Path]) -> _Job:
        source, relative = pair
        targets = output_targets(self.out_dir, relative, self.options.outputs, self.options.frames)
        if not self.options.overwrite:
            targets = {kind: path for kind, path in targets.items() if not _complete(path, self.options.frames)}
        job = _Job(source, relative, targets)
        if not targets:
            job.outcome = (SKIPPED, None)
        elif not is_video_file(relative):
            try:
                job.image = read_image(source)
            except Exception as error:  # noqa: BLE001 - one file's failure, whatever it is, must not end the batch
                job.outcome = _failure(source, error)
        return job

    def run(self, job: _Job) -> _Job:
        if job.outcome is not None:
            return job
        options = self.options
        try:
            if is_video_file(job.relative):
                video_options = VideoOptions(tuple(job.targets), self.background, options.foreground,
                                             options.alpha_depth, options.frames, options.temporal_smooth,
                                             options.png_compression)
                matte_video(self.matter, job.source, job.targets, video_options, progress=self.frame_progress,
                            root=self.outputs.root, inputs=self.outputs.inputs)
                job.outcome = (WRITTEN, None)
            else:
                job.result, job.image = self.matter.predict(job.image), None
        except Exception as error:  # noqa: BLE001 - one file's failure, whatever it is, must not end the batch
            job.outcome = _failure(job.source, error)
        return job

    def finish(self, job: _Job) -> tuple[str, str | None]:
        if job.outcome is None:
            try:
                write_outputs(job.result, job.targets, self.options, self.background, self.outputs)
                job.outcome = (WRITTEN, None)
            except Exception as error:  # noqa: BLE001 - one file's failure, whatever it is, must not end the batch
                job.outcome = _failure(job.source, error)
        return job.outcome


def _failure(source: Path, error: Exception) -> tuple[str, str]:
    if isinstance(error, (ImageReadError, VideoReadError, UnsafeOutputError)):
        return FAILED, str(error)  # these name the file already
    return FAILED, f"{source}: {type(error).__name__}: {_first_line(error)}"


def collect_report(pairs: Sequence[tuple[Path, Path]], outcomes: Iterable[tuple[str, str | None]],
                   on_error: Callable[[Path, str], None] | None = None) -> BatchReport:
    """The report of a batch from the outcomes of a :class:`MatteStep`, in the order of ``pairs``.

    ``on_error(path, message)`` is called for each failed file as its outcome
    arrives; Ctrl-C ends the batch with ``report.interrupted`` set.
    """
    report = BatchReport(total=len(pairs))
    try:
        for (status, message), (source, _) in zip(outcomes, pairs):  # outcomes first: runs them to the end
            if status == WRITTEN:
                report.written.append(source)
            elif status == SKIPPED:
                report.skipped.append(source)
            else:
                report.failed.append((source, message))
                if on_error is not None:
                    on_error(source, message)
    except KeyboardInterrupt:
        report.interrupted = True
        if isinstance(outcomes, Generator):
            outcomes.close()  # stops its threads now; a write under way ends first
    return report


def matte_files(matter: Matter, pairs: Sequence[tuple[Path, Path]], out_dir: os.PathLike,
                options: MatteOptions = MatteOptions(),
                on_error: Callable[[Path, str], None] | None = None,
                progress: bool = False, outputs: OutputFolder | None = None,
                frame_progress: bool = False) -> BatchReport:
    """Matte ``pairs`` (source, relative path) from :func:`p3m.inputs.collect_inputs` into ``out_dir``.

    Per-file problems (unreadable or odd images and videos, inference errors, failed
    writes) are recorded in the report and passed to ``on_error(path, message)``;
    the batch goes on. Ctrl-C ends the batch with ``report.interrupted`` set.
    ``outputs`` defaults to ``out_dir`` guarding the sources of ``pairs``.
    ``progress`` shows a bar over files, ``frame_progress`` one over each video's frames.
    The local executor runs the step, decoding images and writing their outputs beside
    the network (:meth:`MatteStep.overlapped`);
    ``p3m.executors`` runs the same step on Ray actors.
    """
    if outputs is None:
        outputs = OutputFolder(out_dir, [source for source, _ in pairs])
    setup = MatteSetup(matter, out_dir, options, outputs, frame_progress)
    return collect_report(pairs, LocalExecutor().map(setup, pairs, desc="matting", progress=progress), on_error)


def _complete(path: Path, frames: bool) -> bool:
    """Whether an earlier run finished this output: a PNG-sequence folder (renamed only when
    complete) or a file the writer's check accepts."""
    return path.is_dir() if frames else output_complete(path)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
