"""The training loop: one optimisation step at a time, with hooks around it.

:class:`Trainer` owns the model, optimiser, scheduler and data; hooks
(:class:`LogHook`, :class:`CheckpointHook`, :class:`ValidationHook`) do
everything else after each step. :func:`train` builds a run from a
:class:`~p3m.train.config.TrainConfig` and is what ``p3m train`` calls.

A checkpoint (``DIR/last.pth``) is an official-format weights file
(``{"state_dict": ...}``, loadable by ``p3m matte --weights``) with the full
training state under ``"train_state"`` (step, optimiser, scheduler, gradient
scaler, RNG states of every process, configuration), readable with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from p3m.checkpoint import load_weights, read_checkpoint, save_weights
from p3m.io import OutputFolder, append_text, write_text
from p3m.models.registry import get_spec
from p3m.train import distributed
from p3m.train.config import TrainConfig, save_yaml
from p3m.train.dataset import P3MTrainDataset, TrainSampler, epochs_to_steps, worker_init
from p3m.train.distributed import DistInfo
from p3m.train.losses import p3m_losses

LAST = "last.pth"
BEST = "best.pth"
LOG = "log.jsonl"
VAL_LOG = "val.jsonl"
TEXT_LOG = "train.log"
CONFIG = "config.yaml"
TENSORBOARD = "tensorboard"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------- state

def rng_state() -> dict[str, Any]:
    """RNG states of this process, as plain tensors and lists (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().cpu()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, config: TrainConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate before optimiser step ``step + 1``."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


# ----------------------------------------------------------------------------- trainer

@dataclass
class StepResult:
    """Loss terms of one step (detached tensors) and its timings in seconds."""

    losses: dict[str, torch.Tensor]
    data_time: float
    step_time: float


class Hook:
    """Called by :class:`Trainer` on every process; hooks check ``trainer.info.is_main`` to write."""

    def before_train(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer", result: StepResult) -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass


@dataclass
class Trainer:
    """The optimisation loop.

    ``step`` counts completed optimiser steps; :meth:`run` goes on until
    ``total_steps`` or until :meth:`request_stop` (e.g. on Ctrl-C), after the
    step in progress.
    """

    config: TrainConfig
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: torch.utils.data.DataLoader
    sampler: TrainSampler
    device: torch.device
    info: DistInfo
    output: Path
    total_steps: int
    use_composition: bool
    hooks: list[Hook] = field(default_factory=list)
    step: int = 0
    best: float | None = None
    signal_received: bool = False
    stop_requested: bool = False
    interrupted: bool = False
    log: Callable[[str], None] = print

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)

    def request_stop(self) -> None:
        """Stop after the step in progress (safe to call from a signal handler)."""
        self.signal_received = True

    def _agree_on_stop(self) -> None:
        # Processes must stop after the same step; they compare notes at logged steps.
        if not self.info.enabled:
            self.stop_requested = self.signal_received
        elif self.step % self.config.log_every == 0:
            self.stop_requested = distributed.any_across(self.info, self.signal_received, self.device)

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """uint8 batch -> float tensors on the device: ``input`` normalised, the rest as losses expect."""
        spec = get_spec(self.config.model)
        non_blocking = self.device.type == "cuda"
        moved = {name: tensor.to(self.device, non_blocking=non_blocking) for name, tensor in batch.items()}
        image = moved["image"].float().div_(255.0)
        mean = torch.tensor(spec.mean, device=self.device)[None, :, None, None]
        std = torch.tensor(spec.std, device=self.device)[None, :, None, None]
        out = {"input": (image - mean) / std, "image": image,
               "alpha": moved["alpha"].float().div_(255.0), "trimap": moved["trimap"].float()}
        if self.use_composition:
            out["fg"] = moved["fg"].float().div_(255.0)
            out["bg"] = moved["bg"].float().div_(255.0)
        return out

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One forward/backward/update on a prepared batch; returns the detached loss terms."""
        self.model.train()
        dtype = self.autocast_dtype
        context = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with context:
            output = self.model(batch["input"])
        losses = p3m_losses(output, batch["alpha"], batch["trimap"], batch["image"] if self.use_composition else None,
                            batch.get("fg"), batch.get("bg"))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {name: value.detach() for name, value in losses.items()}

    def run(self) -> None:
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while self.step < self.total_steps and not self.stop_requested:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start)
                tick = time.perf_counter()
                for batch in self.loader:
                    data_time = time.perf_counter() - tick
                    losses = self.train_step(self.prepare_batch(batch))
                    self.step += 1
                    if self.device.type == "cuda" and self.step % self.config.log_every == 0:
                        torch.cuda.synchronize(self.device)
                    result = StepResult(losses, data_time, time.perf_counter() - tick)
                    self._agree_on_stop()
                    for hook in self.hooks:
                        hook.after_step(self, result)
                    if self.step >= self.total_steps or self.stop_requested:
                        break
                    tick = time.perf_counter()
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    # -- checkpoints

    def train_state(self) -> dict[str, Any]:
        """Everything beyond the weights needed to continue exactly (call on every process)."""
        states = distributed.gather_objects(self.info, rng_state())
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": states,
            "world_size": self.info.world_size,
            "best": self.best,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, path: Path | None = None) -> Path | None:
        """Write ``last.pth`` (rank 0); every process must call it."""
        state = self.train_state()
        if not self.info.is_main:
            return None
        path = path or self.output / LAST
        return save_weights(self.module, path, self.config.model, extra={"train_state": state})

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The learning rate comes from the current configuration (it may have changed on resume).
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = lr * lr_factor(self.step, self.config, self.total_steps)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best")
        states = state.get("rng") or []
        if len(states) == self.info.world_size:
            set_rng_state(states[self.info.rank])
        elif states:
            set_rng_state(states[0])
            self.log(f"note: the checkpoint was written by {len(states)} process(es), this run has "
                     f"{self.info.world_size}; RNG states restored from rank 0 only")


# ----------------------------------------------------------------------------- hooks

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
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.output / TENSORBOARD), purge_step=trainer.step + 1)
        except ImportError:
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
        append_text(trainer.output / LOG, json.dumps(entry) + "\n", root=trainer.output)
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


class CheckpointHook(Hook):
    """``last.pth`` every ``checkpoint_every`` steps, at the end and when stopped early."""

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        every = trainer.config.checkpoint_every
        due = (every and trainer.step % every == 0) or trainer.step >= trainer.total_steps or trainer.stop_requested
        if due:
            if not all(bool(torch.isfinite(value)) for value in result.losses.values()):
                raise TrainingError(f"loss is not finite at step {trainer.step}; last.pth was not overwritten; "
                                    f"try a lower --lr or --precision fp32")
            path = trainer.save_checkpoint()
            if path is not None and trainer.stop_requested:
                trainer.log(f"stopped at step {trainer.step}; checkpoint {path} (continue with --resume)")


class ValidationHook(Hook):
    """Scores the model on P3M-500-P / P3M-500-NP every ``validate_every`` steps and at the end.

    Images are shared out among processes; rank 0 writes ``val.jsonl``, TensorBoard
    scalars and ``best.pth`` (lowest mean SAD over the validated splits).
    """

    def __init__(self, splits: dict[str, list]):
        self.splits = splits
        self.writer = None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(trainer.output / TENSORBOARD / "val"), purge_step=trainer.step + 1)
            except ImportError:
                self.writer = None

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        every = trainer.config.validate_every
        if every and (trainer.step % every == 0 or trainer.step >= trainer.total_steps):
            self.validate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()

    def validate(self, trainer: Trainer) -> dict[str, dict[str, float]]:
        from p3m import metrics
        from p3m.inference.pipeline import STRATEGIES, Method, smallest_supported_side
        from p3m.io import ImageReadError, read_image, read_mask

        config, module, info = trainer.config, trainer.module, trainer.info
        spec = get_spec(config.model)
        strategy = STRATEGIES[Method.parse(config.val_method)]
        smallest = smallest_supported_side(0.5)
        if info.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, 0)
        module.eval()
        scores: dict[str, list[dict[str, float]]] = {}
        problems: list[str] = []
        try:
            for split, samples in self.splits.items():
                scores[split] = []
                for sample in samples[info.rank::info.world_size]:
                    try:
                        image = read_image(sample.image)
                        if min(image.shape[:2]) < smallest:
                            raise ValueError(f"{sample.image}: shorter side below {smallest} px, skipped")
                        alpha, _ = strategy(module, image, config.val_max_size, spec.mean, spec.std, trainer.device)
                        face = read_mask(sample.face_mask) if sample.face_mask is not None else None
                        result = metrics.compute_metrics(alpha, read_mask(sample.gt), read_mask(sample.trimap),
                                                         face, fast=config.val_fast)
                        scores[split].append(result.values)
                    except (ImageReadError, ValueError) as error:
                        problems.append(str(error))
        finally:
            module.train()
        gathered = distributed.gather_objects(info, (scores, problems))
        if not info.is_main:
            return {}
        means: dict[str, dict[str, float]] = {}
        for split in self.splits:
            rows = [row for part, _ in gathered for row in part.get(split, [])]
            keys = rows[0].keys() if rows else ()
            means[split] = {key: float(np.nanmean([row[key] for row in rows])) for key in keys}
            entry = {"step": trainer.step, "split": split, "images": len(rows), **means[split]}
            append_text(trainer.output / VAL_LOG, json.dumps(entry) + "\n", root=trainer.output)
            if self.writer is not None:
                for key, value in means[split].items():
                    self.writer.add_scalar(f"{split}/{key}", value, trainer.step)
            shown = "  ".join(f"{key}={means[split][key]:.4g}" for key in list(keys)[:5])
            trainer.log(f"validation {split} at step {trainer.step} ({len(rows)} images): {shown}")
        for line in [line for _, part in gathered for line in part][:5]:
            trainer.log(f"validation: {line}")
        sads = [values["SAD"] for values in means.values() if "SAD" in values and math.isfinite(values["SAD"])]
        if sads:
            score = float(np.mean(sads))
            if trainer.best is None or score < trainer.best:
                trainer.best = score
                save_weights(module, trainer.output / BEST, config.model,
                             extra={"step": trainer.step, "mean_sad": score})
                trainer.log(f"new best mean SAD {score:.4f}: {trainer.output / BEST}")
        return means


# ----------------------------------------------------------------------------- building a run

@dataclass
class TrainResult:
    """How a run ended."""

    output: Path
    step: int
    total_steps: int
    interrupted: bool


def _log_function(info: DistInfo, output: Path) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not info.is_main:
            return
        print(f"p3m train: {message}", file=sys.stderr, flush=True)
        append_text(output / TEXT_LOG, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n", root=output)
    return log


def _truncate_jsonl(path: Path, step: int) -> None:
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


def _validation_splits(config: TrainConfig, log) -> dict[str, list]:
    if not config.validate_every:
        return {}
    from p3m.evaluation import dataset_samples

    splits = {}
    for split in config.val_splits:
        try:
            samples, problems = dataset_samples(config.data, split)
        except (NotADirectoryError, FileNotFoundError):
            log(f"validation: {split} not found under {config.data}, skipped")
            continue
        for line in problems[:3]:
            log(f"validation: {line}")
        if config.val_max_images:
            samples = samples[:config.val_max_images]
        if samples:
            splits[split] = samples
    return splits


def train(config: TrainConfig, resume: str | Path | None = None) -> TrainResult:
    """Run (or continue) training as configured; returns when done or stopped.

    Args:
        config: the resolved configuration; ``data`` and ``output`` must be set.
        resume: a checkpoint written by a previous run, to continue from.

    Raises:
        TrainingError, ValueError (bad settings or data), p3m.checkpoint.CheckpointError.
    """
    config.validate()
    if not config.data or not config.output:
        raise TrainingError("both the dataset root (--data) and the output folder (--output) are needed")
    info, device = distributed.init(config.device)
    try:
        return _train(config, resume, info, device)
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, resume, info: DistInfo, device: torch.device) -> TrainResult:
    output = Path(config.output)
    if info.is_main:
        OutputFolder(output).mkdir(output)  # also removes temporaries left by a killed run
    distributed.barrier(info)
    log = _log_function(info, output)
    if config.batch_size % info.world_size:
        raise TrainingError(f"batch size {config.batch_size} is the global batch and must be divisible by the "
                            f"{info.world_size} processes")
    if config.precision == "fp16" and device.type not in ("cuda", "cpu"):
        raise TrainingError(f"--precision fp16 needs CUDA or the CPU, not {device.type}")
    spec = get_spec(config.model)
    config.model = spec.name
    resume_content = resume_state = None
    if resume:
        resume_content = read_checkpoint(resume)  # read once: weights and training state
        resume_state = resume_content.get("train_state")
        if resume_state is None:
            raise TrainingError(f"{resume}: holds weights but no training state; start a new run from it "
                                f"with --weights instead of --resume")

    dataset = P3MTrainDataset(config.data, config.image_size, config.crop_sizes, tuple(config.trimap_kernel),
                              use_fgbg={"auto": None, "on": True, "off": False}[config.composition])
    files = dataset.files
    for line in files.problems[:5]:
        log(f"data: {line}")
    if len(files.problems) > 5:
        log(f"data: ... {len(files.problems) - 5} more file(s) left out")
    if not dataset.use_fgbg:
        reason = "turned off" if config.composition == "off" else (
            f"fg/bg found for {files.fgbg_count} of {len(dataset)} samples; "
            f"run `p3m dataset prepare {config.data}` to estimate them")
        log(f"composition loss off ({reason})")
    per_process = config.batch_size // info.world_size
    sampler = TrainSampler(len(dataset), per_process, info.world_size, info.rank, config.seed)
    total_steps = config.max_steps or epochs_to_steps(config.epochs, sampler.steps_per_epoch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_process, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        worker_init_fn=worker_init if config.workers > 0 else None,
        prefetch_factor=4 if config.workers > 0 else None,
        multiprocessing_context=_worker_context() if config.workers > 0 else None,
    )

    seed_everything(config.seed + info.rank)
    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = spec.build()
    if config.weights and not resume:
        from p3m.weights import resolve

        name = None if config.weights == "official" else config.weights
        if info.is_main:
            path = resolve(spec.name, name)  # downloads once, before the other processes look
        distributed.barrier(info)
        if not info.is_main:
            path = resolve(spec.name, name, allow_download=False)
        load_weights(model, path, spec.name)
        log(f"initial weights: {path}")
    elif config.backbone_weights and not resume:
        from p3m.train.backbone import load_backbone

        report = load_backbone(model, config.backbone_weights)
        for line in report.summary().splitlines():
            log(line)
    elif not resume:
        log("note: no --backbone-weights; the encoder starts from random initialisation "
            "(the papers start from ImageNet weights)")
    torch.manual_seed(config.seed + info.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    module = model.to(device)
    # Frozen in every run, not only distributed ones, so that the optimiser state of a
    # checkpoint fits whatever number of processes resumes it.
    unused = _freeze_unused_parameters(module, device)
    if unused:
        log(f"{len(unused)} parameter tensor(s) of {spec.name} never receive a gradient and are frozen: "
            f"{', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}")
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters)

    params = [param for param in module.parameters() if param.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    trainer = Trainer(config, model, module, optimizer, scheduler, scaler, loader, sampler, device, info, output,
                      total_steps, dataset.use_fgbg, log=log)
    if resume:
        load_weights(module, resume, spec.name, content=resume_content)
        resume_content = None  # the weights are in the model now
        trainer.load_train_state(resume_state)
        log(f"resumed from {resume} at step {trainer.step}")
        if info.is_main:
            _truncate_jsonl(output / LOG, trainer.step)
            _truncate_jsonl(output / VAL_LOG, trainer.step)
    if info.is_main:
        save_yaml(config, output / CONFIG)
    splits = _validation_splits(config, log) if info.is_main else {}
    splits = distributed.broadcast_object(info, splits)
    # Validation before the checkpoint, so that a last.pth written at a validated step
    # carries the best score of that step.
    trainer.hooks = [LogHook(), *([ValidationHook(splits)] if splits else []), CheckpointHook()]

    log(f"{spec.name} on {len(dataset)} images, {info.world_size} process(es) on {device.type}, global batch "
        f"{config.batch_size}, {sampler.steps_per_epoch} steps per epoch, steps {trainer.step} -> {total_steps}, "
        f"{config.precision}, output {output}")
    if trainer.step >= total_steps:
        log(f"nothing to do: step {trainer.step} already reached {total_steps} (raise --max-steps or --epochs)")
        return TrainResult(output, trainer.step, total_steps, False)

    with _stop_on_signals(trainer):
        trainer.run()
    if trainer.stop_requested and trainer.step < total_steps:
        trainer.interrupted = True
    else:
        log(f"done: {trainer.step} steps; weights {output / LAST}")
    distributed.barrier(info)
    return TrainResult(output, trainer.step, total_steps, trainer.interrupted)


def _freeze_unused_parameters(module: nn.Module, device: torch.device) -> list[str]:
    """Freeze parameters that no output depends on, found with one small forward/backward on a copy.

    DistributedDataParallel otherwise waits forever for their gradients; freezing them
    changes nothing, since Adam skips parameters without gradients.
    """
    import copy

    probe = copy.deepcopy(module).train()
    generator = torch.Generator(device="cpu").manual_seed(0)
    output = probe(torch.randn(1, 3, 64, 64, generator=generator).to(device))
    total = sum(tensor.float().sum() for tensor in (output.global_logits, output.local_alpha, *output.side_logits))
    total.backward()
    unused = [name for name, param in probe.named_parameters() if param.requires_grad and param.grad is None]
    del probe, output, total
    params = dict(module.named_parameters())
    for name in unused:
        params[name].requires_grad_(False)
    return unused


def _worker_context():
    """Data-loader workers start from a fork server, not a fork of this process: a plain fork
    can deadlock in OpenCV or OpenMP when this process already used their thread pools."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["p3m.train.dataset"])
    return context


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """First Ctrl-C / SIGTERM: finish the step, save, stop. A second Ctrl-C interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        if trainer.signal_received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.log("stopping after this step (Ctrl-C again to abort without saving)")
        trainer.request_stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
