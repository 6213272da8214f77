"""Building blocks of the Swin-T encoder of P3M-Net(Swin-T) (IJCV 2023).

Attribute names follow the official implementation so that official
checkpoints load without renaming. Tokens are (N, L, C) with L = h * w in
row-major order; ``size`` arguments give (h, w).

Windowed attention works on any map size: a map whose sides are not
multiples of the window is padded with zeros (after ``norm1``) up to the next
multiple, and the attention mask keeps real tokens from attending to the
padding. Where the official code runs (both sides over 7, or sides that are
multiples of 7) this is exactly its computation; it also covers the maps of
7 px or less on which the official code fails.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p3m.models.vitae_layers import Mlp, map_to_tokens

WINDOW = 7
# Attention logit of token pairs that must not attend to each other (the official value).
MASKED = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) int64: for each query/key pair of a window, the row of the
    relative-position bias table ((2*window - 1)² rows) that holds their bias."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, window²)
    relative = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, window², window²), in [0, 2w-2]
    return relative[0] * (2 * window - 1) + relative[1]


def _region_labels(length: int, window: int, shift: int) -> torch.Tensor:
    """Region of each position along one padded, cyclically shifted axis:
    0 real, 1 padding, 2 real but wrapped around by the shift."""
    padded = length + (-length) % window
    position = torch.arange(padded)
    source = (position + shift) % padded  # position before the shift
    labels = torch.zeros(padded, dtype=torch.int64)
    labels[position >= padded - shift] = 2
    labels[source >= length] = 1
    return labels


def attention_mask(height: int, width: int, window: int, shift: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The additive attention mask of a (height, width) map, or None where no pair needs masking.

    The map is padded to multiples of ``window`` and rolled by ``-shift``; tokens attend
    only within their region (real, padding, or wrapped round by the roll).

    Returns:
        (num_windows, window², window²) of 0 and -100 in ``dtype``, windows in row-major order.
    """
    if shift == 0 and height % window == 0 and width % window == 0:
        return None
    rows = _region_labels(height, window, shift).to(device)
    cols = _region_labels(width, window, shift).to(device)
    regions = rows[:, None] * 3 + cols[None, :]  # (H', W')
    per_window = partition_windows(regions[None, :, :, None], window).flatten(1)  # (nW, window²)
    different = per_window[:, None, :] != per_window[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill_(different, MASKED)


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, H, W, C), H and W multiples of ``window`` -> (N * H/window * W/window, window², C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def merge_windows(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: -> (N, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero each sample's residual branch with probability
    ``rate`` and scale the survivors by 1 / (1 - rate); the identity in evaluation."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        survivors = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * survivors / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias
    (``relative_position_bias_table``: (2*window - 1)² x heads)."""

    def __init__(self, dim: int, num_heads: int, window: int = WINDOW):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Fixed by the window size; official checkpoints carry it, p3m rebuilds it (see swin.py).
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: (B*nW, window², C); mask: (nW, window², window²) or None -> (B*nW, window², C)."""
        count, length, channels = windows.shape
        qkv = self.qkv(windows).reshape(count, length, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, window², head_dim)
        logits = (query * self.scale) @ key.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(length, length, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows_per_image = mask.shape[0]
            logits = logits.view(-1, windows_per_image, self.num_heads, length, length) + mask[None, :, None]
            logits = logits.view(count, self.num_heads, length, length)
        out = logits.softmax(dim=-1) @ value
        return self.proj(out.transpose(1, 2).reshape(count, length, channels))


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted-)window attention then an MLP, both residual.

    ``shift`` is 0 (W-MSA) or window // 2 (SW-MSA); ``drop_path`` the stochastic depth rate.
    """

    def __init__(self, dim: int, num_heads: int, shift: int, drop_path: float = 0.0, window: int = WINDOW):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        """tokens: (N, h*w, C); ``mask`` from :func:`attention_mask` for this size and shift."""
        height, width = size
        batch, _, channels = tokens.shape
        x = self.norm1(tokens).view(batch, height, width, channels)
        padded_height = height + (-height) % self.window
        padded_width = width + (-width) % self.window
        if (padded_height, padded_width) != (height, width):
            x = F.pad(x, (0, 0, 0, padded_width - width, 0, padded_height - height))
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(partition_windows(x, self.window), mask)
        x = merge_windows(windows, self.window, padded_height, padded_width)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width].reshape(batch, height * width, channels)
        tokens = tokens + self.drop_path(x)
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class SwinStem(nn.Module):
    """Patch embedding with pooling: three 3x3 convs (each + ReLU) with two indexed 2x2
    max-pools, then LayerNorm on the 1/4-scale tokens.

    Returns the tokens (N, H/4 * W/4, dim), the two pooling indices, the pooled
    full-resolution features (N, dim/2, H/2, W/2) and the features before the second
    pool (N, dim, H/2, W/2).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj1 = nn.Conv2d(3, dim // 2, 3, padding=1)
        self.proj2 = nn.Conv2d(dim // 2, dim, 3, padding=1)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor):
        pooled_full, idx_full = F.max_pool2d(F.relu(self.proj1(image)), 2, 2, return_indices=True)
        half = F.relu(self.proj2(pooled_full))
        x, idx_half = F.max_pool2d(half, 2, 2, return_indices=True)
        tokens = self.norm(map_to_tokens(F.relu(self.proj3(x))))
        return tokens, (idx_full, idx_half), pooled_full, half
