"""p3m: privacy-preserving portrait matting (P3M-Net, ACM MM 2021 / IJCV 2023).

>>> import p3m
>>> matter = p3m.Matter(model="resnet34", method="hybrid")   # doctest: +SKIP
>>> result = matter.predict("portrait.jpg")                   # doctest: +SKIP
>>> result.alpha.shape, result.alpha.dtype                    # doctest: +SKIP
((1080, 1620), dtype('float32'))
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Matter", "MatteResult", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import p3m` (and `p3m --version`) does not import torch.
    if name in ("Matter", "MatteResult"):
        from p3m import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'p3m' has no attribute {name!r}")
