"""``Matter``: the one inference entry point used by the Python API and the CLI."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

from p3m.inference.devices import resolve_device  # noqa: F401  (re-exported: p3m.train uses the same rule)
from p3m.inference.engines import create_engine
from p3m.inference.pipeline import Method, matte, smallest_supported_side
from p3m.io import ImageInput, ImageReadError, read_image

if TYPE_CHECKING:
    from p3m.privacy import PrivacyRecord

# The official sample script shrinks images whose shorter side exceeds this (cv2, bilinear)
# before inference and resizes the alpha back; p3m does the same by default.
OFFICIAL_SHORTER_SIDE_LIMIT = 1080


@dataclass(frozen=True)
class MatteResult:
    """The matte of one image.

    image:  (H, W, 3) uint8 RGB, as read (EXIF orientation applied).
    alpha:  (H, W) float32 in [0, 1].
    trimap: (H, W) uint8 in {0, 128, 255}, the global (semantic) prediction.
    privacy: in privacy mode, how many faces were hidden from the network and
        that no face was detected in what it saw; ``None`` otherwise.
    """

    image: np.ndarray
    alpha: np.ndarray
    trimap: np.ndarray
    privacy: Optional[PrivacyRecord] = None


class Matter:
    """Portrait matting with a P3M-Net variant; the network is built and loaded once.

    Args:
        model: registry name, ``resnet34``, ``vitae-s`` or ``swin-t``.
        weights: a checkpoint file; ``None`` uses the cached official weights,
            downloading them on first use.
        method: ``hybrid`` (global at 1/2 scale, local at full scale) or ``resize``
            (one pass at 1/2 scale), any case.
        max_size: per-side cap of a pass, as the official ``MAX_SIZE`` (the Ikomia
            plugin's ``input_size``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        shorter_side_limit: images whose shorter side exceeds it are shrunk first
            (the official sample script's 1080); ``None`` disables it, as the
            official dataset evaluation does.
        privacy: obfuscate faces before the network sees the image and verify
            that none is detected there, else raise ``p3m.privacy.PrivacyError``
            without running the network (see README); the alpha is still
            returned for the original photo.
        precision: ``fp32`` (default, the faithful path), ``bf16`` (CPUs with
            AVX512-BF16/AMX, CUDA) or ``fp16`` (CUDA); other hardware is a ValueError.
        engine: ``torch`` (default) or ``onnxruntime``, which runs a graph written by
            ``p3m export`` (``weights`` is that file, and it names the model) and
            needs no PyTorch. ``matter.engine`` and ``matter.precision`` are these names;
            ``matter.runtime`` is the engine object (:mod:`p3m.inference.engines`).
        small_image_pass: for a variant whose official sample inference treats small
            images apart (Swin-T: a side under 512), matte them in its one enlarged
            pass (``p3m.models.ModelSpec.small_image_side``); ``False`` runs the method
            as for any image, as the official P3M-500 evaluation does.

    Images too small for a 1/2-scale pass of 32 px (shorter side < 64) are
    upscaled to a shorter side of 64 for inference; the alpha is resized back.
    """

    def __init__(self, model: str = "resnet34", weights: str | os.PathLike | None = None,
                 method: str = "hybrid", max_size: int = 1600, device: str = "auto",
                 shorter_side_limit: int | None = OFFICIAL_SHORTER_SIDE_LIMIT, privacy: bool = False,
                 precision: str = "fp32", engine: str = "torch", small_image_pass: bool = True):
        self.method = Method.parse(method)
        if max_size < 32:
            raise ValueError(f"max_size must be at least 32, got {max_size}")
        self.max_size = int(max_size)
        self.shorter_side_limit = shorter_side_limit
        self.privacy = privacy
        self.runtime = create_engine(engine, model=model, weights=weights, device=device, precision=precision)
        self.engine = str(engine).lower()
        self.precision = self.runtime.precision
        self.small_image_side = self.runtime.small_image_side if small_image_pass else None

    @property
    def model_name(self) -> str:
        return self.runtime.model_name

    @property
    def weights_path(self):
        return self.runtime.weights_path

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def network(self):
        """The torch model of the ``torch`` engine (an AttributeError for other engines)."""
        return self.runtime.network

    def __repr__(self) -> str:
        return (f"Matter(model={self.runtime.model_name!r}, method={self.method.value!r}, max_size={self.max_size}, "
                f"device={self.runtime.device!r}, privacy={self.privacy}, precision={self.precision!r}, "
                f"engine={self.engine!r})")

    def with_options(self, method: str | None = None, max_size: int | None = None,
                     privacy: bool | None = None) -> "Matter":
        """A Matter that shares this one's loaded network, with other per-call options."""
        variant = copy.copy(self)
        if method is not None:
            variant.method = Method.parse(method)
        if max_size is not None:
            if max_size < 32:
                raise ValueError(f"max_size must be at least 32, got {max_size}")
            variant.max_size = int(max_size)
        if privacy is not None:
            variant.privacy = bool(privacy)
        return variant

    def predict(self, image: ImageInput) -> MatteResult:
        """Matte one image: a path, a PIL image or an (H, W, 3) uint8 array."""
        rgb = read_image(image)
        height, width = rgb.shape[:2]
        if height == 0 or width == 0:
            raise ImageReadError(f"{_name(image)}: empty image ({width}x{height})")
        seen, record = rgb, None
        if self.privacy:
            from p3m.privacy import hide_faces_for_model

            seen, record = hide_faces_for_model(rgb)
        working = _working_image(seen, self.shorter_side_limit)
        alpha, trimap = matte(self.runtime, working, self.method, self.max_size, self.small_image_side)
        if working.shape[:2] != (height, width):
            alpha = np.clip(cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
            trimap = cv2.resize(trimap, (width, height), interpolation=cv2.INTER_NEAREST)
        return MatteResult(image=rgb, alpha=alpha, trimap=trimap, privacy=record)

    def predict_video(self, source: str | os.PathLike, temporal_smooth: float = 0.0):
        """Matte each frame of a video file, in order: an iterator of
        :class:`p3m.inference.video.VideoMatte` (``frame``: image, pts, time; ``result``: as :meth:`predict`).

        ``temporal_smooth`` in [0, 1) is the strength of the flicker reduction (0: per frame, the default).
        """
        from p3m.inference.video import predict_video

        return predict_video(self, source, temporal_smooth)


def _working_image(image: np.ndarray, shorter_side_limit: int | None) -> np.ndarray:
    """Shrink large images as the official sample script does; enlarge tiny ones to 64 px."""
    height, width = image.shape[:2]
    shorter = min(height, width)
    smallest = smallest_supported_side(0.5)
    if shorter_side_limit is not None and shorter > shorter_side_limit:
        target = shorter_side_limit
    elif shorter < smallest:
        target = smallest
    else:
        return image
    if height >= width:
        size = (target, int(target * height / width))
    else:
        size = (int(target * width / height), target)
    interpolation = cv2.INTER_LINEAR if target < shorter else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interpolation)


def _name(image: ImageInput) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
