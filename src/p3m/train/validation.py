"""Validation during training: the model as ``p3m matte --weights`` would run it, scored on P3M-500-P/NP.

The weights of the step are written to a temporary file in the run folder and
loaded by :class:`p3m.Matter` (``shorter_side_limit=None``, ``small_image_pass=False``,
as the official evaluation), so the scores are those of the checkpoint a user would ship.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from p3m.checkpoint import save_weights
from p3m.train import distributed
from p3m.train.config import TrainConfig
from p3m.train.logs import VAL_LOG, append_line, tensorboard_writer
from p3m.train.trainer import BEST, Hook, StepResult, Trainer


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
            self.writer = tensorboard_writer(trainer, "val")

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        every = trainer.config.validate_every
        if every and (trainer.step % every == 0 or trainer.step >= trainer.total_steps):
            self.validate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()

    def validate(self, trainer: Trainer) -> dict[str, dict[str, float]]:
        """Score every split; returns ``{split: {metric: mean}}`` on rank 0 (empty elsewhere)."""
        from p3m import metrics
        from p3m.inference.matter import Matter
        from p3m.io import ImageReadError, read_mask

        config, module, info = trainer.config, trainer.module, trainer.info
        if info.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, 0)
        scores: dict[str, list[dict[str, float]]] = {}
        problems: list[str] = []
        with _weights_file(module, trainer.output, config.model, info.rank) as weights:
            matter = Matter(config.model, weights=weights, method=config.val_method, max_size=config.val_max_size,
                            device=str(trainer.device), shorter_side_limit=None, small_image_pass=False)
        for split, samples in self.splits.items():
            scores[split] = []
            for sample in samples[info.rank::info.world_size]:
                try:
                    alpha = matter.predict(sample.image).alpha
                    face = read_mask(sample.face_mask) if sample.face_mask is not None else None
                    result = metrics.compute_metrics(alpha, read_mask(sample.gt), read_mask(sample.trimap),
                                                     face, fast=config.val_fast)
                    scores[split].append(result.values)
                except (ImageReadError, ValueError) as error:
                    problems.append(str(error))
        del matter
        gathered = distributed.gather_objects(info, (scores, problems))
        if not info.is_main:
            return {}
        means = self._report(trainer, gathered)
        self._keep_best(trainer, config, means)
        return means

    def _report(self, trainer: Trainer, gathered: list) -> dict[str, dict[str, float]]:
        means: dict[str, dict[str, float]] = {}
        for split in self.splits:
            rows = [row for part, _ in gathered for row in part.get(split, [])]
            keys = rows[0].keys() if rows else ()
            means[split] = {key: float(np.nanmean([row[key] for row in rows])) for key in keys}
            entry = {"step": trainer.step, "split": split, "images": len(rows), **means[split]}
            append_line(trainer.output / VAL_LOG, json.dumps(entry))
            if self.writer is not None:
                for key, value in means[split].items():
                    self.writer.add_scalar(f"{split}/{key}", value, trainer.step)
            shown = "  ".join(f"{key}={means[split][key]:.4g}" for key in list(keys)[:5])
            trainer.log(f"validation {split} at step {trainer.step} ({len(rows)} images): {shown}")
        for line in [line for _, part in gathered for line in part][:5]:
            trainer.log(f"validation: {line}")
        return means

    @staticmethod
    def _keep_best(trainer: Trainer, config: TrainConfig, means: dict[str, dict[str, float]]) -> None:
        sads = [values["SAD"] for values in means.values() if "SAD" in values and math.isfinite(values["SAD"])]
        if not sads:
            return
        score = float(np.mean(sads))
        if trainer.best is None or score < trainer.best:
            trainer.best = score
            save_weights(trainer.module, trainer.output / BEST, config.model,
                         extra={"step": trainer.step, "mean_sad": score})
            trainer.log(f"new best mean SAD {score:.4f}: {trainer.output / BEST}")


@contextlib.contextmanager
def _weights_file(module: torch.nn.Module, folder: Path, model: str, rank: int) -> Iterator[Path]:
    """An official-format weights file of ``module`` in ``folder`` (one per process), removed on exit."""
    path = save_weights(module, folder / f".validation-{rank}.pth", model)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
