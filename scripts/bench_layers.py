#!/usr/bin/env python3
"""Single layers of P3M-Net's shapes, timed against the alternatives measured for them.

usage: python scripts/bench_layers.py [--weights r34.pth --image FILE] [--repeat 5]

Per 3x3 convolution shape of the decoder (channels-last, fp32, torch's threads):
oneDNN (torch's default) against NNPACK's Winograd convolution and against
oneDNN with the ReLU fused (``torch.ops.mkldnn._convolution_pointwise``), and
the cost of a call on a shape oneDNN has not seen. Then ViTAE-S's attention
(5628 tokens, 6 heads of 64) in torch's CPU kernel against softmax(QK^T)V in
chunks of queries and torch's math backend. Each pair alternates within each
round, in one process; medians.

``--weights`` (a ResNet-34 checkpoint) adds the whole network with NNPACK for
every 3x3 convolution of 128 channels or more: the raw outputs' error against
the official outputs of tests/fixtures/r34_forward_96x128.npz as a share of the
reference tolerance (rtol = atol = 1e-4), and, with ``--image``, one HYBRID call
each way.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CONV_SHAPES = ((64, 264, 400), (128, 132, 200), (256, 66, 100), (512, 33, 50))
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def interleaved(functions: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each function, the functions alternating within each round."""
    for function in functions.values():
        function()
    seconds = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def nnpack_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [1, 1])
    return out.contiguous(memory_format=torch.channels_last)


def convolutions(repeat: int) -> None:
    print("| channels, size | oneDNN GFLOP/s | NNPACK / oneDNN speed | NNPACK max error | fused ReLU / separate"
          " | new shape / same shape |")
    print("|---|---|---|---|---|---|")
    pointwise = torch.ops.mkldnn._convolution_pointwise
    for channels, height, width in CONV_SHAPES:
        x = torch.randn(1, channels, height, width).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(memory_format=torch.channels_last)
        weight, bias = conv.weight.detach(), conv.bias.detach()
        calls = iter(range(256))

        def fresh() -> torch.Tensor:  # a new size per call (up to 15 rows and columns fewer): a new oneDNN primitive
            call = next(calls)
            return F.conv2d(x[..., :height - call // 16, :width - 1 - call % 16], weight, bias, padding=1)

        trimmed = x[..., :width - 1]
        with torch.inference_mode():
            times = interleaved({
                "onednn": lambda: F.conv2d(x, weight, bias, padding=1),
                "nnpack": lambda: nnpack_conv(x, weight, bias),
                "separate": lambda: F.relu_(F.conv2d(x, weight, bias, padding=1)),
                "fused": lambda: pointwise(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""),
                "same shape": lambda: F.conv2d(trimmed, weight, bias, padding=1),
                "new shape": fresh,
            }, repeat)
            error = (nnpack_conv(x, weight, bias) - F.conv2d(x, weight, bias, padding=1)).abs().max().item()
        rate = 2 * 9 * channels * channels * height * width / times["onednn"] / 1e9
        print(f"| {channels}, {height}x{width} | {rate:.0f} | {times['onednn'] / times['nnpack']:.2f}x | {error:.1e} | "
              f"{times['separate'] / times['fused']:.2f}x | {times['new shape'] / times['same shape']:.2f}x "
              f"(+{(times['new shape'] - times['same shape']) * 1e3:.1f} ms) |")


def attention(repeat: int) -> None:
    tokens, heads, dim = 84 * 67, 6, 64
    query, key, value = (torch.randn(1, heads, tokens, dim) for _ in range(3))
    flops = 4 * heads * tokens * tokens * dim

    def chunked(chunk: int = 1024) -> torch.Tensor:
        out = torch.empty_like(query)
        scaled_key = key.transpose(-1, -2) * dim ** -0.5
        for start in range(0, tokens, chunk):
            weights = torch.softmax(query[:, :, start:start + chunk] @ scaled_key, dim=-1)
            torch.matmul(weights, value, out=out[:, :, start:start + chunk])
        return out

    def math_backend() -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            return F.scaled_dot_product_attention(query, key, value)

    with torch.inference_mode():
        times = interleaved({"torch CPU kernel": lambda: F.scaled_dot_product_attention(query, key, value),
                             "softmax(QK^T)V, 1024 queries a chunk": chunked, "math backend": math_backend},
                            max(1, repeat // 2))
    print(f"\nattention, {tokens} tokens, {heads} heads of {dim}:")
    for name, seconds in times.items():
        print(f"  {name}: {seconds:.2f} s, {flops / seconds / 1e9:.0f} GFLOP/s")


def network_with_nnpack(weights: Path, image: str | None) -> None:
    """ResNet-34 with NNPACK for the 3x3 convolutions of >= 128 channels, against the default."""
    import p3m
    from p3m.inference import pipeline
    from p3m.io import read_image

    reference = np.load(FIXTURES / "r34_forward_96x128.npz")
    matter = p3m.Matter(model="resnet34", weights=weights, method="hybrid", device="cpu")
    network = matter.runtime.network
    wide = [module for module in network.modules() if isinstance(module, torch.nn.Conv2d)
            and module.kernel_size == (3, 3) and module.stride == (1, 1) and min(module.weight.shape[:2]) >= 128]
    photo = read_image(image) if image else None
    for label in ("oneDNN", "NNPACK"):
        for module in wide:
            if label == "NNPACK":
                module.forward = lambda x, module=module: nnpack_conv(x, module.weight, module.bias)
            else:
                module.__dict__.pop("forward", None)
        with torch.inference_mode():
            output = network(torch.from_numpy(reference["input"]))
        raw = {"global": output.global_logits, "local": output.local_alpha, "side2": output.side_logits[0],
               "side1": output.side_logits[1], "side0": output.side_logits[2]}
        shares = {name: float((np.abs(value.numpy() - reference[name]) / (1e-4 + 1e-4 * np.abs(reference[name]))).max())
                  for name, value in raw.items()}
        worst = max(shares, key=shares.get)
        line = f"{label}: largest error {shares[worst]:.2f} of the tolerance ({worst})"
        if photo is not None:
            pipeline.hybrid(matter.runtime, photo, 1600)
            started = time.perf_counter()
            pipeline.hybrid(matter.runtime, photo, 1600)
            line += f", HYBRID {time.perf_counter() - started:.2f} s"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a ResNet-34 checkpoint: adds the whole network with NNPACK")
    parser.add_argument("--image", help="with --weights: one HYBRID call each way on this image")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not torch.backends.nnpack.is_available():  # the check also initialises NNPACK
        parser.error("this torch build has no NNPACK")
    print(f"fp32, {torch.get_num_threads()} threads, {args.repeat} rounds, medians")
    convolutions(args.repeat)
    attention(args.repeat)
    if args.weights:
        print()
        network_with_nnpack(args.weights, args.image)


if __name__ == "__main__":
    main()
