"""Building blocks of the P3M-Net dual decoder: conv stacks, TFI, sBFI, dBFI.

Attribute names follow the official implementation so that official
checkpoints load without renaming inside the decoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def conv_stack(channels: list[int], plain_last: bool = False) -> nn.Sequential:
    """3x3 Conv-BN-ReLU triples through ``channels`` (e.g. [512, 512, 512, 256]).

    With ``plain_last`` the last convolution has no BN/ReLU (a logits head).
    Module indices (conv at 0, 3, 6...) match the official ``nn.Sequential``.
    """
    layers: list[nn.Module] = []
    pairs = list(zip(channels[:-1], channels[1:]))
    for position, (cin, cout) in enumerate(pairs):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if plain_last and position == len(pairs) - 1:
            break
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor (``nn.Upsample`` defaults, align_corners=False)."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class TFI(nn.Module):
    """Tripartite-Feature Integration: semantic guidance + matting decoder + encoder skip.

    All three inputs have ``planes`` channels and the same size; each is reduced
    to ``planes / 2`` by one shared 1x1 conv, concatenated and fused by a 3x3 conv.
    """

    def __init__(self, planes: int):
        super().__init__()
        self.transform = conv1x1(planes, planes // 2)
        self.conv1 = conv3x3(planes // 2 * 3, planes)
        self.bn1 = nn.BatchNorm2d(planes)

    def forward(self, semantic: torch.Tensor, matting: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.transform(semantic), self.transform(matting), self.transform(skip)], dim=1)
        return F.relu_(self.bn1(self.conv1(x)))


class SBFI(nn.Module):
    """Shallow Bipartite-Feature Integration: matting features + max-pooled stem (residual).

    The official module max-pools the full-resolution stem with a 2x2 window and
    ``stride`` (2, 4 or 8); those windows are every (stride/2)-th window of the
    2x2/2 pooling, so it takes that pooled stem and subsamples it (same values).
    """

    def __init__(self, planes: int, stem_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.transform1 = conv1x1(planes, planes // 2)
        self.transform2 = conv1x1(stem_channels, planes // 2)
        self.conv1 = conv3x3(planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)

    def forward(self, matting: torch.Tensor, pooled_stem: torch.Tensor) -> torch.Tensor:
        step = self.stride // 2
        pooled = pooled_stem[:, :, ::step, ::step]
        x = torch.cat([self.transform1(matting), self.transform2(pooled)], dim=1)
        return F.relu_(self.bn1(self.conv1(x))) + matting


class DBFI(nn.Module):
    """Deep Bipartite-Feature Integration: semantic features + upsampled deepest features.

    Returns the refined features (residual) and, ``with_side``, a 3-class side
    output upsampled by ``32 / stride`` to the input size.
    """

    def __init__(self, planes: int, deep_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.transform1 = conv1x1(planes, planes // 2)
        self.transform2 = conv1x1(deep_channels, planes // 2)
        self.conv1 = conv3x3(planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, 3)

    def forward(self, semantic: torch.Tensor, deepest: torch.Tensor,
                with_side: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        deep = upsample(self.transform2(deepest), self.stride)
        x = torch.cat([self.transform1(semantic), deep], dim=1)
        out = F.relu_(self.bn1(self.conv1(x))) + semantic
        side = upsample(self.conv2(out), 32 // self.stride) if with_side else None
        return out, side
