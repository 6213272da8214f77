"""P3M-Net variants, their building blocks and their registry."""
from p3m.models.decoder import DecoderSpec, DualDecoder, fuse
from p3m.models.features import EncoderFeatures, P3MOutput
from p3m.models.p3mnet import P3MNet
from p3m.models.registry import ModelSpec, PretrainedWeights, create_model, get_spec, list_models, register_model

__all__ = [
    "DecoderSpec", "DualDecoder", "EncoderFeatures", "ModelSpec", "P3MNet", "P3MOutput", "PretrainedWeights",
    "create_model", "fuse", "get_spec", "list_models", "register_model",
]
