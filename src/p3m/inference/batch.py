"""Matting a batch of files into an output folder, one subfolder per output kind.

``OUT/alpha/``, ``OUT/rgba/``, ``OUT/composite/``, ``OUT/trimap/`` mirror each
input's relative path, as PNG. Complete outputs (non-empty and decodable)
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
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from p3m.inference.compose import FOREGROUND_MODES, Background, alpha_to_uint, composite, cutout, foreground_rgb8
from p3m.inference.matter import Matter, MatteResult
from p3m.io import ImageReadError, OutputFolder, UnsafeOutputError, output_complete

OUTPUT_KINDS = ("alpha", "rgba", "composite", "trimap")
# zlib level 1 instead of Pillow's 6: a 12 MP cutout encodes 3.5x faster for 19% more bytes,
# and 30% faster than level 3 for 3% more (scripts/bench_foreground.py).
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_OUTPUTS = ("alpha", "rgba")


@dataclass(frozen=True)
class MatteOptions:
    """What to write for each image."""

    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    background: str = "white"
    foreground: str = "estimate"
    alpha_depth: int = 8
    overwrite: bool = False
    png_compression: int = DEFAULT_PNG_COMPRESSION  # zlib level 0-9, every PNG written

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


def output_targets(out_dir: Path, relative: Path, outputs: Sequence[str]) -> dict[str, Path]:
    return {kind: out_dir / kind / relative.with_suffix(".png") for kind in outputs}


def has_pending_work(pairs: Sequence[tuple[Path, Path]], out_dir: os.PathLike, options: MatteOptions) -> bool:
    """Whether any output is still to be written (so a finished batch needs no model)."""
    if options.overwrite:
        return bool(pairs)
    return any(not output_complete(path) for _, relative in pairs
               for path in output_targets(Path(out_dir), relative, options.outputs).values())


def output_images(result: MatteResult, kinds: Sequence[str], options: MatteOptions,
                  background: Background | None) -> Iterator[tuple[str, np.ndarray]]:
    """Each requested kind for one result, one at a time: alpha (H, W) uint8 or uint16,
    rgba (H, W, 4) uint8, composite (H, W, 3) uint8, trimap (H, W) uint8."""
    colour = None
    if "rgba" in kinds or "composite" in kinds:
        colour = foreground_rgb8(result.image, result.alpha, options.foreground)
    for kind in kinds:
        if kind == "alpha":
            yield kind, alpha_to_uint(result.alpha, options.alpha_depth)
        elif kind == "rgba":
            yield kind, cutout(colour, result.alpha)
        elif kind == "composite":
            yield kind, composite(colour, result.alpha, background.for_size(*result.alpha.shape))
        else:
            yield kind, result.trimap


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
    for kind, image in output_images(result, tuple(targets), options, background):
        data = encode_png(image, options.png_compression)
        outputs.write(targets[kind], lambda tmp: tmp.write_bytes(data))


def matte_files(matter: Matter, pairs: Sequence[tuple[Path, Path]], out_dir: os.PathLike,
                options: MatteOptions = MatteOptions(),
                on_error: Callable[[Path, str], None] | None = None,
                progress: bool = False, outputs: OutputFolder | None = None) -> BatchReport:
    """Matte ``pairs`` (source, relative path) from :func:`p3m.inputs.collect_inputs` into ``out_dir``.

    Per-file problems (unreadable or odd images, inference errors, failed
    writes) are recorded in the report and passed to ``on_error(path, message)``;
    the batch goes on. Ctrl-C ends the batch with ``report.interrupted`` set.
    ``outputs`` defaults to ``out_dir`` guarding the sources of ``pairs``.
    """
    out_dir = Path(out_dir)
    if outputs is None:
        outputs = OutputFolder(out_dir, [source for source, _ in pairs])
    background = Background(options.background) if "composite" in options.outputs else None
    report = BatchReport(total=len(pairs))
    iterator = pairs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(pairs, desc="matting", unit="image", dynamic_ncols=True, disable=None)  # None: TTY only
    try:
        for source, relative in iterator:
            targets = output_targets(out_dir, relative, options.outputs)
            if not options.overwrite:
                targets = {kind: path for kind, path in targets.items() if not output_complete(path)}
                if not targets:
                    report.skipped.append(source)
                    continue
            try:
                write_outputs(matter.predict(source), targets, options, background, outputs)
            except (ImageReadError, UnsafeOutputError) as error:
                message = str(error)
            except Exception as error:  # noqa: BLE001 - one file's failure, whatever it is, must not end the batch
                message = f"{source}: {type(error).__name__}: {_first_line(error)}"
            else:
                report.written.append(source)
                continue
            report.failed.append((source, message))
            if on_error is not None:
                on_error(source, message)
    except KeyboardInterrupt:
        report.interrupted = True
    return report


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
