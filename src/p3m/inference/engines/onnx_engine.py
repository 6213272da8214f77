"""The onnxruntime engine: runs a graph written by ``p3m export``, without PyTorch.

onnxruntime computes every node of a graph whatever outputs are asked for, so
the graph is pruned (``onnx.utils.Extractor``) to the branches a pass needs:
HYBRID's global pass skips the matting decoder, its local pass the semantic head.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from p3m.inference.engines import BranchOutputs

INPUT_NAME = "image"
OUTPUTS = {"global": "global_logits", "local": "local_alpha"}


class OnnxEngine:
    """Runs an exported P3M-Net graph (fp32) on the CPU, or CUDA where onnxruntime has it."""

    def __init__(self, weights: str | os.PathLike | None, device: str = "auto", precision: str = "fp32"):
        import onnx
        import onnxruntime

        if weights is None:
            raise ValueError("engine 'onnxruntime' needs weights: an .onnx file written by `p3m export`")
        if precision != "fp32":
            raise ValueError(f"engine 'onnxruntime' runs the exported fp32 graph; precision {precision!r} "
                             "needs engine 'torch'")
        self.weights_path = Path(weights)
        self.precision = precision
        self.providers = _providers(str(device), onnxruntime.get_available_providers())
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        try:
            graph = onnx.load(str(self.weights_path), load_external_data=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.weights_path}: no such ONNX file") from None
        except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
            raise ValueError(f"{self.weights_path}: not a readable ONNX file ({type(error).__name__})") from None
        metadata = {prop.key: prop.value for prop in graph.metadata_props}
        outputs = {output.name for output in graph.graph.output}
        if "p3m_model" not in metadata or not set(OUTPUTS.values()) <= outputs:
            raise ValueError(f"{self.weights_path}: not a P3M-Net graph written by `p3m export` "
                             f"(needs metadata p3m_model and outputs {', '.join(OUTPUTS.values())})")
        self.model_name = metadata["p3m_model"]
        self.mean = tuple(json.loads(metadata["p3m_mean"]))
        self.std = tuple(json.loads(metadata["p3m_std"]))
        self.small_image_side = None  # only Swin-T has a small-image path, and it is not exported
        self._sessions: dict[tuple[str, ...], object] = {}
        self._onnxruntime = onnxruntime

    def run(self, image: np.ndarray, need_global: bool = True, need_local: bool = True,
            local_region: np.ndarray | None = None) -> BranchOutputs:
        """The graph computes every pixel: ``local_region`` is not used."""
        branches = tuple(name for name, needed in (("global", need_global), ("local", need_local)) if needed)
        results = dict(zip(branches, self._session(branches).run([OUTPUTS[b] for b in branches], {INPUT_NAME: image})))
        logits, local = results.get("global"), results.get("local")
        return BranchOutputs(None if logits is None else logits[0], None if local is None else local[0, 0])

    def _session(self, branches: tuple[str, ...]):
        # The graph is read again for each of the (at most three) branch sets rather than kept in memory.
        if branches not in self._sessions:
            import onnx
            import onnx.utils

            graph = onnx.load(str(self.weights_path), load_external_data=False)
            pruned = onnx.utils.Extractor(graph).extract_model([INPUT_NAME], [OUTPUTS[b] for b in branches])
            options = self._onnxruntime.SessionOptions()
            options.graph_optimization_level = self._onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Full-resolution feature maps are hundreds of MB each: free each one when its last
            # reader is done instead of planning one block for all of them or keeping an arena.
            options.enable_mem_pattern = False
            options.enable_cpu_mem_arena = False
            self._sessions[branches] = self._onnxruntime.InferenceSession(
                pruned.SerializeToString(), options, providers=self.providers)
        return self._sessions[branches]


def _providers(device: str, available: list[str]) -> list[str]:
    if device in ("auto", "cpu"):
        cuda = device == "auto" and "CUDAExecutionProvider" in available
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError("device 'cuda' requested but this onnxruntime has no CUDA provider "
                             "(install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"engine 'onnxruntime' runs on auto, cpu or cuda, not {device!r}")
