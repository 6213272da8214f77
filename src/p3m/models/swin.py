"""Swin-T encoder of P3M-Net(Swin-T) (IJCV 2023) and its registry entry.

Four stages of Swin Transformer blocks (2, 2, 6, 2 blocks; 96, 192, 384, 768
channels; 3, 6, 12, 24 heads; window 7, odd blocks shifted by 3). As in the
other variants every downsampling is an indexed 2x2 max-pool: two in the
convolutional stem, one in each patch merging; the matting decoder unpools
with them.

Official checkpoints also hold two kinds of constants: each attention's
``relative_position_index`` and each block's ``attn_mask``, the masks of the
512x512 training input. p3m computes masks for the size it is given (see
:mod:`p3m.models.swin_layers`), so it drops these keys on loading and writes
them on saving, for the official code to load p3m's files strictly.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from p3m.models.decoder import DecoderSpec
from p3m.models.features import EncoderFeatures
from p3m.models.p3mnet import P3MNet
from p3m.models.registry import ModelSpec, PretrainedWeights, StateDict, register_model
from p3m.models.swin_layers import WINDOW, SwinBlock, SwinStem, attention_mask, relative_position_index
from p3m.models.vitae_layers import PatchMerging, tokens_to_map

EMBED_DIM = 96
DEPTHS = (2, 2, 6, 2)
HEADS = (3, 6, 12, 24)
# Stochastic depth of the official encoder (swin_stem_pooling5_encoder): rising linearly
# from 0 over the 12 blocks to this rate.
DROP_PATH_RATE = 0.2
# Input side the official model is built for (p3mnet_swin_t(img_size=512)); its
# checkpoints store the attention masks of this size.
OFFICIAL_IMAGE_SIZE = 512
# The official sample inference runs an image with a side under this as one pass,
# enlarged so that both sides reach it (core/infer.py, MIN_SIZE_H / MIN_SIZE_W).
SMALL_IMAGE_SIDE = 512


class SwinStage(nn.Module):
    """``depth`` blocks, alternately unshifted and shifted, then (except in the last
    stage) a patch merging ``downsample``."""

    def __init__(self, dim: int, depth: int, heads: int, drop_paths: list[float], last: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, shift=0 if index % 2 == 0 else WINDOW // 2, drop_path=drop_paths[index])
            for index in range(depth)
        )
        self.downsample = None if last else PatchMerging(dim, 2 * dim)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        masks = {shift: attention_mask(*size, WINDOW, shift, tokens.device, tokens.dtype) for shift in (0, WINDOW // 2)}
        for block in self.blocks:
            tokens = block(tokens, size, masks[block.shift])
        return tokens


class SwinTMaxPoolEncoder(nn.Module):
    """Swin-T with a convolutional stem and indexed max-pool downsampling.

    Returns, for a (N, 3, H, W) input: stem (N, 48, H/2, W/2), the 2x2-pooled
    full-resolution features; skips at 1/2, 1/4, 1/8, 1/16 with 96, 96, 192, 384
    channels (the stem's second conv, then the layer-normalised tokens of stages
    1-3 just before they are pooled); deepest (N, 768, H/32, W/32), the tokens of
    stage 4 after the final LayerNorm. Works for any H, W that are multiples of 32.
    """

    def __init__(self, drop_path_rate: float = DROP_PATH_RATE):
        super().__init__()
        self.patch_embed = SwinStem(EMBED_DIM)
        rates = torch.linspace(0, drop_path_rate, sum(DEPTHS)).tolist()
        starts = [sum(DEPTHS[:index]) for index in range(len(DEPTHS))]
        self.layers = nn.ModuleList(
            SwinStage(EMBED_DIM * 2 ** index, depth, heads, rates[start:start + depth], last=index == len(DEPTHS) - 1)
            for index, (depth, heads, start) in enumerate(zip(DEPTHS, HEADS, starts))
        )
        self.norm = nn.LayerNorm(EMBED_DIM * 2 ** (len(DEPTHS) - 1))

    def forward(self, image: torch.Tensor) -> EncoderFeatures:
        height, width = image.shape[-2:]
        tokens, (idx0, idx1), stem, half = self.patch_embed(image.contiguous(memory_format=torch.channels_last))
        skips, indices = [half], [idx0, idx1]
        size = (height // 4, width // 4)
        for stage in self.layers:
            tokens = stage(tokens, size)
            if stage.downsample is not None:
                tokens, idx, before_pool = stage.downsample(tokens, size)
                skips.append(before_pool)
                indices.append(idx)
                size = (size[0] // 2, size[1] // 2)
        deepest = tokens_to_map(self.norm(tokens), size)
        return EncoderFeatures(stem, tuple(skips), deepest, tuple(indices))


SWIN_T_DECODER = DecoderSpec(
    semantic=((768, 384, 384, 384), (384, 192, 192, 192), (192, 96, 96, 96), (96, 96, 96, 96), (96, 48, 48, 48)),
    matting=((768, 384, 384, 384), (384, 192, 192, 192), (192, 96, 96, 96), (96, 96, 96, 96), (96, 48, 48)),
    stem_channels=48,
    semantic_head=True,
    deep_channels=768,
)

_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
_CONSTANT = re.compile(r"encoder\.layers\.\d+\.blocks\.\d+\.(attn_mask|attn\.relative_position_index)")


def is_architecture_constant(key: str) -> bool:
    """Whether ``key`` names a Swin constant of official checkpoints (attention mask or
    relative-position index), fixed by the architecture rather than learned."""
    return _CONSTANT.fullmatch(key) is not None


def official_constants(state: StateDict) -> StateDict:
    """The constants an official checkpoint holds for each block of ``state``: the
    relative-position index and the attention mask of the 512x512 training input."""
    blocks = sorted({(int(match[1]), int(match[2])) for key in state if (match := _BLOCK.match(key))})
    index = relative_position_index(WINDOW)
    constants = {}
    for stage, block in blocks:
        side = OFFICIAL_IMAGE_SIZE // 4 // 2 ** stage
        shift = 0 if block % 2 == 0 else WINDOW // 2
        prefix = f"encoder.layers.{stage}.blocks.{block}."
        constants[prefix + "attn_mask"] = attention_mask(side, side, WINDOW, shift)
        constants[prefix + "attn.relative_position_index"] = index.clone()
    return constants


def swin_to_official(state: StateDict) -> StateDict:
    """p3m keys are the official ones; the official constants are added."""
    return {**state, **official_constants(state)}


def swin_from_official(official: StateDict) -> StateDict:
    """The official state without its constants (p3m computes them)."""
    return {key: value for key, value in official.items() if not is_architecture_constant(key)}


def build_swin_t() -> P3MNet:
    return P3MNet(SwinTMaxPoolEncoder(), SWIN_T_DECODER)


register_model(
    ModelSpec(
        name="swin-t",
        build=build_swin_t,
        to_official=swin_to_official,
        from_official=swin_from_official,
        signature_key="encoder.patch_embed.proj1.weight",
        # No trained P3M-Net(Swin-T) is published. Its ImageNet encoder is in the folder of
        # github.com/ViTAE-Transformer/P3M-Net (README, 2023-11-05: "ViTAE-S and SWIN-T backbone
        # models pretrained on ImageNet"); the official training config reads it as
        # models/pretrained/swin_pretrained_epoch_299.pth, a bare encoder state dict.
        imagenet_weights=PretrainedWeights(
            file_name="swin_pretrained_epoch_299.pth",
            google_drive_id="1sBRVgvFNtkZql1_ti_CxCgZs2O8U4RmW",
            in_folder=True,
        ),
        description="P3M-Net, Swin-T max-pool encoder (IJCV 2023); no trained weights are published",
        small_image_side=SMALL_IMAGE_SIDE,
        exportable=False,
    )
)
