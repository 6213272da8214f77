"""The feature contract between a P3M-Net encoder and the dual decoder.

Any encoder that returns :class:`EncoderFeatures` plugs into
:class:`p3m.models.decoder.DualDecoder`. For an input of size (H, W), both a
multiple of 32:

==========  ========================  =====================================
field       shape                     role
==========  ========================  =====================================
``stem``    (N, C_stem, H/2, W/2)     full-resolution features max-pooled 2x2/2, for sBFI
``skips``   4 x (N, C_i, H/2^(i+1))   levels 1/2, 1/4, 1/8, 1/16, fed to TFI
``deepest`` (N, 512, H/32, W/32)      input to both decoders and to dBFI
``indices`` 5 x max-pool indices      indices[i] pooled level i to level i+1
==========  ========================  =====================================

The stem is handed over pooled so that the full-resolution map is freed with
the encoder; every sBFI pooling (2x2, stride 2, 4 or 8) is a subsample of it.
``indices[i]`` has the shape of the level-(i+1) feature map and indexes into
level i, as returned by ``max_pool2d(..., return_indices=True)`` (int64, or int32
at inference, where the ResNet-34 encoder halves their memory); the matting decoder
unpools with them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class EncoderFeatures(NamedTuple):
    stem: torch.Tensor
    skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    deepest: torch.Tensor
    indices: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class P3MOutput(NamedTuple):
    """Raw outputs of P3M-Net for a (N, 3, H, W) normalised input.

    global_logits: (N, 3, H, W) semantic logits, channels background / transition / foreground.
    local_alpha:   (N, 1, H, W) matting-decoder alpha (sigmoid), in [0, 1].
    fused_alpha:   (N, 1, H, W) 0 where the global argmax is background, 1 where
                   foreground, ``local_alpha`` in the transition region.
    side_logits:   three (N, 3, H, W) dBFI side logits (side2, side1, side0),
                   upsampled to the input size; used by the training losses.

    When the network is asked for one branch only, the others are None.
    """

    global_logits: Optional[torch.Tensor]
    local_alpha: Optional[torch.Tensor]
    fused_alpha: Optional[torch.Tensor]
    side_logits: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
