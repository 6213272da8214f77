"""Random generators and determinism: what a run seeds, saves and restores.

Every source of randomness in training is either keyed (augmentation: see
:mod:`p3m.train.dataset`) or one of the generators below, whose states a
checkpoint holds for every process, so that a resumed run draws what the
uninterrupted one would have drawn.
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import Any, Iterator

import numpy as np
import torch

# cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
CUBLAS_WORKSPACE = ":4096:8"
# torch has no deterministic flag for max-unpooling because indices may collide in general;
# P3M-Net's come from 2x2, stride-2 max-pooling, never collide, and each output is written once.
EXEMPT_OPS = ("max_unpooling2d_forward_out",)


def rng_state() -> dict[str, Any]:
    """RNG states of this process (Python, NumPy, torch CPU and CUDA), as plain tensors and
    lists (``weights_only``-safe)."""
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
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(device: torch.device) -> Iterator[list[str]]:
    """Make this process compute the same bits for the same inputs while inside; yields what
    was set, for the log, and restores the previous settings on exit.

    torch's deterministic algorithms, oneDNN's deterministic mode, cuDNN without
    autotuning and, on CUDA, cuBLAS with a fixed workspace. An op torch knows to be
    non-deterministic (on CUDA: the backward pass of bilinear interpolation)
    runs with a warning, which reaches ``train.log``; ``EXEMPT_OPS`` are
    deterministic here and stay silent. CPU reductions are deterministic for a
    given number of threads, which the provenance record keeps.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.deterministic,
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    settings = ["torch.use_deterministic_algorithms", "oneDNN deterministic", "cuDNN deterministic, no autotuning"]
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        settings.append(f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.mkldnn.deterministic = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        with warnings.catch_warnings():
            for op in EXEMPT_OPS:
                warnings.filterwarnings("ignore", message=f"{op} does not have a deterministic")
            yield settings
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.mkldnn.deterministic = previous[1]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


def data_generator(seed: int) -> torch.Generator:
    """The data loader's own generator (its workers' base seed), kept off the global one so that
    starting an epoch does not shift the model's random draws."""
    return torch.Generator().manual_seed(seed)
