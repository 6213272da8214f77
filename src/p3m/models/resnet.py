"""ResNet-34 max-pool encoder of P3M-Net (ACM MM 2021) and its registry entry.

Unlike torchvision's ResNet-34, conv1 has stride 1 and every downsampling is
one of five 3x3/2 max-pools whose indices the matting decoder unpools with;
layers 2-4 keep stride 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p3m.models.decoder import DecoderSpec
from p3m.models.features import EncoderFeatures
from p3m.models.layers import conv1x1, conv3x3
from p3m.models.p3mnet import P3MNet
from p3m.models.registry import ModelSpec, PretrainedWeights, StateDict, register_model


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = (
            nn.Sequential(conv1x1(in_channels, channels), nn.BatchNorm2d(channels)) if in_channels != channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu_(self.bn1(self.conv1(x)))
        return F.relu_(self.bn2(self.conv2(out)).add_(identity))


# Pooled rows per band of the stem at inference (a band holds 2x as many full-resolution rows).
STEM_BAND_ROWS = 64


def _pool(x: torch.Tensor, compact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3/2 max-pool and its indices; ``compact``: indices as int32 (half the memory)."""
    pooled, indices = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, return_indices=True)
    return pooled, indices.int() if compact else indices


class ResNet34MaxPoolEncoder(nn.Module):
    """ResNet-34 with stride-1 convolutions and five indexed max-pools.

    Feature maps are channels-last in memory. Returns, for a (N, 3, H, W) input: stem (N, 64, H/2, W/2), the 2x2-pooled
    full-resolution features; skips at 1/2, 1/4,
    1/8, 1/16 with 64, 64, 128, 256 channels; deepest (N, 512, H/32, W/32).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=1, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, depths = (64, 128, 256, 512), (3, 4, 6, 3)
        in_channels = 64
        for number, (channels, depth) in enumerate(zip(widths, depths), start=1):
            blocks = [BasicBlock(in_channels if i == 0 else channels, channels) for i in range(depth)]
            setattr(self, f"layer{number}", nn.Sequential(*blocks))
            in_channels = channels
        # The ImageNet classifier is unused by P3M-Net; it is kept, frozen, only
        # because official checkpoints carry it and official code loads strictly.
        self.fc = nn.Linear(512, 1000).requires_grad_(False)

    def forward(self, image: torch.Tensor) -> EncoderFeatures:
        image = image.contiguous(memory_format=torch.channels_last)
        if self.training:
            e0 = F.relu_(self.bn1(self.conv1(image)))
            e0p, idx0 = _pool(e0)
            stem = F.max_pool2d(e0, kernel_size=2, stride=2)
            del e0
        else:
            e0p, idx0, stem = self._pooled_stem_in_bands(image)
        compact = not self.training
        e1p, idx1 = _pool(e0p, compact)
        e1 = self.layer1(e1p)
        e2p, idx2 = _pool(e1, compact)
        e2 = self.layer2(e2p)
        e3p, idx3 = _pool(e2, compact)
        e3 = self.layer3(e3p)
        e4p, idx4 = _pool(e3, compact)
        e4 = self.layer4(e4p)
        return EncoderFeatures(stem, (e0p, e1, e2, e3), e4, (idx0, idx1, idx2, idx3, idx4))


    def _pooled_stem_in_bands(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """conv1-bn1-ReLU and both of its pools, computed in bands of rows (eval mode).

        Same values and indices as pooling the whole full-resolution map, which is
        never held at once (64 channels at full resolution: 430 MB at 1056x1600).
        Returns e0p and idx0 (the 3x3/2 pool and its indices, kept as int32: half the
        memory of int64 until the last unpooling) and the 2x2/2 stem, each (N, 64, H/2, W/2).
        """
        n, _, height, width = image.shape
        shape = (n, self.conv1.out_channels, height // 2, width // 2)
        # allocated channels-last (an NCHW tensor made channels-last would be copied whole)
        pooled = torch.empty(shape, dtype=image.dtype, device=image.device, memory_format=torch.channels_last)
        stem = torch.empty_like(pooled)
        indices = torch.empty(shape, dtype=torch.int32, device=image.device, memory_format=torch.channels_last)
        padded = F.pad(image, (0, 0, 3, 3))  # conv1's zero rows; columns are padded by the convolution
        for top in range(0, shape[2], STEM_BAND_ROWS):
            bottom = min(top + STEM_BAND_ROWS, shape[2])
            first = max(0, 2 * top - 1)  # full-resolution rows [first, 2 * bottom) feed pooled rows [top, bottom)
            band = F.conv2d(padded[:, :, first:2 * bottom + 6], self.conv1.weight, self.conv1.bias, padding=(0, 3))
            band = F.relu_(self.bn1(band))
            pooled_band, index_band = F.max_pool2d(band, kernel_size=3, stride=2, padding=(int(top == 0), 1),
                                                   return_indices=True)
            pooled[:, :, top:bottom] = pooled_band
            indices[:, :, top:bottom] = index_band.add_(first * width)
            stem[:, :, top:bottom] = F.max_pool2d(band[:, :, 2 * top - first:], kernel_size=2, stride=2)
        return pooled, indices, stem

RESNET34_DECODER = DecoderSpec(
    semantic=((512, 512, 512, 256), (256, 256, 256, 128), (128, 128, 128, 64), (64, 64, 64, 64), (64, 64, 64, 3)),
    matting=((512, 512, 512, 256), (256, 256, 256, 128), (128, 128, 128, 64), (64, 64, 64, 64), (64, 64, 64)),
    stem_channels=64,
)

# The official model registers its encoder twice: as `resnet.*` and, through
# nn.Sequential wrappers, as `encoder0.*` ... `encoder4.*` (same tensors).
_OFFICIAL_ALIASES = (
    ("conv1.", "encoder0.0."),
    ("bn1.", "encoder0.1."),
    ("layer1.", "encoder1.0."),
    ("layer2.", "encoder2."),
    ("layer3.", "encoder3."),
    ("layer4.", "encoder4."),
)


def resnet34_to_official(state: StateDict) -> StateDict:
    official = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            name = key[len("encoder."):]
            official["resnet." + name] = value
        else:
            official[key[len("decoder."):]] = value
    for key, value in state.items():
        if not key.startswith("encoder."):
            continue
        name = key[len("encoder."):]
        for own, alias in _OFFICIAL_ALIASES:
            if name.startswith(own):
                official[alias + name[len(own):]] = value
    return official


def resnet34_from_official(official: StateDict) -> StateDict:
    """Inverse of :func:`resnet34_to_official`. Where an alias and its ``resnet.``
    key disagree, the alias wins, as in the official ``load_state_dict`` order."""
    state = {}
    for key, value in official.items():
        if key.startswith("resnet."):
            state.setdefault("encoder." + key[len("resnet."):], value)
        elif key.split(".")[0] in {"encoder0", "encoder1", "encoder2", "encoder3", "encoder4"}:
            for own, alias in _OFFICIAL_ALIASES:
                if key.startswith(alias):
                    state["encoder." + own + key[len(alias):]] = value
        else:
            state["decoder." + key] = value
    return state


def build_resnet34() -> P3MNet:
    return P3MNet(ResNet34MaxPoolEncoder(), RESNET34_DECODER)


register_model(
    ModelSpec(
        name="resnet34",
        build=build_resnet34,
        to_official=resnet34_to_official,
        from_official=resnet34_from_official,
        signature_key="resnet.conv1.weight",
        weights=PretrainedWeights(
            file_name="p3mnet_pretrained_on_p3m10k.pth",
            google_drive_id="1smX2YQGIpzKbfwDYHAwete00a_YMwoG1",
        ),
        # "Pretrained Backbone on ImageNet" of github.com/JizhiziLi/P3M (README and core/README).
        imagenet_weights=PretrainedWeights(
            file_name="r34mp_pretrained_imagenet.pth.tar",
            google_drive_id="18Pt-klsbkiyonMdGi6dytExQEjzBnHwY",
        ),
        description="P3M-Net, ResNet-34 max-pool encoder (ACM MM 2021), trained on P3M-10k",
    )
)
