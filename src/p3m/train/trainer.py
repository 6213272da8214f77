"""The training loop and its state: one optimisation step at a time, with hooks around it.

:class:`Trainer` owns the model, optimiser, scheduler and data; hooks
(:class:`~p3m.train.logs.LogHook`, :class:`CheckpointHook`,
:class:`~p3m.train.validation.ValidationHook`) do everything else after each
step. :func:`p3m.train.run.train` builds a run from a configuration.

A checkpoint (``DIR/last.pth``) is an official-format weights file
(``{"state_dict": ...}``, loadable by ``p3m matte --weights``) with the full
training state under ``"train_state"`` (step, optimiser, scheduler, gradient
scaler, RNG states of every process, configuration, provenance record),
readable with ``torch.load(weights_only=True)``. The data order and the
augmentation follow from the step and the seed (see
:class:`~p3m.train.dataset.TrainSampler`), so that is all a run needs to
continue exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from p3m.checkpoint import save_weights
from p3m.models.registry import get_spec
from p3m.train import distributed
from p3m.train.config import TrainConfig
from p3m.train.copy_paste import FACE_THRESHOLD, FeaturePaste
from p3m.train.dataset import TrainSampler
from p3m.train.distributed import DistInfo
from p3m.train.losses import p3m_losses
from p3m.train.state import rng_state, set_rng_state

LAST = "last.pth"
BEST = "best.pth"
CONFIG = "config.yaml"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------- schedule

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
    provenance: dict[str, Any] = field(default_factory=dict)
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

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """uint8 batch -> float tensors on the device: ``input`` normalised, the rest as losses expect;
        with feature-level P3M-CP in the batch, ``feature_paste`` (a :class:`FeaturePaste`, or None)."""
        spec = get_spec(self.config.model)
        non_blocking = self.device.type == "cuda"
        moved = {name: tensor.to(self.device, non_blocking=non_blocking) for name, tensor in batch.items()
                 if name not in ("face_mask", "cp_fcp", "cp_box")}
        mean = torch.tensor(spec.mean, device=self.device)[None, :, None, None]
        std = torch.tensor(spec.std, device=self.device)[None, :, None, None]
        image = moved["image"].float().div_(255.0)
        out = {"input": (image - mean) / std, "image": image,
               "alpha": moved["alpha"].float().div_(255.0), "trimap": moved["trimap"].float()}
        if self.use_composition:
            out["fg"] = moved["fg"].float().div_(255.0)
            out["bg"] = moved["bg"].float().div_(255.0)
        if "cp_fcp" in batch:
            rows = torch.nonzero(batch["cp_fcp"]).flatten().tolist()
            source = moved["cp_source"][rows].float().div_(255.0)
            out["feature_paste"] = FeaturePaste(
                rows, (source - mean) / std, [tuple(box) for box in batch["cp_box"][rows].tolist()],
                [mask[0].numpy() >= FACE_THRESHOLD for mask in batch["face_mask"][rows]]) if rows else None
        return out

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One forward/backward/update on a prepared batch; returns the detached loss terms."""
        self.model.train()
        dtype = self.autocast_dtype
        context = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with context:
            output = self.model(batch["input"], feature_paste=batch.get("feature_paste"))
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
            "provenance": self.provenance,
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


# ----------------------------------------------------------------------------- checkpoints

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
