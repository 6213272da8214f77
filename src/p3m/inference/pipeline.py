"""The official P3M inference strategies, HYBRID and RESIZE, on one RGB image.

Deliberate reproductions of the official code (comparability with published
numbers): each pass floors both sides to a multiple of 32 and caps each side at
``max_size`` independently (the cap ignores the aspect ratio); images and maps
are resized with ``skimage.transform.resize`` defaults (bilinear, Gaussian
anti-aliasing when shrinking, reflect mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
import torch
from skimage.transform import resize

from p3m.models.features import P3MOutput

MIN_PASS_SIDE = 32


class Method(str, Enum):
    HYBRID = "hybrid"
    RESIZE = "resize"

    @classmethod
    def parse(cls, value: "str | Method") -> "Method":
        try:
            return cls(str(value.value if isinstance(value, Method) else value).lower())
        except ValueError:
            raise ValueError(f"unknown method {value!r}; use 'hybrid' or 'resize'") from None


@dataclass(frozen=True)
class PassOutput:
    """One network pass: numpy maps at the pass resolution, None where not requested."""

    trimap: np.ndarray | None  # (h, w) uint8 in {0, 128, 255}: argmax of the global logits
    local_alpha: np.ndarray | None  # (h, w) float32 in [0, 1]
    fused_alpha: np.ndarray | None  # (h, w) float32 in [0, 1]


def pass_size(height: int, width: int, ratio: float, max_size: int) -> tuple[int, int]:
    """Network input size of a pass at ``ratio``: each side floored to 32, then capped
    (a cap that is not a multiple of 32 is floored too; the official 1600 is one)."""
    cap = max_size - max_size % 32
    return tuple(min(cap, side - side % 32) for side in (int(height * ratio), int(width * ratio)))


def smallest_supported_side(ratio: float) -> int:
    """The shortest image side for which a pass at ``ratio`` still gets 32 px."""
    return int(np.ceil(MIN_PASS_SIDE / ratio))


def normalise(image: np.ndarray, mean, std, device: torch.device) -> torch.Tensor:
    """(h, w, 3) float image in [0, 255] -> (1, 3, h, w) normalised float32 tensor.

    As the official code: cast to float32, divide by 255, then normalise.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    tensor = tensor.permute(2, 0, 1).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    return tensor.sub_(mean_t).div_(std_t).unsqueeze(0)


def trimap_from_logits(global_logits: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) logits -> (h, w) uint8 trimap: background 0, transition 128, foreground 255."""
    classes = global_logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.array([0, 128, 255], dtype=np.uint8)[classes]


def run_pass(model, image: np.ndarray, size: tuple[int, int], mean, std, device: torch.device,
             need_global: bool = True, need_local: bool = True) -> PassOutput:
    """Resize ``image`` ((H, W, 3) uint8) to ``size`` and run the network once,
    computing only the branches needed (the others' outputs are unused by the strategy)."""
    scaled = resize(image, size) * 255.0
    with torch.inference_mode():
        output: P3MOutput = model(normalise(scaled, mean, std, device), need_global=need_global,
                                  need_local=need_local)
    return PassOutput(
        trimap=None if output.global_logits is None else trimap_from_logits(output.global_logits),
        local_alpha=None if output.local_alpha is None else output.local_alpha[0, 0].float().cpu().numpy(),
        fused_alpha=None if output.fused_alpha is None else output.fused_alpha[0, 0].float().cpu().numpy(),
    )


def hybrid(model, image: np.ndarray, max_size: int, mean, std, device) -> tuple[np.ndarray, np.ndarray]:
    """HYBRID: global pass at 1/2 scale gives the trimap, local pass at full scale the detail.

    Returns:
        alpha: (H, W) float32 in [0, 1]; trimap: (H, W) uint8 of the global pass.
    """
    height, width = image.shape[:2]
    global_pass = run_pass(model, image, pass_size(height, width, 0.5, max_size), mean, std, device,
                           need_local=False)
    trimap_full = resize(global_pass.trimap, (height, width)) * 255.0
    local_pass = run_pass(model, image, pass_size(height, width, 1.0, max_size), mean, std, device,
                          need_global=False)
    local_full = resize(local_pass.local_alpha, (height, width))
    certain = (trimap_full == 0) | (trimap_full == 255)
    alpha = np.where(certain, trimap_full / 255.0, local_full).astype(np.float32)
    return alpha, _nearest(global_pass.trimap, height, width)


def resize_method(model, image: np.ndarray, max_size: int, mean, std, device) -> tuple[np.ndarray, np.ndarray]:
    """RESIZE: one pass at 1/2 scale; its fused alpha is resized to full size."""
    height, width = image.shape[:2]
    single = run_pass(model, image, pass_size(height, width, 0.5, max_size), mean, std, device)
    alpha = resize(single.fused_alpha, (height, width)).astype(np.float32)
    return alpha, _nearest(single.trimap, height, width)


def _nearest(trimap: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(trimap, (width, height), interpolation=cv2.INTER_NEAREST)


STRATEGIES = {Method.HYBRID: hybrid, Method.RESIZE: resize_method}
