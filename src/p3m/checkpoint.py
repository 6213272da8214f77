"""Loading and saving P3M-Net weights in the official checkpoint format.

Official files are ``{"state_dict": {...}}`` (p3m also accepts a bare state
dict and keys prefixed ``module.``, as written by ``DataParallel``). Loading is
safe and strict: only with a torch release whose ``weights_only=True`` has the
known bypasses fixed (:data:`MIN_TORCH`, checked before any load), only
tensors and plain containers, and any missing, unexpected, misshapen or
non-finite value is one :class:`CheckpointError` naming the file, a few keys
and the likely cause.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import nn

from p3m.io import atomic_write
from p3m.models.registry import ModelSpec, get_spec, list_models

PathLike = Union[str, os.PathLike]
# weights_only=True is bypassable before 2.6 (CVE-2025-32434) and has memory-safety fixes up to 2.10.
MIN_TORCH = (2, 10)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


def torch_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def require_safe_torch(path: PathLike) -> None:
    """Refuse to load any checkpoint with a torch older than :data:`MIN_TORCH`."""
    if torch_version() < MIN_TORCH:
        raise CheckpointError(f"{path}: not loaded: torch {torch.__version__} cannot load checkpoints safely; "
                              f"p3m needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (pip install -U torch)")


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint file safely (tensors and plain containers only).

    Raises:
        CheckpointError: missing, unreadable, refused (it holds other objects)
            or not a mapping; never torch's own advice to load it unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    require_safe_torch(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a hostile file may make the unpickler raise anything
        text = str(error)
        if "Unsupported global" in text:
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain containers "
                                  "(p3m never loads such files: they can run code)") from None
        # torch's unpickling messages advise loading the file unsafely: only p3m's own words are shown.
        detail = "" if isinstance(error, pickle.UnpicklingError) or "weights_only" in text else (
            ": " + (text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__))
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt download?){detail}"
        ) from None
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(content).__name__}")
    return dict(content)


def official_state_dict(content: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The parameter dict of a checkpoint: ``content["state_dict"]`` or the content itself,
    with any ``module.`` prefix removed."""
    state = content.get("state_dict", content)
    if not isinstance(state, Mapping):
        raise ValueError("the checkpoint's 'state_dict' is not a mapping")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors


def _examples(keys: set[str], count: int = 3) -> str:
    ordered = sorted(keys)
    shown = ", ".join(ordered[:count])
    return shown + (f", ... (+{len(ordered) - count})" if len(ordered) > count else "")


def _likely_variant(official: Mapping[str, torch.Tensor], expected: ModelSpec) -> str:
    for name in list_models():
        spec = get_spec(name)
        if spec.name != expected.name and spec.signature_key in official:
            return f"; it looks like a '{spec.name}' checkpoint (use model '{spec.name}')"
    if not official:
        return "; the file holds no tensors"
    return "; it is not a P3M-Net checkpoint of a known variant"


def load_weights(model: nn.Module, path: PathLike, model_name: str,
                 content: Mapping[str, Any] | None = None) -> nn.Module:
    """Load an official-format checkpoint into ``model`` strictly.

    ``content`` is the file's content when the caller has read it already
    (:func:`read_checkpoint`); ``path`` then only names it in errors.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not match the variant.
    """
    spec = get_spec(model_name)
    path = Path(path)
    try:
        official = official_state_dict(read_checkpoint(path) if content is None else content)
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {error}") from None
    expected = spec.to_official(model.state_dict())
    missing = {key for key in set(expected) - set(official) if not spec.optional_key(key)}
    unexpected = {key for key in set(official) - set(expected) if not spec.optional_key(key)}
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        raise CheckpointError(
            f"{path}: not a '{spec.name}' checkpoint: {'; '.join(parts)}{_likely_variant(official, spec)}"
        )
    misshapen = {key for key in expected if key in official and official[key].shape != expected[key].shape}
    if misshapen:
        key = sorted(misshapen)[0]
        raise CheckpointError(
            f"{path}: {len(misshapen)} tensors have the wrong shape for '{spec.name}' "
            f"(e.g. {key}: {tuple(official[key].shape)} in the file, {tuple(expected[key].shape)} expected)"
        )
    non_finite = sorted(key for key in expected if key in official and official[key].is_floating_point()
                        and not bool(torch.isfinite(official[key]).all()))
    if non_finite:
        raise CheckpointError(f"{path}: refused: {len(non_finite)} tensors hold NaN or infinite values "
                              f"(e.g. {non_finite[0]}); a diverged run or a corrupt file")
    # Optional keys the file omits keep the model's own values (e.g. seeded Performer features).
    official = {key: value for key, value in official.items() if key in expected}
    official.update({key: expected[key] for key in set(expected) - set(official)})
    model.load_state_dict(spec.from_official(official), strict=True)
    return model


def save_weights(model: nn.Module, path: PathLike, model_name: str, extra: Mapping[str, Any] | None = None,
                 **guards) -> Path:
    """Write ``{"state_dict": <official keys>, **extra}`` through the one writer (``guards`` as
    in :func:`p3m.io.atomic_write`).

    The official code reads such a file with ``load_state_dict(ckpt["state_dict"], strict=True)``.
    """
    spec = get_spec(model_name)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    # Aliased official keys (the ResNet-34 encoder is registered twice) share one
    # CPU tensor, so the file stores them once, as official files do.
    official = {key: value for key, value in spec.to_official(state).items() if not spec.optional_key(key)}
    content = {"state_dict": official, **(extra or {})}
    return atomic_write(path, lambda tmp: torch.save(content, tmp), **guards)
