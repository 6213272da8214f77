"""What a run tells: ``train.log`` (messages and warnings), ``log.jsonl``, TensorBoard, a progress bar.

Only global rank 0 writes. Python warnings and the warnings of p3m's loggers
(e.g. an unreadable training image, reported from a data-loader worker) go to
``train.log`` as well as to stderr.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from p3m.io import append_text, write_text
from p3m.train import distributed
from p3m.train.distributed import DistInfo
from p3m.train.trainer import Hook, StepResult, Trainer, TrainingError

LOG = "log.jsonl"
VAL_LOG = "val.jsonl"
TEXT_LOG = "train.log"
TENSORBOARD = "tensorboard"


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file of the run folder (one ``write`` call, so that lines from several
    processes do not mix)."""
    append_text(path, line.rstrip("\n") + "\n", root=path.parent)


def stamped(message: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"


def run_logger(info: DistInfo, output: Path) -> Callable[[str], None]:
    """``log(message)``: to stderr (``p3m train: ...``) and ``train.log``, on rank 0 only."""
    def log(message: str) -> None:
        if not info.is_main:
            return
        print(f"p3m train: {message}", file=sys.stderr, flush=True)
        append_line(output / TEXT_LOG, stamped(message))
    return log


class TrainLogHandler(logging.Handler):
    """Sends p3m's log records of level WARNING and up to ``train.log`` (works in data-loader workers)."""

    def __init__(self, path: Path):
        super().__init__(logging.WARNING)
        self.path = Path(path)

    def emit(self, record: logging.LogRecord) -> None:
        message = f"warning: {record.getMessage()}"
        print(f"p3m train: {message}", file=sys.stderr, flush=True)
        try:
            append_line(self.path, stamped(message))
        except OSError:
            self.handleError(record)


def attach_train_log(path: Path) -> TrainLogHandler:
    """Route warnings of the ``p3m`` loggers to ``path``; returns the handler (to detach it)."""
    handler = TrainLogHandler(path)
    logging.getLogger("p3m").addHandler(handler)
    return handler


@contextlib.contextmanager
def warnings_to_log(info: DistInfo, output: Path) -> Iterator[None]:
    """While inside, Python warnings and p3m logger warnings of this process also reach ``train.log``."""
    if not info.is_main:
        yield
        return
    handler = attach_train_log(output / TEXT_LOG)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        append_line(output / TEXT_LOG, stamped(f"warning: {category.__name__}: {message} ({filename}:{lineno})"))
        previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
        logging.getLogger("p3m").removeHandler(handler)


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop entries logged after ``step`` (they belong to the part of the run being redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    write_text(path, "".join(line + "\n" for line in kept), root=path.parent)


def tensorboard_writer(trainer: Trainer, subfolder: str = "") -> Any:
    """A TensorBoard ``SummaryWriter`` under ``DIR/tensorboard``, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(trainer.output / TENSORBOARD / subfolder), purge_step=trainer.step + 1)


class LogHook(Hook):
    """``log.jsonl`` (one object per logged step), TensorBoard scalars and a progress bar (rank 0).

    Logged values are the step's own loss terms averaged over processes.
    """

    def __init__(self):
        self.writer = None
        self.bar = None
        self.window_time = 0.0
        self.window_data = 0.0
        self.window_steps = 0

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.info.is_main:
            return
        self.writer = tensorboard_writer(trainer)
        if self.writer is None:
            trainer.log("note: tensorboard is not installed; TensorBoard logs are off")
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="train", unit="step",
                        dynamic_ncols=True, disable=None)

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.window_time += result.step_time
        self.window_data += result.data_time
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if trainer.step % trainer.config.log_every and trainer.step != trainer.total_steps:
            return
        values = {name: float(value) for name, value in result.losses.items()}
        values = distributed.mean_across(trainer.info, values, trainer.device)
        if not all(math.isfinite(value) for value in values.values()):
            bad = ", ".join(f"{name}={value}" for name, value in values.items() if not math.isfinite(value))
            raise TrainingError(f"loss is not finite at step {trainer.step} ({bad}); last.pth was not "
                                f"overwritten; try a lower --lr or --precision fp32")
        seconds = self.window_time / self.window_steps
        entry = {"step": trainer.step, "epoch": round(trainer.step / trainer.steps_per_epoch, 4),
                 "lr": trainer.optimizer.param_groups[0]["lr"], **values,
                 "time_step": round(seconds, 5), "time_data": round(self.window_data / self.window_steps, 5),
                 "samples_per_s": round(trainer.config.batch_size / seconds, 3) if seconds > 0 else None}
        self.window_time = self.window_data = 0.0
        self.window_steps = 0
        if not trainer.info.is_main:
            return
        append_line(trainer.output / LOG, json.dumps(entry))
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, trainer.step)
            self.writer.add_scalar("train/lr", entry["lr"], trainer.step)
            self.writer.add_scalar("train/time_step", seconds, trainer.step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
