"""BatchNorm folding for inference: each eval-mode BatchNorm that directly follows a
convolution is merged into that convolution's weights and bias.

``conv(x) * s + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``
equals a convolution with weights ``w * s`` and bias ``b * s + t``; the BatchNorm
becomes an ``Identity``. Outputs change only by float rounding (parity tests hold).
"""
from __future__ import annotations

import torch
from torch import nn


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold, in place, every BatchNorm2d that follows a Conv2d: inside an ``nn.Sequential``
    (``[Conv2d, BatchNorm2d, ...]``) or as sibling attributes ``convK`` / ``bnK``.

    Only for inference: the model must be in eval mode. Returns ``model``.
    """
    if model.training:
        raise ValueError("fold_batchnorms needs a model in eval mode")
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for index in range(len(module) - 1):
                conv, norm = module[index], module[index + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    _fold(conv, norm)
                    module[index + 1] = nn.Identity()
        for name, norm in list(module.named_children()):
            conv = getattr(module, "conv" + name[2:], None) if name.startswith("bn") else None
            if isinstance(norm, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                _fold(conv, norm)
                setattr(module, name, nn.Identity())
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() - norm.running_mean.double() * scale
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    memory_format = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype).contiguous(memory_format=memory_format),
                               requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
