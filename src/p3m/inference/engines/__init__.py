"""Engines: what runs the P3M-Net network for the inference pipeline.

Every engine takes the normalised image of one pass and returns numpy maps,
so the pipeline around it (resizing, argmax, fusion; all in float32 or
float64 numpy) is one code path for all of them:

- ``torch``: the PyTorch model built from a checkpoint, BatchNorm folded into
  the convolutions, in ``fp32`` (default, faithful), ``bf16`` (CPUs with
  AVX512-BF16/AMX, CUDA) or ``fp16`` (CUDA).
- ``onnxruntime``: a graph written by ``p3m export``; needs no PyTorch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

ENGINES = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class BranchOutputs:
    """Raw network maps of one pass at its resolution (h, w); None where not requested.

    global_logits: (3, h, w) float32, channels background / transition / foreground.
    local_alpha:   (h, w) float32 in [0, 1].
    """

    global_logits: np.ndarray | None
    local_alpha: np.ndarray | None


class Engine(Protocol):
    model_name: str  # the registry name of the variant, e.g. "resnet34"
    mean: tuple[float, float, float]  # normalisation of the network's input
    std: tuple[float, float, float]
    small_image_side: int | None  # see p3m.models.ModelSpec.small_image_side
    precision: str
    device: str

    def run(self, image: np.ndarray, need_global: bool = True, need_local: bool = True,
            local_region: np.ndarray | None = None) -> BranchOutputs:
        """``image``: (1, 3, h, w) float32, normalised, h and w multiples of 32.
        ``local_region``: (h, w) bool, the pixels whose local alpha is used; an engine may
        leave the local alpha elsewhere unspecified (None: all pixels)."""


def create_engine(engine: str = "torch", model: str = "resnet34", weights: str | os.PathLike | None = None,
                  device: str = "auto", precision: str = "fp32") -> Engine:
    """Build the named engine. ``weights``: a checkpoint for ``torch`` (None: the cached
    official weights), an exported ``.onnx`` file for ``onnxruntime`` (which names its model)."""
    engine, precision = str(engine).lower(), str(precision).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if engine == "torch":
        try:
            from p3m.inference.engines.torch_engine import TorchEngine
        except ModuleNotFoundError as error:
            if error.name != "torch":
                raise
            raise ValueError("engine 'torch' needs PyTorch (pip install p3m[torch]); without it, use "
                             "engine 'onnxruntime' with a graph from `p3m export`") from None

        return TorchEngine(model, weights, device, precision)
    if engine == "onnxruntime":
        try:
            from p3m.inference.engines.onnx_engine import OnnxEngine
        except ModuleNotFoundError as error:
            raise ValueError(f"engine 'onnxruntime' needs {error.name} (pip install p3m[onnx])") from None

        return OnnxEngine(weights, device, precision)
    raise ValueError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
