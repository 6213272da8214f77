"""The P3M-Net training losses, as defined by the official training code.

Ground truth conventions (what :class:`p3m.train.dataset.P3MTrainDataset` yields,
converted to float by the trainer):

* ``alpha``:   (N, 1, H, W) float in [0, 1].
* ``trimap``:  (N, 1, H, W) float in [0, 255]. 0 is background, 255 foreground,
  128 transition; the training crop is resized bilinearly, so a few pixels on
  region borders hold blended values, which count as transition for the
  cross-entropy but not for the transition-region alpha losses (``== 128``).
* ``image``, ``fg``, ``bg``: (N, 3, H, W) float RGB in [0, 1] (not normalised).

The total is the official weighting::

    loss = (3 * CE(global) + CE(side2) + CE(side1) + CE(side0)) / 6
           + 2 * (local_alpha + local_laplacian)
           + 3 * (fusion_alpha + fusion_laplacian)
           + composition
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from p3m.models.features import P3MOutput

EPSILON = 1e-12
TRANSITION = 128
BACKGROUND_CLASS, TRANSITION_CLASS, FOREGROUND_CLASS = 0, 1, 2

GLOBAL_WEIGHT = 1.0 / 6.0
GLOBAL_MAIN_WEIGHT = 3.0
LOCAL_WEIGHT = 2.0
FUSION_WEIGHT = 3.0
COMPOSITION_WEIGHT = 1.0

PYRAMID_LEVELS = 5


def trimap_classes(trimap: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) trimap in [0, 255] -> (N, H, W) int64 classes: 0 -> 0, 255 -> 2, anything else -> 1.

    The official code maps the blended value 2 to foreground too (a slip of its
    in-place relabelling); here every value strictly between 0 and 255 is transition.
    """
    if trimap.dim() != 4 or trimap.shape[1] != 1:
        raise ValueError(f"expected a (N, 1, H, W) trimap, got shape {tuple(trimap.shape)}")
    trimap = trimap[:, 0]
    classes = torch.full_like(trimap, TRANSITION_CLASS, dtype=torch.long)
    classes[trimap == 0] = BACKGROUND_CLASS
    classes[trimap == 255] = FOREGROUND_CLASS
    return classes


