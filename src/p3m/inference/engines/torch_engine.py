"""The PyTorch engine: a P3M-Net from a checkpoint, BatchNorm folded, in fp32, bf16 or fp16."""
from __future__ import annotations

import os

import numpy as np
import torch

from p3m.checkpoint import load_weights
from p3m.inference.devices import resolve_device
from p3m.inference.engines import BranchOutputs
from p3m.models.folding import fold_batchnorms
from p3m.models.registry import get_spec
from p3m.weights import resolve

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the hardware cannot run fast (emulated bf16 on a CPU
    without AVX512-BF16/AMX is about 100x slower than fp32)."""
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision 'bf16' needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} has none")
        return
    if device.type == "cpu" and precision == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ValueError("precision 'bf16' on the CPU needs AVX512-BF16 or AMX (not found on this CPU); "
                             "use fp32, or bf16 on a GPU")
        return
    raise ValueError(f"precision {precision!r} is not supported on {device.type}; fp16 needs CUDA, bf16 CUDA or a "
                     "CPU with AVX512-BF16/AMX")


class TorchEngine:
    """P3M-Net in PyTorch. ``network`` is the loaded model (eval mode, BatchNorm folded,
    in the precision's dtype); the argmax and fusion happen on its float32 outputs."""

    def __init__(self, model: str = "resnet34", weights: str | os.PathLike | None = None, device="auto",
                 precision: str = "fp32"):
        spec = get_spec(model)
        self.model_name, self.mean, self.std = spec.name, spec.mean, spec.std
        self.small_image_side = spec.small_image_side
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        check_precision(precision, self.torch_device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.weights_path = resolve(spec.name, weights)
        network = load_weights(spec.build(), self.weights_path, spec.name).eval()
        self.network = fold_batchnorms(network).to(self.torch_device, self.dtype)

    def run(self, image: np.ndarray, need_global: bool = True, need_local: bool = True,
            local_region: np.ndarray | None = None) -> BranchOutputs:
        tensor = torch.from_numpy(image).to(self.torch_device, self.dtype)
        region = None if local_region is None else torch.from_numpy(local_region).to(self.torch_device)
        with torch.inference_mode():
            output = self.network(tensor, need_global=need_global, need_local=need_local, local_region=region)
            del tensor
            logits = None if output.global_logits is None else output.global_logits[0].float().cpu().numpy()
            local = None if output.local_alpha is None else output.local_alpha[0, 0].float().cpu().numpy()
        return BranchOutputs(logits, local)
