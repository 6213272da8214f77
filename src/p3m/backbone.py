"""Initialising a P3M-Net encoder from ImageNet weights.

Accepted files: the official ``r34mp_pretrained_imagenet.pth.tar`` (a ResNet-34
max-pool state dict), ``vitae_pretrained_ckpt.pth.tar`` (ViTAE-S, under
``state_dict_ema``, which the official code loads) and
``swin_pretrained_epoch_299.pth`` (Swin-T with P3M's pooling stem), standard
ResNet-34 ImageNet weights (torchvision names; the shapes are the same) and
standard Swin-T ImageNet weights (Microsoft / timm names: the transformer
blocks and final norm load; the 4x4 patch embedding and the patch merging
differ from P3M's convolutional stem and max-pool merging, so those stay at
their initialisation and the report lists them); state dicts bare or under
``state_dict_ema``/``state_dict``/``model``, keys possibly prefixed ``module.``.
Tensors are mapped onto ``model.encoder`` by name; the report says what loaded
and what did not.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from p3m.checkpoint import CheckpointError, read_checkpoint

_WRAPPERS = ("state_dict_ema", "state_dict", "model", "module")
_PREFIXES = ("module.", "encoder.", "backbone.", "resnet.")


class BackboneError(ValueError):
    """The file does not fit the encoder; the message names the file and examples of keys."""


@dataclass
class BackboneReport:
    """What :func:`load_backbone` did.

    loaded: encoder keys set from the file.
    missing: encoder keys the file lacks (left at their initialisation).
    missing_learnable: those of them that are learnable parameters.
    unexpected: file keys with no encoder counterpart (ignored).
    mismatched: key -> (file shape, encoder shape), ignored.
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_learnable: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every learnable encoder tensor came from the file (buffers such as the
        ViTAE-S Performer features may stay at their initialisation)."""
        return not self.missing_learnable and not self.mismatched

    def summary(self) -> str:
        """A few lines for the log."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [f"backbone: {len(self.loaded)} of {total} encoder tensors loaded from {self.path}"]
        if self.missing:
            lines.append(f"  not in the file (left at initialisation): {_examples(self.missing)}")
        if self.mismatched:
            key = sorted(self.mismatched)[0]
            file_shape, own_shape = self.mismatched[key]
            lines.append(f"  wrong shape, skipped: {len(self.mismatched)} (e.g. {key}: {file_shape} in the file, "
                         f"{own_shape} expected)")
        if self.unexpected:
            lines.append(f"  in the file but not in the encoder, ignored: {_examples(self.unexpected)}")
        return "\n".join(lines)


def _examples(keys: list[str], count: int = 4) -> str:
    ordered = sorted(keys)
    shown = ", ".join(ordered[:count])
    return f"{len(ordered)} ({shown}{', ...' if len(ordered) > count else ''})"


def encoder_state_from_file(content: Mapping) -> dict[str, torch.Tensor]:
    """The tensors of a backbone checkpoint, unwrapped and without common prefixes."""
    state = content
    for _ in range(3):
        inner = next((state[key] for key in _WRAPPERS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    changed = True
    while changed and tensors:
        changed = False
        for prefix in _PREFIXES:
            if all(key.startswith(prefix) for key in tensors):
                tensors = {key[len(prefix):]: value for key, value in tensors.items()}
                changed = True
    return tensors


def load_backbone(model: nn.Module, path: str | os.PathLike) -> BackboneReport:
    """Copy matching tensors of an ImageNet checkpoint into ``model.encoder``.

    Raises:
        BackboneError: unreadable file, the model has no ``encoder``, or no tensor matches.
    """
    path = Path(path)
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise BackboneError(f"{type(model).__name__} has no 'encoder' module to initialise")
    try:
        state = encoder_state_from_file(read_checkpoint(path))
    except CheckpointError as error:
        raise BackboneError(str(error)) from None
    own = encoder.state_dict()
    report = BackboneReport(path)
    update = {}
    for key, value in own.items():
        if key not in state:
            report.missing.append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            report.mismatched[key] = (tuple(state[key].shape), tuple(value.shape))
        else:
            update[key] = state[key].to(dtype=value.dtype)
            report.loaded.append(key)
    report.unexpected = sorted(set(state) - set(own))
    learnable = {name for name, _ in encoder.named_parameters()}
    report.missing_learnable = [key for key in report.missing if key in learnable]
    if not any(key in learnable for key in update):
        raise BackboneError(
            f"{path}: no tensor matches the encoder of this model (file keys like "
            f"{', '.join(sorted(state)[:3]) or 'none'}; encoder keys like {', '.join(sorted(own)[:3])})")
    encoder.load_state_dict({**own, **update}, strict=True)
    return report