def transition_weight(trimap: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float mask, 1 where the trimap is exactly 128."""
    return (trimap == TRANSITION).to(torch.float32)


def cross_entropy_loss(logits: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, 3, H, W) logits against the 3-class trimap."""
    return F.cross_entropy(logits.float(), trimap_classes(trimap))


def alpha_loss(pred: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Charbonnier-style L1, ``sqrt(d^2 + 1e-12)`` with ``d = pred - alpha``.

    Without ``weight``: the mean over every element. With ``weight`` ((N, 1, H, W),
    the transition mask): ``d`` is multiplied by it and the sum is divided by
    ``weight.sum() + 1``, as the official local loss does (masked-out pixels still
    add ``1e-6`` each).
    """
    diff = pred.float() - alpha.float()
    if weight is None:
        return torch.sqrt(diff * diff + EPSILON).mean()
    diff = diff * weight
    return torch.sqrt(diff * diff + EPSILON).sum() / (weight.sum() + 1.0)


def gaussian_kernel(size: int = 5, sigma: float = 1.0, device=None) -> torch.Tensor:
    """The (1, 1, size, size) smoothing kernel of the official Laplacian loss.

    Kept as the official code builds it, for comparable training: entry (i, j) is
    ``g(i) + g(j)`` (a sum, not a product) with ``g(x) = exp(-(x - c)^2 / (2 sigma^2))^2``,
    normalised to sum 1.
    """
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(x * x / (-2.0 * sigma * sigma)) ** 2
    kernel = g[None, :] + g[:, None]
    kernel = kernel / kernel.sum()
    return kernel.to(dtype=torch.float32, device=device)[None, None]


def laplacian_pyramid(image: torch.Tensor, kernel: torch.Tensor, levels: int = PYRAMID_LEVELS) -> list[torch.Tensor]:
    """Band-pass levels of a (N, 1, H, W) map (replicate padding, 2x average pooling),
    followed by the low-pass residual: ``levels + 1`` tensors."""
    pad = kernel.shape[-1] // 2
    pyramid = []
    current = image
    for _ in range(levels):
        blurred = F.conv2d(F.pad(current, (pad, pad, pad, pad), mode="replicate"), kernel)
        pyramid.append(current - blurred)
        current = F.avg_pool2d(blurred, 2)
    pyramid.append(current)
    return pyramid


def laplacian_loss(pred: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the 6 pyramid levels of the mean absolute difference.

    With ``weight`` (the transition mask) both maps are multiplied by it first.
    """
    pred, alpha = pred.float(), alpha.float()
    if weight is not None:
        pred, alpha = pred * weight, alpha * weight
    kernel = gaussian_kernel(device=pred.device)
    return sum(F.l1_loss(p, a) for p, a in zip(laplacian_pyramid(pred, kernel), laplacian_pyramid(alpha, kernel)))


def composition_loss(pred: torch.Tensor, image: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """``sqrt((pred * fg + (1 - pred) * bg - image)^2 + 1e-12)``, summed over the 3
    channels and averaged over the N x H x W pixels (the official normalisation).

    All colours are in [0, 1]. The official code composites 0-255 colours and
    compares them with the ImageNet-normalised input; p3m uses one scale for all three.
    """
    pred = pred.float()
    composite = pred * fg.float() + (1.0 - pred) * bg.float()
    diff = composite - image.float()
    return torch.sqrt(diff * diff + EPSILON).sum() / (pred.numel())


def p3m_losses(
    output: P3MOutput,
    alpha: torch.Tensor,
    trimap: torch.Tensor,
    image: torch.Tensor | None = None,
    fg: torch.Tensor | None = None,
    bg: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every P3M-Net loss term and the weighted total.

    Args:
        output: the network's outputs for the batch (any dtype; losses run in float32).
        alpha, trimap, image, fg, bg: ground truth as in the module docstring. The
            composition term is computed only when ``image``, ``fg`` and ``bg`` are all given.

    Returns:
        ``global_ce``, ``side2_ce``, ``side1_ce``, ``side0_ce``, ``global`` (their
        3:1:1:1 sum), ``local_alpha``, ``local_laplacian``, ``local``,
        ``fusion_alpha``, ``fusion_laplacian``, ``fusion``, optionally
        ``composition``, and ``loss`` (the weighted total, the one to backpropagate).
    """
    terms: dict[str, torch.Tensor] = {}
    terms["global_ce"] = cross_entropy_loss(output.global_logits, trimap)
    for name, logits in zip(("side2_ce", "side1_ce", "side0_ce"), output.side_logits):
        terms[name] = cross_entropy_loss(logits, trimap)
    terms["global"] = GLOBAL_MAIN_WEIGHT * terms["global_ce"] + terms["side2_ce"] + terms["side1_ce"] + terms["side0_ce"]

    weight = transition_weight(trimap)
    terms["local_alpha"] = alpha_loss(output.local_alpha, alpha, weight)
    terms["local_laplacian"] = laplacian_loss(output.local_alpha, alpha, weight)
    terms["local"] = terms["local_alpha"] + terms["local_laplacian"]

    terms["fusion_alpha"] = alpha_loss(output.fused_alpha, alpha)
    terms["fusion_laplacian"] = laplacian_loss(output.fused_alpha, alpha)
    terms["fusion"] = terms["fusion_alpha"] + terms["fusion_laplacian"]

    total = GLOBAL_WEIGHT * terms["global"] + LOCAL_WEIGHT * terms["local"] + FUSION_WEIGHT * terms["fusion"]
    if image is not None and fg is not None and bg is not None:
        terms["composition"] = composition_loss(output.fused_alpha, image, fg, bg)
        total = total + COMPOSITION_WEIGHT * terms["composition"]
    terms["loss"] = total
    return terms
