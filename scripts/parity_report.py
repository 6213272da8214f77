#!/usr/bin/env python3
"""Print p3m's differences from the official outputs in tests/fixtures (the reference kit).

usage: python scripts/parity_report.py

Builds the deterministic official-format checkpoints in a temporary folder, then
prints, per model, the max/mean absolute differences of the raw outputs (96x128;
256x352 for Swin-T) and of the end-to-end HYBRID/RESIZE alphas of ref_small.png
(and ref_mid.png for Swin-T).
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

import p3m
from p3m.checkpoint import load_weights
from p3m.models import create_model

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
# (model, kit prefix, raw-output size, test portraits with official alphas)
MODELS = (("resnet34", "r34", "96x128", ("ref_small",)), ("vitae-s", "vitae", "96x128", ("ref_small",)),
          ("swin-t", "swin", "256x352", ("ref_small", "ref_mid")))


def make_checkpoints(folder: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_checkpoint", FIXTURES / "make_checkpoint.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    paths = {}
    for model, prefix, _, _ in MODELS:
        path = folder / f"{prefix}.pth"
        manifest = str(FIXTURES / f"{prefix}_manifest.json")
        recipe.main(manifest, str(path))
        content = torch.load(path, weights_only=True)
        content["state_dict"].update(recipe.random_features(manifest))  # pinned ViTAE-S features
        torch.save(content, path)
        paths[model] = path
    return paths


def report(model: str, prefix: str, size: str, portraits: tuple[str, ...], checkpoint: Path) -> None:
    network = load_weights(create_model(model), checkpoint, model).eval()
    reference = np.load(FIXTURES / f"{prefix}_forward_{size}.npz")
    with torch.inference_mode():
        output = network(torch.from_numpy(reference["input"]))
    raw = {"global": output.global_logits, "local": output.local_alpha, "fusion": output.fused_alpha,
           "side2": output.side_logits[0], "side1": output.side_logits[1], "side0": output.side_logits[2]}
    for name, tensor in raw.items():
        difference = np.abs(tensor.numpy() - reference[name])
        print(f"{model:9s} raw {name:7s} max {difference.max():.2e}  mean {difference.mean():.2e}")
    matter = p3m.Matter(model=model, weights=checkpoint, device="cpu")
    for portrait in portraits:
        pipeline = np.load(FIXTURES / f"{prefix}_pipeline_{portrait}.npz")
        for method in ("hybrid", "resize"):
            alpha = matter.with_options(method=method).predict(FIXTURES / f"{portrait}.png").alpha
            difference = np.abs(alpha - pipeline[method.upper()])
            print(f"{model:9s} {portrait} {method:6s} max {difference.max():.2e}  mean {difference.mean():.2e}  "
                  f"pixels > 0.01: {(difference > 0.01).mean():.4%}")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = make_checkpoints(Path(folder))
        for model, prefix, size, portraits in MODELS:
            report(model, prefix, size, portraits, checkpoints[model])


if __name__ == "__main__":
    main()
