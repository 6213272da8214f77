"""P3M-Net: a shared encoder feeding the dual decoder."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from p3m.models.decoder import DecoderSpec, DualDecoder
from p3m.models.features import EncoderFeatures, P3MOutput

# Training-time edit of the encoder's features before they are decoded (P3M-CP's
# feature-level copy-paste): called with the encoder (to encode other images with the
# same weights) and the features of the batch; returns features of the same shapes.
FeaturePaste = Callable[[nn.Module, EncoderFeatures], EncoderFeatures]


class P3MNet(nn.Module):
    """P3M-Net for any encoder that returns :class:`~p3m.models.features.EncoderFeatures`.

    ``forward`` takes a (N, 3, H, W) ImageNet-normalised image, H and W multiples
    of 32, and returns :class:`~p3m.models.features.P3MOutput`.
    """

    def __init__(self, encoder: nn.Module, decoder_spec: DecoderSpec):
        super().__init__()
        self.encoder = encoder
        self.decoder = DualDecoder(decoder_spec)
        # Channels-last weights and feature maps: on CPU the convolutions and pools run
        # about 1.3x faster, with results within 1e-4 of the official ones (parity tests).
        self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, need_global: bool = True, need_local: bool = True,
                feature_paste: Optional[FeaturePaste] = None, local_region: Optional[torch.Tensor] = None) -> P3MOutput:
        """``need_global`` / ``need_local``: compute only these branches; ``local_region``: the pixels
        whose local alpha is needed (see ``DualDecoder.forward``).
        ``feature_paste``: a :data:`FeaturePaste` applied to the encoder's features (training only;
        None, the default, is the plain network)."""
        height, width = image.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"P3M-Net needs sides that are multiples of 32, got {height}x{width}")
        features = self.encoder(image)
        if feature_paste is not None:
            features = feature_paste(self.encoder, features)
        features = list(features)  # a list the decoder empties as it goes
        return self.decoder(features, need_global=need_global, need_local=need_local, local_region=local_region)
