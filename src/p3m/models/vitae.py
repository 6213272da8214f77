"""ViTAE-S max-pool encoder of P3M-Net (IJCV 2023) and its registry entry.

Four stages of ViTAE normal cells (2, 2, 12, 2 cells; 64, 128, 256, 512
channels; the first stage's attention is a Performer). Every downsampling is
an indexed 2x2 max-pool: two inside the first stage's patch embedding, one
at the start of each later stage; the matting decoder unpools with them.
"""
from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from p3m.models.decoder import DecoderSpec
from p3m.models.features import EncoderFeatures
from p3m.models.p3mnet import P3MNet
from p3m.models.registry import ModelSpec, PretrainedWeights, StateDict, register_model
from p3m.models.vitae_layers import NormalCell, PatchEmbed, PatchMerging, tokens_to_map

# Base seed of the Performer random features; each attention adds the CRC-32 of its path
# (modulo 2**32, numpy's seed range).
PERFORMER_SEED = 20230
TOKEN_DIMS = (64, 128, 256, 512)
DEPTHS = (2, 2, 12, 2)
HEADS = (1, 2, 4, 8)
PCM_GROUPS = (1, 32, 64, 128)


def performer_seed(path: str) -> int:
    """Seed of the random features of the Performer at ``path`` (official key prefix,
    e.g. ``encoder.layers.0.NC.0.attn``)."""
    return (PERFORMER_SEED + zlib.crc32(path.encode())) % 2**32


class ViTAEStage(nn.Module):
    """One stage: a reduction cell ``RC`` then ``depth`` normal cells ``NC``."""

    def __init__(self, index: int, in_dim: int, dim: int, depth: int, heads: int, groups: int):
        super().__init__()
        self.RC = PatchEmbed(in_dim, dim) if index == 0 else PatchMerging(in_dim, dim)
        self.NC = nn.ModuleList(
            NormalCell(dim, heads, groups, performer=index == 0,
                       seed=performer_seed(f"encoder.layers.{index}.NC.{cell}.attn"))
            for cell in range(depth)
        )


class ViTAESMaxPoolEncoder(nn.Module):
    """ViTAE-S with indexed max-pool downsampling.

    Returns, for a (N, 3, H, W) input: stem (N, 32, H/2, W/2), the 2x2-pooled
    full-resolution features; skips at 1/2, 1/4,
    1/8, 1/16 with 64, 64, 128, 256 channels; deepest (N, 512, H/32, W/32).
    The 1/4, 1/8 and 1/16 skips are the layer-normalised tokens of stages 1-3
    just before they are pooled. All maps are channels-last in memory: tokens
    become maps without a copy, and CPU convolutions run faster on them.
    """

    def __init__(self):
        super().__init__()
        in_dims = (3,) + TOKEN_DIMS[:-1]
        self.layers = nn.ModuleList(
            ViTAEStage(i, in_dims[i], TOKEN_DIMS[i], DEPTHS[i], HEADS[i], PCM_GROUPS[i]) for i in range(4)
        )
        # The ImageNet classifier is unused by P3M-Net; it is kept, frozen, only
        # because official checkpoints carry it and official code loads strictly.
        self.head = nn.Linear(TOKEN_DIMS[-1], 1000).requires_grad_(False)

    def forward(self, image: torch.Tensor) -> EncoderFeatures:
        height, width = image.shape[-2:]
        first = self.layers[0]
        tokens, (idx0, idx1), (stem, half) = first.RC(image.contiguous(memory_format=torch.channels_last))
        size = (height // 4, width // 4)
        for cell in first.NC:
            tokens = cell(tokens, size)
        skips, indices = [half], [idx0, idx1]
        for stage in self.layers[1:]:
            tokens, idx, before_pool = stage.RC(tokens, size)
            skips.append(before_pool)
            indices.append(idx)
            size = (size[0] // 2, size[1] // 2)
            for cell in stage.NC:
                tokens = cell(tokens, size)
        deepest = tokens_to_map(tokens, size)
        return EncoderFeatures(stem, tuple(skips), deepest, tuple(indices))


VITAE_S_DECODER = DecoderSpec(
    semantic=((512, 256, 256, 256), (256, 128, 128, 128), (128, 64, 64, 64), (64, 64, 64, 64), (64, 32, 32, 32)),
    matting=((512, 256, 256, 256), (256, 128, 128, 128), (128, 64, 64, 64), (64, 64, 64, 64), (64, 32, 32)),
    stem_channels=32,
    semantic_head=True,
)

_PERFORMER_FEATURES = re.compile(r"encoder\.layers\.0\.NC\.\d+\.attn\.w")


def is_performer_features(key: str) -> bool:
    """Whether ``key`` names Performer random features, which official checkpoints omit."""
    return _PERFORMER_FEATURES.fullmatch(key) is not None


def vitae_to_official(state: StateDict) -> StateDict:
    """p3m keys are the official ones (``encoder.*``, ``decoder.*``)."""
    return dict(state)


def vitae_from_official(official: StateDict) -> StateDict:
    return dict(official)


def build_vitae_s() -> P3MNet:
    return P3MNet(ViTAESMaxPoolEncoder(), VITAE_S_DECODER)


register_model(
    ModelSpec(
        name="vitae-s",
        build=build_vitae_s,
        to_official=vitae_to_official,
        from_official=vitae_from_official,
        signature_key="encoder.layers.0.RC.proj1.weight",
        weights=PretrainedWeights(
            file_name="P3M-Net_ViTAE-S_trained_on_P3M-10k.pth",
            google_drive_id="1QbSjPA_Mxs7rITp_a9OJiPeFRDwxemqK",
        ),
        # The ImageNet ViTAE-S and Swin-T backbones published by github.com/ViTAE-Transformer/P3M-Net
        # (README, 2023-11-05) as one Google Drive folder; the official training reads this file
        # from it (models/pretrained/vitae_pretrained_ckpt.pth.tar, key "state_dict_ema").
        imagenet_weights=PretrainedWeights(
            file_name="vitae_pretrained_ckpt.pth.tar",
            google_drive_id="1sBRVgvFNtkZql1_ti_CxCgZs2O8U4RmW",
            in_folder=True,
        ),
        description="P3M-Net, ViTAE-S max-pool encoder (IJCV 2023), trained on P3M-10k",
        optional_key=is_performer_features,
    )
)
