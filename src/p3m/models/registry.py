"""One registry of P3M-Net variants: how to build each and what its weights are.

Building a model and loading its weights are separate steps; nothing here
downloads anything. Each variant also declares how its parameter names map to
the official checkpoint's keys, so that official files load strictly and what
p3m saves loads in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDict = dict


@dataclass(frozen=True)
class PretrainedWeights:
    """Where official pretrained weights come from.

    ``google_drive_id`` is the file's id, or, with ``in_folder``, the id of a shared
    Google Drive folder holding a file named ``file_name``.
    """

    file_name: str
    google_drive_id: str
    sha256: str | None = None
    size: int | None = None
    license: str = "MIT (official P3M release)"
    in_folder: bool = False

    @property
    def url(self) -> str:
        if self.in_folder:
            return f"https://drive.google.com/drive/folders/{self.google_drive_id}"
        return f"https://drive.google.com/uc?id={self.google_drive_id}"


@dataclass(frozen=True)
class ModelSpec:
    """A registered P3M-Net variant.

    ``build()`` returns an untrained :class:`~p3m.models.p3mnet.P3MNet`.
    ``to_official`` / ``from_official`` translate between p3m's state-dict keys
    and the official checkpoint's keys. ``signature_key`` is an official key
    found only in this variant's checkpoints (used to name the likely variant
    of a mismatching file). ``optional_key`` accepts official keys a file may
    carry or omit (e.g. ViTAE-S Performer features). ``imagenet_weights`` is the
    ImageNet-pretrained encoder the official training starts from.
    ``small_image_side``: the official inference of this variant runs an image with
    a side under it as one pass enlarged so that both sides reach it (Swin-T).
    ``exportable``: a traced ONNX graph of it runs at any size (not Swin-T, whose
    attention masks are computed in Python for each input size).
    """

    name: str
    build: Callable[[], nn.Module]
    to_official: Callable[[StateDict], StateDict]
    from_official: Callable[[StateDict], StateDict]
    signature_key: str
    weights: PretrainedWeights | None = None
    imagenet_weights: PretrainedWeights | None = None
    description: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    optional_key: Callable[[str], bool] = field(default=lambda key: False)
    small_image_side: int | None = None
    exportable: bool = True


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    _import_variants()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered variant; names are case-insensitive (``ResNet34`` works)."""
    _import_variants()
    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def create_model(name: str) -> nn.Module:
    """Build an untrained P3M-Net of the named variant (weights are loaded separately)."""
    return get_spec(name).build()


def _import_variants() -> None:
    # Importing the variant modules registers them.
    from p3m.models import resnet  # noqa: F401
    from p3m.models import swin  # noqa: F401
    from p3m.models import vitae  # noqa: F401
