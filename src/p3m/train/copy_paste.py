"""P3M-CP: copy and paste public faces into face-blurred training samples (IJCV 2023).

A model trained only on face-blurred portraits sees no facial detail. P3M-CP
borrows faces from public (celebrity) face images, with no privacy concern, and
puts them where the training image's face was blurred, as the P3M-10k face mask
gives it (``train/facemask``):

- **ICP** (image level): the source face is pasted into the training image
  (and into its foreground colour ``fg``, so that the composition loss stays
  consistent); alpha and trimap are unchanged.
- **FCP** (feature level): the source face image goes through the same encoder,
  and its features are pasted into the training image's encoder features, at
  every level the encoder hands to the decoders, inside the face mask
  downsampled to that level.

Alignment, the same at both levels ("align and merge" of the paper's figure):
each connected region of the target face mask gets the source face's bounding
box resized onto the region's bounding box (centres aligned, bilinear), and
takes those values only inside the region; everything outside the mask is left
as it was.

Face sources: ``--cp-faces DIR`` holds face images (any image extension);
``DIR/facemask/`` may hold a face mask per image (same stem, 255 on the face,
the P3M-10k convention; ``p3m anonymize --masks`` writes such masks). An image
without a mask is taken as a face crop: the whole image is the face.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from p3m.data.layout import index_folder
from p3m.io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_mask
from p3m.models.features import EncoderFeatures

FACE_MASK_FOLDER = "facemask"
# A face mask pixel belongs to the face from this value on (as `p3m evaluate --facemask`).
FACE_THRESHOLD = 128
# Faces checked when a run starts: at least one of them must load.
FACES_CHECKED = 8

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


class CopyPasteError(ValueError):
    """P3M-CP cannot run as configured; the message names the folder or file."""


# ----------------------------------------------------------------------------- geometry

def bounding_box(mask: np.ndarray) -> Box | None:
    """``(top, left, bottom, right)`` of the True pixels of a (H, W) bool mask, or None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def scale_box(box: Box, source_size: tuple[int, int], size: tuple[int, int]) -> Box:
    """``box`` of a ``source_size`` (H, W) map on a ``size`` (h, w) map: the smallest box covering it, never empty."""
    (height, width), (h, w) = source_size, size
    top, left = min(h - 1, box[0] * h // height), min(w - 1, box[1] * w // width)
    bottom, right = -(-box[2] * h // height), -(-box[3] * w // width)
    return top, left, max(bottom, top + 1), max(right, left + 1)


def face_regions(mask: np.ndarray) -> list[tuple[Box, np.ndarray]]:
    """The connected face regions of a (H, W) bool mask (8-connectivity): each region's box
    and its (box height, box width) bool mask."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions = []
    for label in range(1, count):
        left, top, width, height = (int(value) for value in stats[label, :4])
        box = (top, left, top + height, left + width)
        regions.append((box, labels[top:top + height, left:left + width] == label))
    return regions


def paste_face(target: torch.Tensor, target_mask: np.ndarray, source: torch.Tensor, source_box: Box) -> torch.Tensor:
    """Paste the ``source_box`` crop of ``source`` into every face region of ``target``.

    Args:
        target: (C, H, W) float image or feature map.
        target_mask: (H, W) bool, the face region(s) of ``target``.
        source: (C, h, w) float, same channels and device as ``target``.
        source_box: the source face's bounding box in ``source``.

    Returns:
        a new (C, H, W) tensor: inside ``target_mask`` the crop resized (bilinear) onto each
        region's bounding box, elsewhere ``target`` unchanged. Differentiable in both inputs.
    """
    top, left, bottom, right = source_box
    crop = source[None, :, top:bottom, left:right].float()  # antialiased resizing has no half-precision kernels
    out = target.clone()
    for (y0, x0, y1, x1), region in face_regions(target_mask):
        shrink = y1 - y0 < crop.shape[-2] or x1 - x0 < crop.shape[-1]
        face = F.interpolate(crop, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False,
                             antialias=shrink)[0].to(target.dtype)
        inside = torch.from_numpy(region).to(target.device)
        out[:, y0:y1, x0:x1] = torch.where(inside, face, out[:, y0:y1, x0:x1])
    return out


def paste_face_uint8(target: np.ndarray, target_mask: np.ndarray, source: np.ndarray, source_box: Box) -> np.ndarray:
    """:func:`paste_face` on (H, W, 3) uint8 images; pixels outside ``target_mask`` keep their exact values."""
    pasted = paste_face(_channels_first(target), target_mask, _channels_first(source), source_box)
    result = pasted.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.where(target_mask[..., None], result, target)


def _channels_first(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W) float32."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def downsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) bool mask at (h, w): the pixels at least half covered by it (area averaging)."""
    import cv2

    if mask.shape == tuple(size):
        return mask
    area = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return area >= 0.5


# ----------------------------------------------------------------------------- face sources

@dataclass(frozen=True)
class Face:
    """One loaded source face: ``image`` (H, W, 3) uint8 and ``box``, the face's bounding box in it."""

    image: np.ndarray
    box: Box


class FaceSource:
    """The face images of ``--cp-faces DIR`` (and their masks from ``DIR/facemask/`` when present).

    Raises:
        CopyPasteError: the folder is missing, cannot be listed, or holds no image file.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CopyPasteError(f"{self.folder}: no such folder of face images (--cp-faces)")
        images = self._index(self.folder)
        if not images:
            raise CopyPasteError(f"{self.folder}: no face image in this folder (--cp-faces takes a folder of public "
                                 f"face images: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        mask_folder = self.folder / FACE_MASK_FOLDER
        masks = self._index(mask_folder) if mask_folder.is_dir() else {}
        self.faces: list[tuple[Path, Path | None]] = [(path, masks.get(stem)) for stem, path in images.items()]

    @staticmethod
    def _index(folder: Path) -> dict[str, Path]:
        try:
            return index_folder(folder).files
        except OSError as error:
            raise CopyPasteError(f"{folder}: cannot be listed ({error.strerror or error})") from None

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def files(self) -> list[Path]:
        """Every file P3M-CP may read (images and masks), for the run's provenance."""
        return [path for pair in self.faces for path in pair if path is not None]

    def load(self, index: int) -> Face:
        """Face ``index``, decoded.

        Raises:
            ImageReadError: the image or its mask cannot be read, differ in size, or the mask is empty.
        """
        image_path, mask_path = self.faces[index]
        image = read_image(image_path)
        if mask_path is None:
            mask = np.ones(image.shape[:2], bool)
        else:
            mask = read_mask(mask_path) >= FACE_THRESHOLD
            if mask.shape != image.shape[:2]:
                raise ImageReadError(f"{mask_path}: size {mask.shape[1]}x{mask.shape[0]} differs from "
                                     f"{image_path} ({image.shape[1]}x{image.shape[0]})")
        box = bounding_box(mask)
        if box is None:
            raise ImageReadError(f"{mask_path}: empty face mask (no pixel of at least {FACE_THRESHOLD})")
        return Face(image, box)

    def check(self) -> None:
        """Load the first faces until one loads.

        Raises:
            CopyPasteError: none of the first :data:`FACES_CHECKED` faces can be read.
        """
        reason = ""
        for index in range(min(len(self), FACES_CHECKED)):
            try:
                self.load(index)
                return
            except ImageReadError as error:
                reason = str(error).strip().splitlines()[0]
        raise CopyPasteError(f"{self.folder}: none of the first {min(len(self), FACES_CHECKED)} face image(s) can be "
                             f"read (last: {reason})")


# ----------------------------------------------------------------------------- feature level

@dataclass
class FeaturePaste:
    """FCP for one batch: a :data:`p3m.models.p3mnet.FeaturePaste` for ``P3MNet.forward``.

    rows: (K,) indices of the batch samples that get a pasted face.
    source: (K, 3, S, S) normalised source face images, on the model's device.
    source_boxes: K face boxes in ``source``.
    target_masks: K (S, S) bool face masks of the training images.

    Calling it encodes ``source`` with the model's encoder (same weights, gradients flow)
    and pastes each source's features into its training image's features at every level
    (stem, skips, deepest), inside the face mask downsampled to that level; max-pool
    indices stay the training image's.
    """

    rows: Sequence[int]
    source: torch.Tensor
    source_boxes: Sequence[Box]
    target_masks: Sequence[np.ndarray]

    def __call__(self, encoder: torch.nn.Module, features: EncoderFeatures) -> EncoderFeatures:
        sources = encoder(self.source)
        size = tuple(self.source.shape[-2:])

        def paste(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            level = tuple(target.shape[-2:])
            out = list(target.unbind(0))
            for k, row in enumerate(self.rows):
                mask = downsample_mask(self.target_masks[k], level)
                if mask.any():
                    out[row] = paste_face(out[row], mask, source[k], scale_box(self.source_boxes[k], size, level))
            return torch.stack(out).contiguous(memory_format=torch.channels_last)

        return EncoderFeatures(
            paste(features.stem, sources.stem),
            tuple(paste(target, source) for target, source in zip(features.skips, sources.skips)),
            paste(features.deepest, sources.deepest),
            features.indices,
        )


@dataclass(frozen=True)
class CopyPaste:
    """P3M-CP settings of a run: ``mode`` (``icp``, ``fcp`` or ``both``), the face source and the
    probability that a sample with a face gets an image-level / feature-level paste."""

    mode: str
    faces: FaceSource
    prob_icp: float
    prob_fcp: float

    @property
    def icp(self) -> bool:
        return self.mode in ("icp", "both")

    @property
    def fcp(self) -> bool:
        return self.mode in ("fcp", "both")
