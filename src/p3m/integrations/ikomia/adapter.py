"""What p3m's Ikomia task does, apart from Ikomia's classes (so it is testable without ``ikomia``).

The task's parameters are Ikomia's usual string map, with the names and values
of Ikomia's own ``infer_p3m_portrait_matting`` plus p3m's ``weights`` and
``privacy``. They become one :class:`TaskSettings`; :class:`MattingAdapter`
keeps one :class:`~p3m.inference.Matter` per task and builds a new one only
when the settings change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from p3m.inference.compose import output_images
from p3m.inference.matter import Matter, MatteResult
from p3m.inference.pipeline import Method
from p3m.models.registry import get_spec

logger = logging.getLogger(__name__)

# Ikomia's plugin defaults, except ``cuda``: "True" means CUDA when present, which is
# what Ikomia's default (torch.cuda.is_available()) amounts to.
DEFAULT_VALUES = {
    "model_name": "resnet34",
    "input_size": "800",
    "method": "HYBRID",
    "cuda": "True",
    "weights": "",
    "privacy": "False",
    "precision": "fp32",
}

PRECISIONS = ("fp32", "bf16", "fp16")
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


@dataclass(frozen=True)
class TaskSettings:
    """The task's parameters, checked and typed; equal settings share a Matter."""

    model: str
    max_size: int
    method: Method
    device: str
    weights: Path | None
    privacy: bool
    precision: str = "fp32"
    cuda_requested: bool = field(default=False, compare=False)

    @classmethod
    def from_values(cls, values: Mapping[str, str], cuda_available: bool) -> TaskSettings:
        """Parse Ikomia's string map (missing keys take :data:`DEFAULT_VALUES`).

        Raises:
            ValueError: one line naming the parameter, its value and what it accepts.
        """
        merged = {**DEFAULT_VALUES, **values}
        unknown = sorted(set(merged) - set(DEFAULT_VALUES))
        if unknown:
            raise ValueError(f"unknown parameter {', '.join(map(repr, unknown))}; "
                             f"parameters are {', '.join(DEFAULT_VALUES)}")
        try:
            model = get_spec(merged["model_name"]).name
        except KeyError as error:
            raise ValueError(f"parameter 'model_name': {error.args[0]}") from None
        try:
            method = Method.parse(merged["method"])
        except ValueError:
            raise ValueError(f"parameter 'method' must be HYBRID or RESIZE, got {merged['method']!r}") from None
        try:
            max_size = int(merged["input_size"])
        except ValueError:
            max_size = 0
        if max_size < 32:
            raise ValueError(f"parameter 'input_size' must be a whole number of pixels, at least 32, "
                             f"got {merged['input_size']!r}")
        cuda = _flag("cuda", merged["cuda"])
        precision = merged["precision"].strip().lower()
        if precision not in PRECISIONS:
            raise ValueError(f"parameter 'precision' must be one of {', '.join(PRECISIONS)}, got {merged['precision']!r}")
        weights = merged["weights"].strip()
        return cls(model=model, max_size=max_size, method=method, device="cuda" if cuda and cuda_available else "cpu",
                   weights=Path(weights).expanduser() if weights else None, privacy=_flag("privacy", merged["privacy"]),
                   precision=precision, cuda_requested=cuda)


def _flag(name: str, text: str) -> bool:
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"parameter {name!r} must be True or False, got {text!r}")


def task_outputs(result: MatteResult) -> tuple[np.ndarray, np.ndarray]:
    """The task's outputs, as ``p3m matte`` writes them.

    Returns:
        alpha: (H, W) uint8, the matte (output 0).
        rgba: (H, W, 4) uint8 RGBA cutout, straight colour re-estimated at soft
            edges (output 1).
    """
    images = dict(output_images(result, ("alpha", "rgba")))
    return images["alpha"], images["rgba"]


class MattingAdapter:
    """Mattes the task's input images with one Matter, rebuilt only when the settings change."""

    def __init__(self, build: Callable[[TaskSettings], Matter] | None = None):
        self._build = build or _build_matter
        self._settings: TaskSettings | None = None
        self._matter: Matter | None = None

    def matter(self, settings: TaskSettings) -> Matter:
        if self._matter is None or settings != self._settings:
            self._matter = None  # free the old network before building the next
            self._matter = self._build(settings)
            self._settings = settings
        return self._matter

    def run(self, image: np.ndarray, values: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """Matte ``image`` ((H, W, 3) uint8 RGB, as Ikomia's ``get_image()`` gives it) -> (alpha, rgba)."""
        settings = TaskSettings.from_values(values, cuda_available=torch.cuda.is_available())
        if image is None or image.size == 0:
            raise ValueError("no input image")
        return task_outputs(self.matter(settings).predict(image))


def _build_matter(settings: TaskSettings) -> Matter:
    if settings.cuda_requested and settings.device == "cpu":
        logger.warning("cuda=True but CUDA is not available: running on the CPU")
    return Matter(model=settings.model, weights=settings.weights, method=settings.method.value,
                  max_size=settings.max_size, device=settings.device, privacy=settings.privacy,
                  precision=settings.precision)
