"""Building blocks of the ViTAE-S encoder of P3M-Net (IJCV 2023).

Attribute names follow the official implementation so that official
checkpoints load without renaming. Tokens are (N, L, C) with L = h * w in
row-major order; ``size`` arguments give (h, w).

Dropout and stochastic depth are zero in the published model, so they are
left out (identity at inference).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# LayerNorm epsilon of the transformer cells (the patch embedding and merging
# layers use PyTorch's default 1e-5, as the official code does).
CELL_NORM_EPS = 1e-6


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h*w, C) tokens -> (N, C, h, w) feature map."""
    batch, length, channels = tokens.shape
    height, width = size
    if length != height * width:
        raise ValueError(f"{length} tokens do not form a {height}x{width} map")
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def map_to_tokens(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature map -> (N, h*w, C) tokens."""
    batch, channels, height, width = features.shape
    return features.permute(0, 2, 3, 1).reshape(batch, height * width, channels)


def orthogonal_random_features(heads: int, features: int, head_dim: int, seed: int) -> torch.Tensor:
    """Random-feature matrices of a Performer: per head, ``features`` orthonormal rows
    of length ``head_dim`` scaled by sqrt(features).

    The Gaussian draw comes from numpy's legacy ``RandomState(seed)``, whose
    stream numpy keeps fixed across versions, so the result depends on ``seed`` only.

    Returns:
        (heads, features, head_dim) float32.
    """
    if features > head_dim:
        raise ValueError(f"cannot draw {features} orthogonal rows of length {head_dim}")
    gaussian = np.random.RandomState(seed).standard_normal((heads, head_dim, features))
    q, r = torch.linalg.qr(torch.from_numpy(gaussian))  # q: (heads, head_dim, features), orthonormal columns
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return (q.transpose(-2, -1) * math.sqrt(features)).to(torch.float32)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head softmax self-attention, scale head_dim ** -0.5."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class PerformerAttention(nn.Module):
    """Linear-complexity attention with positive orthogonal random features (Performer).

    ``w`` (heads, m, head_dim), m = head_dim * kernel_ratio, is a persistent
    buffer drawn from ``seed`` at construction: the official code draws it
    afresh on every construction and keeps it out of the checkpoint, which
    makes its outputs vary from run to run. A checkpoint that carries ``w``
    replaces it. ``norm1`` is unused in the forward pass, as in the official
    model, and kept so that official checkpoints load strictly.
    """

    epsilon = 1e-8

    def __init__(self, dim: int, num_heads: int = 1, kernel_ratio: float = 0.5, seed: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kqv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=CELL_NORM_EPS)
        self.m = int(self.head_dim * kernel_ratio)
        self.register_buffer("w", orthogonal_random_features(num_heads, self.m, self.head_dim, seed))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # Positive random features of the softmax kernel: exp(w x - |x|^2 / 2) / sqrt(m).
        # (N, heads, L, head_dim) -> (N, heads, L, m)
        projected = torch.matmul(x, self.w.transpose(-2, -1).unsqueeze(0))
        half_norm = x.square().sum(dim=-1, keepdim=True) / 2
        return torch.exp(projected.sub_(half_norm)) / math.sqrt(self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        kqv = self.kqv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, q, v = kqv[0], kqv[1], kqv[2]
        kp, qp = self._features(k), self._features(q)
        normaliser = torch.matmul(qp, kp.sum(dim=2).unsqueeze(-1))  # (N, heads, L, 1)
        context = torch.matmul(kp.transpose(-2, -1), v)  # (N, heads, m, head_dim)
        y = torch.matmul(qp, context) / (normaliser + self.epsilon)
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class NormalCell(nn.Module):
    """ViTAE normal cell: attention and a parallel convolution module (PCM), then an MLP.

    ``x + attn(norm1(x)) + PCM(x)``, then ``+ mlp(norm2(.))``; the PCM is three
    grouped 3x3 convolutions on the token map.
    """

    def __init__(self, dim: int, num_heads: int, groups: int, performer: bool = False,
                 mlp_ratio: float = 4.0, seed: int = 0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=CELL_NORM_EPS)
        self.attn = PerformerAttention(dim, num_heads, seed=seed) if performer else Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=CELL_NORM_EPS)
        self.mlp = Mlp(dim, hidden)
        self.PCM = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, groups=groups),
            nn.BatchNorm2d(hidden),
            nn.SiLU(inplace=True),
            nn.Conv2d(hidden, dim, 3, padding=1, groups=groups),
            nn.BatchNorm2d(dim),
            nn.SiLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1, groups=groups),
            nn.SiLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        conv = map_to_tokens(self.PCM(tokens_to_map(x, size)))
        # The residual sums accumulate into the fresh branch outputs (no backward needs
        # those), in the official order: (x + attn) + conv, then x + mlp.
        x = self.attn(self.norm1(x)).add_(x).add_(conv)
        del conv
        return self.mlp(self.norm2(x)).add_(x)


class PatchEmbed(nn.Module):
    """First reduction cell: three 3x3 convs with two indexed 2x2 max-pools (1/4 scale).

    Returns the tokens at 1/4 scale, the two pooling indices, the pooled
    full-resolution features (N, dim/2, H/2, W/2) (the encoder's stem) and the
    features before the second pool (N, dim, H/2, W/2). The full-resolution map
    after proj1 is freed as soon as it is pooled.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, dim // 2, 3, padding=1)
        self.proj2 = nn.Conv2d(dim // 2, dim, 3, padding=1)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor):
        pooled_full, idx_full = F.max_pool2d(F.relu(self.proj1(image), inplace=True), 2, 2, return_indices=True)
        half = F.relu(self.proj2(pooled_full), inplace=True)
        x, idx_half = F.max_pool2d(half, 2, 2, return_indices=True)
        tokens = self.norm(map_to_tokens(self.proj3(x)))
        return tokens, (idx_full, idx_half), (pooled_full, half)


class PatchMerging(nn.Module):
    """Later reduction cells: LayerNorm, indexed 2x2 max-pool, linear projection (no bias).

    Returns the pooled, projected tokens, the pooling indices and the
    normalised map before pooling (N, in_dim, h, w).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]):
        features = tokens_to_map(self.norm(tokens), size)
        pooled, indices = F.max_pool2d(features, 2, 2, return_indices=True)
        return self.linear(map_to_tokens(pooled)), indices, features
