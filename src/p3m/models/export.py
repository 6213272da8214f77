"""ONNX export of P3M-Net: the two maps the inference strategies use, with names.

The exported graph takes ``image`` (N, 3, H, W) float32, ImageNet-normalised,
H and W any multiples of 32 (dynamic), and returns ``global_logits``
(N, 3, H, W) and ``local_alpha`` (N, 1, H, W) in [0, 1]. The argmax, the
fusion and every resize stay outside the graph, in the pipeline, so they are
the same code for every engine. The file's metadata names the variant and its
normalisation (``p3m_model``, ``p3m_mean``, ``p3m_std``), so that a runtime
needs nothing but the file.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from p3m.io import atomic_write
from p3m.models.registry import ModelSpec

INPUT_NAME = "image"
OUTPUT_NAMES = ("global_logits", "local_alpha")
OPSET = 17


class ExportWrapper(nn.Module):
    """``image -> (global_logits, local_alpha)`` of a P3M-Net, for tracing."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.network(image)
        return output.global_logits, output.local_alpha


def export_onnx(network: nn.Module, spec: ModelSpec, path: str | os.PathLike,
                sample_size: tuple[int, int] = (64, 96)) -> Path:
    """Write ``network`` (eval mode, on the CPU) as an ONNX graph with dynamic height and
    width, atomically. ``sample_size`` is the (H, W) traced through; any multiple of 32 runs.
    A ValueError for a variant that cannot be exported (``spec.exportable``)."""
    if not spec.exportable:
        raise ValueError(f"model '{spec.name}' cannot be exported to ONNX: its attention masks depend on "
                         f"the input size, which a traced graph would fix")
    import onnx

    wrapper = ExportWrapper(network).eval()
    sample = torch.zeros(1, 3, *sample_size)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (sample,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET, dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in (("p3m_model", spec.name), ("p3m_mean", json.dumps(list(spec.mean))),
                       ("p3m_std", json.dumps(list(spec.std)))):
        graph.metadata_props.add(key=key, value=value)
    return atomic_write(path, lambda tmp: onnx.save(graph, str(tmp)))
