"""The P3M-Net dual decoder (semantic + matting) and the global/local fusion.

One implementation serves every encoder: the encoder hands over
:class:`~p3m.models.features.EncoderFeatures`, and a :class:`DecoderSpec`
gives the channel widths, which differ between the ResNet-34 and ViTAE-S
variants of the official model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from p3m.models.features import EncoderFeatures, P3MOutput
from p3m.models.layers import DBFI, SBFI, TFI, conv_stack, upsample


# Rows per band of the matting decoder's last stages at inference: level-0 (half-resolution)
# rows, and full-resolution rows of the last unpooling, within a level-0 band.
LEVEL0_BAND_ROWS = 128
FINAL_BAND_ROWS = 128
# Level-0 rows and columns of a tile when only a region of the local alpha is needed. A region
# in more than REGION_WHOLE_SHARE of the tiles is decoded in whole bands, and a band with region
# pixels in more than that share of its tiles is computed whole: cheaper than the extra rows and
# columns around each run of tiles.
REGION_TILE = 64
REGION_WHOLE_SHARE = 0.75
# Level-0 maps of fewer pixels are decoded whole at inference: banding would save little
# memory there, and its many smaller operations cost more time than they save.
BANDED_MIN_PIXELS = 256 * 1024


@dataclass(frozen=True)
class DecoderSpec:
    """Channel widths of the five decoder stages (deepest first).

    ``semantic[i]`` / ``matting[i]`` list the channels through the three convs of
    ``decoder{4-i}_g`` / ``decoder{4-i}_l``. The last semantic stage ends in
    logits: its last conv has no BN/ReLU and either gives 3 channels (ResNet-34) or
    ``semantic_head`` adds a final 3x3 conv ``decoder_final_g`` (ViTAE-S).
    ``stem_channels`` is the width of ``EncoderFeatures.stem`` (for sBFI).
    """

    semantic: tuple[tuple[int, ...], ...]
    matting: tuple[tuple[int, ...], ...]
    stem_channels: int
    semantic_head: bool = False
    deep_channels: int = 512


def unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """2x2 max-unpooling with the encoder's indices: (N, C, h, w) -> (N, C, 2h, 2w).

    ``indices`` (int64, or int32 to save memory) index each (2h, 2w) plane, as
    ``max_pool2d(..., return_indices=True)`` gives them. Values scatter into a zero map;
    where two windows chose the same position the later window wins, as in PyTorch's
    CPU ``max_unpool2d``. Channels-last inputs scatter along the pixel axis of their
    (N, h*w, C) memory, with no copy (``max_unpool2d`` places channels-last values
    wrongly and needs two copies); ONNX export scatters NCHW planes, which its runtimes expect.
    """
    n, c, h, w = x.shape
    indices = indices.long()
    if torch.onnx.is_in_onnx_export() or not x.is_contiguous(memory_format=torch.channels_last):
        out = x.new_zeros((n, c, 4 * h * w))
        out.scatter_(2, indices.reshape(n, c, h * w), x.reshape(n, c, h * w))
        return out.view(n, c, 2 * h, 2 * w)
    out = x.new_zeros((n, 4 * h * w, c))
    out.scatter_(1, indices.permute(0, 2, 3, 1).reshape(n, h * w, c), x.permute(0, 2, 3, 1).reshape(n, h * w, c))
    return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def unpool_crop(x: torch.Tensor, indices: torch.Tensor, rows: tuple[int, int], columns: tuple[int, int],
                offset: tuple[int, int] = (0, 0), plane_width: int | None = None) -> torch.Tensor:
    """A window of the unpooled map: rows ``rows[0] .. rows[1] - 1`` and columns ``columns[0] ..
    columns[1] - 1``, (N, C, h, w) channels-last ``x`` -> (N, C, rows, columns); places outside the
    unpooled map are zero.

    ``x`` and ``indices`` hold the pooled pixels from ``offset`` (row, column) of a map whose
    indices address a (2H, ``plane_width``) plane (default ``2 * w``: ``x`` is the whole width);
    with ``offset`` (0, 0) and the whole map this is a window of ``unpool(x, indices)``. Only the
    pooled pixels whose 3x3/2 windows reach the window are scattered, in the order :func:`unpool`
    scatters them, so the later window still wins.
    """
    n, c, h, w = x.shape
    plane_width = plane_width or 2 * w
    (first, last), (left_col, right_col), (row_offset, col_offset) = rows, columns, offset
    top, bottom = max(0, (first - 1) // 2 - row_offset), min(h, last // 2 + 1 - row_offset)
    left, right = max(0, (left_col - 1) // 2 - col_offset), min(w, right_col // 2 + 1 - col_offset)
    # the rows and columns those pooled pixels reach, within the plane
    start, end = min(first, max(0, 2 * (row_offset + top) - 1)), max(last, 2 * (row_offset + bottom))
    start_col = min(left_col, max(0, 2 * (col_offset + left) - 1))
    end_col = max(right_col, min(plane_width, 2 * (col_offset + right)))
    values = x[:, :, top:bottom, left:right].permute(0, 2, 3, 1).reshape(n, -1, c)
    target = indices[:, :, top:bottom, left:right].permute(0, 2, 3, 1).reshape(n, -1, c).to(torch.int64, copy=True)
    band_width = end_col - start_col
    if (start_col, end_col) == (0, plane_width):
        target.sub_(start * plane_width)
    else:  # flat plane index -> index in the window
        target_rows = torch.div(target, plane_width, rounding_mode="floor")
        target.sub_(target_rows * plane_width)  # the column in the plane
        target.sub_(start_col).add_(target_rows.sub_(start).mul_(band_width))
    band = x.new_zeros((n, (end - start) * band_width, c))
    band.scatter_(1, target, values)
    return band.view(n, end - start, band_width, c).permute(0, 3, 1, 2)[
        :, :, first - start:last - start, left_col - start_col:right_col - start_col]


def upsample_crop(x: torch.Tensor, rows: tuple[int, int], columns: tuple[int, int]) -> torch.Tensor:
    """A window of ``upsample(x, 2)`` inside it (0 <= first < last <= 2h, same for columns):
    (N, C, h, w) -> (N, C, rows, columns), the same values, from the input pixels they depend on."""
    (first, last), (left_col, right_col) = rows, columns
    top, bottom = max(0, (first - 1) // 2), min(x.shape[2], last // 2 + 1)
    left, right = max(0, (left_col - 1) // 2), min(x.shape[3], right_col // 2 + 1)
    return upsample(x[:, :, top:bottom, left:right], 2)[
        :, :, first - 2 * top:last - 2 * top, left_col - 2 * left:right_col - 2 * left]


def fuse(global_logits: torch.Tensor, local_alpha: torch.Tensor) -> torch.Tensor:
    """Fusion of the official model: argmax background -> 0, foreground -> 1, transition -> local.

    Args:
        global_logits: (N, 3, H, W) logits, channels background / transition / foreground.
        local_alpha: (N, 1, H, W) in [0, 1].

    Returns:
        (N, 1, H, W) fused alpha in [0, 1].
    """
    region = global_logits.argmax(dim=1, keepdim=True)
    return torch.where(region == 1, local_alpha, (region == 2).to(local_alpha.dtype))


def _tile_runs(wanted: torch.Tensor, tile: int, width: int) -> list[tuple[int, int]]:
    """Level-0 column ranges [left, right) of the runs of ``wanted`` tiles ((tiles,) bool, ``tile``
    columns each, of a band ``width`` columns wide); the whole width where most tiles are wanted."""
    if wanted.float().mean() > REGION_WHOLE_SHARE:
        return [(0, width)]
    runs: list[tuple[int, int]] = []
    for index in wanted.nonzero().flatten().tolist():
        left, right = index * tile, min(width, (index + 1) * tile)
        if runs and runs[-1][1] == left:
            runs[-1] = (runs[-1][0], right)
        else:
            runs.append((left, right))
    return runs


class DualDecoder(nn.Module):
    """Semantic decoder (bilinear upsampling, dBFI side outputs) and matting decoder
    (max-unpooling with the encoder's indices, TFI at four levels, sBFI at three)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        for level, channels in zip(range(4, -1, -1), spec.semantic):
            setattr(self, f"decoder{level}_g", conv_stack(list(channels), plain_last=level == 0))
        if spec.semantic_head:
            self.decoder_final_g = nn.Conv2d(spec.semantic[-1][-1], 3, 3, padding=1)
        for level, channels in zip(range(4, -1, -1), spec.matting):
            setattr(self, f"decoder{level}_l", conv_stack(list(channels)))
        self.decoder_final_l = nn.Conv2d(spec.matting[-1][-1], 1, 3, padding=1)

        widths = [stage[-1] for stage in spec.semantic]  # outputs of decoder4_g .. decoder0_g
        self.tfi_3 = TFI(widths[0])
        self.tfi_2 = TFI(widths[1])
        self.tfi_1 = TFI(widths[2])
        self.tfi_0 = TFI(widths[3])
        self.sbfi_2 = SBFI(widths[1], spec.stem_channels, 8)
        self.sbfi_1 = SBFI(widths[2], spec.stem_channels, 4)
        self.sbfi_0 = SBFI(widths[3], spec.stem_channels, 2)
        self.dbfi_2 = DBFI(widths[1], spec.deep_channels, 4)
        self.dbfi_1 = DBFI(widths[2], spec.deep_channels, 8)
        self.dbfi_0 = DBFI(widths[3], spec.deep_channels, 16)

    def _level0_in_bands(self, semantic: torch.Tensor, coarse: torch.Tensor, coarse_indices: torch.Tensor,
                         skip: torch.Tensor, stem: torch.Tensor, indices: torch.Tensor,
                         band_rows: int | None = None, region: torch.Tensor | None = None) -> torch.Tensor:
        """The matting decoder from level 1 to the alpha logits, at inference, in bands of rows.

        Per band: unpooling of ``coarse`` (decoder1_l's output, (N, C, h/2, w/2)) with
        ``coarse_indices``, upsampling of ``semantic`` (decoder1_g's output, (N, C, h/2, w/2)),
        TFI, sBFI and decoder0_l with the level-0 maps ``skip`` and ``stem`` ((N, C_i, h, w)),
        then the last unpooling with ``indices`` and ``decoder_final_l``. Returns the logits,
        (N, 1, 2h, 2w). Each band is computed with extra rows on each side, one per 3x3
        convolution (each corrupts one row at a band edge inside the map), then cropped; no
        map of level 0 or of full resolution is held whole.

        ``region`` ((2h, 2w) bool): only the logits there are needed. Unless it is in most
        tiles of :data:`REGION_TILE` level-0 pixels, the bands are then that many rows high and
        cut into such tiles, and only the runs of tiles that hold region pixels are computed
        (with the same extra rows and columns); logits elsewhere are 0. ``band_rows`` sets the
        height of whole bands.
        """
        n, _, height, width = skip.shape
        wanted_tiles = None  # (bands, tiles per band) bool: the tiles that hold region pixels
        if region is not None:
            wanted_tiles = F.max_pool2d(region[None, None].float(), 2 * REGION_TILE, ceil_mode=True)[0, 0] > 0
            if wanted_tiles.float().mean() > REGION_WHOLE_SHARE:
                wanted_tiles = None
        band_rows = (band_rows or LEVEL0_BAND_ROWS) if wanted_tiles is None else REGION_TILE
        convs = 2 + sum(isinstance(layer, nn.Conv2d) for layer in self.decoder0_l)  # TFI, sBFI, decoder0_l
        final = self.decoder_final_l
        logits = skip.new_zeros((n, final.out_channels, 2 * height, 2 * width))
        logits = logits.contiguous(memory_format=torch.channels_last)
        for top in range(0, height, band_rows):
            bottom = min(top + band_rows, height)
            runs = [(0, width)] if wanted_tiles is None else _tile_runs(wanted_tiles[top // band_rows], band_rows, width)
            # decoder0_l rows [low, high) reach the last convolution's rows [2 top, 2 bottom)
            low, high = max(0, top - 1), min(height, bottom + 1)
            first, last = max(0, low - convs), min(height, high + convs)
            for left, right in runs:
                whole_width = (left, right) == (0, width)
                left_in, right_in = max(0, left - 1), min(width, right + 1)  # the same, for columns
                start, end = max(0, left_in - convs), min(width, right_in + convs)
                rows, columns = (first, last), (start, end)
                merged = self.tfi_0(upsample_crop(semantic, rows, columns),
                                    unpool_crop(coarse, coarse_indices, rows, columns),
                                    skip[:, :, first:last, start:end])
                merged = self.sbfi_0(merged, stem[:, :, first:last, start:end])
                matting = self.decoder0_l(merged)[:, :, low - first:high - first, left_in - start:right_in - start]
                del merged
                # the last convolution's zero padding: the conv's own across a whole band, else unpooled columns
                final_columns = (0, 2 * width) if whole_width else (2 * left - 1, 2 * right + 1)
                for row in range(2 * top, 2 * bottom, FINAL_BAND_ROWS):
                    stop = min(row + FINAL_BAND_ROWS, 2 * bottom)
                    unpooled = unpool_crop(matting, indices[:, :, low:high, left_in:right_in], (row - 1, stop + 1),
                                           final_columns, offset=(low, left_in), plane_width=2 * width)
                    logits[:, :, row:stop, 2 * left:2 * right] = F.conv2d(
                        unpooled, final.weight, final.bias, padding=(0, 1 if whole_width else 0))
        return logits

    def forward(self, features: EncoderFeatures | list, need_global: bool = True,
                need_local: bool = True, local_region: torch.Tensor | None = None) -> P3MOutput:
        """Decode ``features``; a branch that is not needed is not computed.

        The matting decoder always uses the semantic features, but without
        ``need_global`` the semantic head (``decoder0_g`` and beyond) and the
        side outputs are skipped; without ``need_local`` the whole matting
        decoder is. Skipped outputs (and ``fused_alpha`` unless both) are None.
        ``features`` given as a list (as :class:`P3MNet` does) is emptied, and each
        map is dropped as soon as it is used: at full resolution the last stages
        then run without the encoder's larger maps held in memory.
        ``local_region`` ((H, W) bool at the input's resolution, inference only): the pixels
        whose local alpha is needed; where a whole tile of the banded last stages holds none,
        it is not computed and the local alpha there is 0.5 (logits 0). Maps decoded whole
        ignore it.
        """
        stem, skips, deepest, indices = features
        banded = not (self.training or torch.onnx.is_in_onnx_export()) and \
            stem.shape[-2] * stem.shape[-1] >= BANDED_MIN_PIXELS  # level 0 of the matting decoder
        if isinstance(features, list):
            features.clear()
        del features
        skips, indices = list(skips), list(indices)  # popped deepest first as the matting decoder goes up

        # Semantic decoder: 1/32 -> 1/1, bilinear upsampling.
        d4_g = upsample(self.decoder4_g(deepest), 2)
        d3_g = upsample(self.decoder3_g(d4_g), 2)
        d2_g, side2 = self.dbfi_2(d3_g, deepest, need_global)
        d2_g = upsample(self.decoder2_g(d2_g), 2)
        d1_g, side1 = self.dbfi_1(d2_g, deepest, need_global)
        d1_g = self.decoder1_g(d1_g)
        if not banded:
            d1_g = upsample(d1_g, 2)
        global_logits = sides = None
        if need_global:
            d0_g, side0 = self.dbfi_0(upsample(d1_g, 2) if banded else d1_g, deepest)
            global_logits = upsample(self.decoder0_g(d0_g), 2)
            del d0_g
            if self.spec.semantic_head:
                global_logits = self.decoder_final_g(global_logits)
            sides = (side2, side1, side0)
        semantic = [d1_g, d2_g, d3_g, d4_g]  # popped deepest first, like skips and indices; d1_g at 1/2
        # resolution, or (banded) at 1/4, upsampled band by band
        del d1_g, d2_g, d3_g, d4_g

        local_alpha = None
        if need_local:
            # Matting decoder: 1/32 -> 1/1, max-unpooling with the encoder's indices;
            # TFI at every level, sBFI at levels 2, 1 and 0. At inference level 0 runs in bands.
            lowest_whole = 1 if banded else 0
            matting = unpool(self.decoder4_l(deepest), indices.pop())
            del deepest
            for level in range(3, lowest_whole - 1, -1):
                merged = getattr(self, f"tfi_{level}")(semantic.pop(), matting, skips.pop())
                del matting
                if level < 3:
                    merged = getattr(self, f"sbfi_{level}")(merged, stem)
                matting = getattr(self, f"decoder{level}_l")(merged)
                del merged
                if level > lowest_whole:
                    matting = unpool(matting, indices.pop())
            if banded:
                logits = self._level0_in_bands(semantic.pop(), matting, indices.pop(), skips.pop(), stem,
                                               indices.pop(), region=local_region)
            else:
                logits = self.decoder_final_l(unpool(matting, indices.pop()))
            del stem, matting
            local_alpha = torch.sigmoid(logits)

        fused = fuse(global_logits, local_alpha) if need_global and need_local else None
        return P3MOutput(global_logits, local_alpha, fused, sides)
