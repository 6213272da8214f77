#!/usr/bin/env python3
"""Speed and memory of p3m against the official P3M code, measured side by side in one run.

usage: python scripts/bench_official.py --official-r34 DIR --official-vitae DIR
           [--image FILE] [--vitae-size 1344x1080] [--runs resnet34:hybrid,resnet34:resize,vitae-s:hybrid]
           [--repeat 2] [--threads N] [--trimap-alphas DIR [--trimap-margins 16,32]]

The official code is not part of p3m: get it with
``git clone https://github.com/JizhiziLi/P3M`` (ACM MM 2021, ResNet-34; pass its
``core`` folder as ``--official-r34``) and
``git clone https://github.com/ViTAE-Transformer/P3M-Net`` (IJCV, ViTAE-S; its
``core`` folder as ``--official-vitae``). Its files are imported as they are,
never edited.

Both implementations load the same deterministic official-format checkpoint
(tests/fixtures/make_checkpoint.py; ViTAE-S with the pinned Performer random
features, so both compute the same function) and matte the same image in fp32
on the CPU with the same torch thread count. ResNet-34 runs on ``--image`` as it
is (the 1080x1620 sample by default); ViTAE-S on that image resized with PIL
(bicubic) to ``--vitae-size`` (height x width), saved as a PNG in a temporary
folder. The official side does what its sample script does per image: decode
with PIL, shrink a shorter side over 1080 with OpenCV, then its own
``inference_img`` (ResNet-34, ``test.py``) or ``inference_img_p3m``
(ViTAE-S, ``infer.py``) under ``torch.no_grad()``. The p3m side times
``p3m.Matter.predict`` on the file, which does the same steps.

Each round starts a fresh process for the official code, then one for p3m;
each process makes one warm-up call, then one timed call, and reports its own
peak RSS (``wait4``). The table gives the median wall and CPU seconds of the
timed calls over ``--repeat`` rounds, the largest peak RSS, the speed-up of p3m
(official seconds / p3m seconds), p3m's peak RSS as a share of the official
one, and the alpha difference between the two (max and mean absolute) as a
check that the same computation was timed.

p3m's HYBRID computes the full-resolution pass's last decoder stages only
around the global trimap's transition band (the only pixels where the official
fusion uses them); the deterministic checkpoint's trimap is almost all
transition, so the plain p3m row shows no gain from that. ``--trimap-alphas DIR``
(a folder of the official models' published alphas, ``DIR/MODEL/IMAGE-STEM.png``)
adds p3m rows in which the global pass's trimap is replaced by one made from the
published alpha of the image: transition where 0 < alpha < 1 widened by each of
``--trimap-margins`` pixels, foreground where alpha >= 0.5, background elsewhere.
Those rows time p3m with a trained model's transition band; their alpha is not
comparable to the official one. The official code computes every pixel whatever
its trimap, so its time does not depend on it.

The official code imports ``torchvision.transforms`` (for ``Normalize`` of the
input), ``torchvision.models`` (unused), and in the ViTAE-S code
``timm.models.layers`` (``DropPath``, ``to_2tuple``, ``trunc_normal_``) and
``timm.models.registry`` (``register_model``). p3m depends on neither package;
where one is not installed, the official process is given small stand-ins
(below) that compute the same thing: ``Normalize`` subtracts the mean and
divides by the standard deviation per channel in the tensor's dtype, as
torchvision does; ``DropPath`` is the identity in eval mode (and the official
ViTAE-S builds none at its default drop rate of 0); ``trunc_normal_`` only
initialises weights that the checkpoint then overwrites. They do not change the
computation. The official ResNet-34 ``P3mNet()`` loads ImageNet weights from a
hard-coded path when built; the benchmark builds the same ResNet-34 without
that load, since the checkpoint replaces every weight (``strict=True``).
"""
from __future__ import annotations

import argparse
import collections.abc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch

from bench_inference import MeasuredPopen

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"
FIXTURES = ROOT / "tests" / "fixtures"
MANIFESTS = {"resnet34": FIXTURES / "r34_manifest.json", "vitae-s": FIXTURES / "vitae_manifest.json"}


class Normalize:
    """torchvision's ``Normalize`` on a (C, H, W) tensor: ``(tensor - mean[c]) / std[c]``, a new tensor."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor):
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        target = tensor if self.inplace else tensor.clone()
        return target.sub_(mean).div_(std)


def to_2tuple(value):
    """timm's ``to_2tuple``: an iterable (not a string) as a tuple, anything else twice."""
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        return tuple(value)
    return (value, value)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """timm's ``trunc_normal_`` (weight initialisation): torch's own."""
    return torch.nn.init.trunc_normal_(tensor, mean, std, a, b)


def register_model(function):
    """timm's ``register_model`` without the registry: the benchmark builds models directly."""
    return function


class DropPath(torch.nn.Module):
    """timm's ``DropPath`` (stochastic depth per sample): the identity in eval mode."""

    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def install_stand_ins() -> list[str]:
    """Register the stand-ins for torchvision / timm where the real package is missing; return their names."""
    modules = {
        "torchvision": {}, "torchvision.transforms": {"Normalize": Normalize}, "torchvision.models": {},
        "timm": {}, "timm.models": {},
        "timm.models.layers": {"DropPath": DropPath, "to_2tuple": to_2tuple, "trunc_normal_": trunc_normal_},
        "timm.models.registry": {"register_model": register_model},
    }
    installed = []
    for package in ("torchvision", "timm"):
        if importlib.util.find_spec(package) is not None:
            continue
        for name, content in modules.items():
            if name.split(".")[0] != package:
                continue
            module = types.ModuleType(name)
            module.__path__ = []  # a package, so that its submodules import
            module.__dict__.update(content)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
        installed.append(package)
    return installed


def load_file_module(name: str, path: Path) -> types.ModuleType:
    """Import one official script under a name of our own (``test`` would be Python's own package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pin_extra_tensors(network, state: dict) -> None:
    """Load ``state`` strictly; set its keys that are no parameter or buffer (the ViTAE-S
    Performer features ``...attn.w``, plain tensors the official code draws at random) on their modules."""
    known = set(network.state_dict())
    extra = {name: state.pop(name) for name in list(state) if name not in known}
    network.load_state_dict(state, strict=True)
    for name, value in extra.items():
        owner_name, attribute = name.rsplit(".", 1)
        owner = network.get_submodule(owner_name)
        if not isinstance(getattr(owner, attribute, None), torch.Tensor):
            raise SystemExit(f"checkpoint key {name} matches no tensor of the official model")
        setattr(owner, attribute, value)
    unpinned = [name for name, module in network.named_modules()
                if hasattr(module, "prm_exp") and f"{name}.w" not in extra]
    if unpinned:
        raise SystemExit(f"random Performer features not pinned by the checkpoint: {', '.join(unpinned)}")


def official_matter(config: dict):
    """Build the official model and return ``predict(path) -> (H, W) float alpha`` as its sample script computes it."""
    from PIL import Image

    core = Path(config["official"])
    sys.path.insert(0, str(core))
    state = torch.load(config["weights"], map_location="cpu", weights_only=True)["state_dict"]
    if config["model"] == "resnet34":
        script = load_file_module("official_test", core / "test.py")
        import network.P3mNet as official_network
        from network.resnet_mp import BasicBlock, ResNet

        official_network.resnet34_mp = lambda: ResNet(BasicBlock, [3, 4, 6, 3])
        network = script.P3mNet()
        inference, limit = script.inference_img, script.SHORTER_PATH_LIMITATION
        args = argparse.Namespace(cuda=False, test_choice=config["method"].upper())
    else:
        script = load_file_module("official_infer", core / "infer.py")
        network = script.build_model("vitae", pretrained=False)
        inference, limit = script.inference_img_p3m, script.SHORTER_PATH_LIMITATION
        args = argparse.Namespace(arch="vitae", dataset="SAMPLES", test_choice=config["method"].upper())
    pin_extra_tensors(network, state)
    network.eval()

    def predict(path: str):
        image = np.array(Image.open(path))[:, :, :3]
        height, width = image.shape[:2]
        if min(height, width) > limit:
            if height >= width:
                size = (limit, int(limit * height / width))
            else:
                size = (int(limit * width / height), limit)
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        with torch.no_grad():
            alpha = inference(args, network, image)
        if alpha.shape != (height, width):
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        return alpha

    return predict


def published_trimap(alpha_path: str, margin: int, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 trimap from a published alpha: 128 within ``margin`` px of a
    fractional alpha, 255 where alpha >= 0.5, 0 elsewhere."""
    alpha = cv2.imread(alpha_path, cv2.IMREAD_GRAYSCALE)
    alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    fractional = ((alpha > 0) & (alpha < 255)).astype(np.uint8)
    band = cv2.dilate(fractional, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    return np.where(band > 0, 128, np.where(alpha >= 128, 255, 0)).astype(np.uint8)


def p3m_matter(config: dict):
    import p3m

    if config.get("trimap_alpha"):  # the global pass's trimap from a published alpha (see the module notes)
        from p3m.inference import pipeline

        height, width = cv2.imread(config["image"]).shape[:2]
        trimap = published_trimap(config["trimap_alpha"], config["trimap_margin"], height, width)
        pipeline.trimap_from_logits = lambda logits: cv2.resize(trimap, logits.shape[:0:-1],
                                                                interpolation=cv2.INTER_NEAREST)
    matter = p3m.Matter(model=config["model"], weights=config["weights"], method=config["method"], device="cpu")
    return lambda path: matter.predict(path).alpha


def child(config: dict) -> None:
    """Run one implementation in this process: a warm-up call, one timed call; print JSON, save the alpha."""
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    stand_ins = install_stand_ins() if config["official"] else []
    predict = official_matter(config) if config["official"] else p3m_matter(config)
    predict(config["image"])
    started, started_cpu = time.perf_counter(), time.process_time()
    alpha = predict(config["image"])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    np.save(config["alpha_path"], np.asarray(alpha, dtype=np.float64))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
                      "stand_ins": stand_ins}))


def run_child(config: dict) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    process = MeasuredPopen([sys.executable, __file__, "--child", json.dumps(config)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        lines = stderr.strip().splitlines() or [f"exit status {process.returncode}"]
        raise SystemExit(f"{'official' if config['official'] else 'p3m'} {config['model']} {config['method']} "
                         f"failed: {lines[-1]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "rss": process.peak_rss}


def compare(model: str, method: str, checkpoint: Path, image: Path, official_core: Path, repeat: int,
            threads: int | None, folder: Path, trimap_alpha: Path | None = None,
            margins: tuple[int, ...] = ()) -> dict[str, list[dict]]:
    """Alternate a fresh official process and fresh p3m processes for ``repeat`` rounds; their outcomes by side.
    Each side's last alpha is left in ``folder`` as MODEL-METHOD-SIDE.npy."""
    outcomes = {"official": [], "p3m": []}
    trimap_sides = {}
    if trimap_alpha is not None and method == "hybrid":
        trimap_sides = {f"p3m, published trimap +{margin} px": margin for margin in margins}
        outcomes.update({side: [] for side in trimap_sides})
    for round_number in range(repeat):
        for side in outcomes:
            config = {"model": model, "method": method, "weights": str(checkpoint), "image": str(image),
                      "threads": threads, "alpha_path": str(folder / f"{model}-{method}-{side}.npy"),
                      "official": str(official_core) if side == "official" else None,
                      "trimap_alpha": str(trimap_alpha) if side in trimap_sides else None,
                      "trimap_margin": trimap_sides.get(side)}
            outcome = run_child(config)
            outcomes[side].append(outcome)
            print(f"  round {round_number + 1}: {side} {model} {method} {outcome['seconds']:.2f} s "
                  f"{outcome['rss'] / 2**30:.2f} GB", file=sys.stderr, flush=True)
    return outcomes


def table_rows(model: str, method: str, outcomes: dict[str, list[dict]], folder: Path) -> list[list[str]]:
    """The official row and the p3m row: medians, largest peak RSS, ratios, alpha difference."""
    reference, ours = (np.load(folder / f"{model}-{method}-{side}.npy") for side in ("official", "p3m"))
    difference = np.abs(ours - reference)
    height, width = reference.shape
    rows, official = [], None
    for side, measured in outcomes.items():
        seconds = statistics.median(outcome["seconds"] for outcome in measured)
        cpu = statistics.median(outcome["cpu_seconds"] for outcome in measured)
        rss = max(outcome["rss"] for outcome in measured)
        row = [side, model, method.upper(), f"{height}x{width}", f"{seconds:.2f}", f"{cpu:.2f}",
               f"{rss / 2**30:.2f} GB"]
        if official is None:
            official = seconds, rss
            row += ["1.00", "1.00", "(reference)"]
        else:
            row += [f"**{official[0] / seconds:.2f}x**", f"{rss / official[1]:.2f}",
                    f"max {difference.max():.2e}, mean {difference.mean():.2e}" if side == "p3m"
                    else "(another trimap)"]
        rows.append(row)
    return rows


def make_checkpoint(model: str, folder: Path) -> Path:
    """The deterministic official-format checkpoint of ``model``, with any pinned random features."""
    recipe = load_file_module("make_checkpoint", FIXTURES / "make_checkpoint.py")
    path = folder / f"{model}.pth"
    recipe.main(str(MANIFESTS[model]), str(path))
    content = torch.load(path, weights_only=True)
    content["state_dict"].update(recipe.random_features(str(MANIFESTS[model])))
    torch.save(content, path)
    return path


def resized_copy(image: Path, height: int, width: int, folder: Path) -> Path:
    from PIL import Image

    from p3m.io import read_image, save_image

    path = folder / f"{image.stem}_{height}x{width}.png"
    resized = Image.fromarray(read_image(image)).resize((width, height), Image.Resampling.BICUBIC)
    save_image(path, np.asarray(resized))
    return path


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}")
    return int(height), int(width)


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in text.split(","):
        model, _, method = item.partition(":")
        if model not in MANIFESTS or method not in ("hybrid", "resize"):
            raise argparse.ArgumentTypeError(f"expected MODEL:METHOD with MODEL in {', '.join(MANIFESTS)} and "
                                             f"METHOD hybrid or resize, got {item!r}")
        runs.append((model, method))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--official-r34", type=Path, help="the core folder of github.com/JizhiziLi/P3M")
    parser.add_argument("--official-vitae", type=Path, help="the core folder of github.com/ViTAE-Transformer/P3M-Net")
    parser.add_argument("--image", type=Path, default=FIXTURES / "samples" / "p_015cd10e.jpg")
    parser.add_argument("--vitae-size", type=parse_size, default=(1344, 1080), help="HEIGHTxWIDTH for ViTAE-S")
    parser.add_argument("--runs", type=parse_runs, default=parse_runs("resnet34:hybrid,resnet34:resize,vitae-s:hybrid"),
                        help="MODEL:METHOD,... (models resnet34, vitae-s; methods hybrid, resize)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (a fresh process per implementation each)")
    parser.add_argument("--threads", type=int, help="torch threads in both (default: torch's default)")
    parser.add_argument("--trimap-alphas", type=Path,
                        help="folder of published alphas (MODEL/IMAGE-STEM.png): adds p3m HYBRID rows with their trimap")
    parser.add_argument("--trimap-margins", default="16,32", help="transition widening(s) in px for --trimap-alphas")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    official = {"resnet34": args.official_r34, "vitae-s": args.official_vitae}
    for model in {model for model, _ in args.runs}:
        if official[model] is None:
            parser.error(f"{model} needs --official-{'r34' if model == 'resnet34' else 'vitae'}")
        script = official[model] / ("test.py" if model == "resnet34" else "infer.py")
        if not script.is_file():
            parser.error(f"{script} not found: pass the repository's core folder")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    load_before = os.getloadavg()
    rows, threads, stand_ins = [], set(), set()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoints = {model: make_checkpoint(model, folder) for model in {model for model, _ in args.runs}}
        images = {"resnet34": args.image.resolve()}
        if "vitae-s" in checkpoints:
            images["vitae-s"] = resized_copy(args.image, *args.vitae_size, folder)
        margins = tuple(int(margin) for margin in args.trimap_margins.split(","))
        for model, method in args.runs:
            alpha = None if args.trimap_alphas is None else args.trimap_alphas / model / f"{args.image.stem}.png"
            if alpha is not None and not alpha.is_file():
                parser.error(f"{alpha} not found")
            outcomes = compare(model, method, checkpoints[model], images[model], official[model].resolve(),
                               args.repeat, args.threads, folder, alpha, margins)
            rows += table_rows(model, method, outcomes, folder)
            for outcome in outcomes["official"] + outcomes["p3m"]:
                threads.add(outcome["threads"])
                stand_ins.update(outcome["stand_ins"])
    load_after = os.getloadavg()
    print(f"fp32 CPU, torch threads {'/'.join(map(str, sorted(threads)))}, {args.repeat} round(s), "
          f"median of the timed calls; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"stand-ins for {', '.join(sorted(stand_ins)) or 'nothing'}")
    print()
    header = ["implementation", "model", "method", "image (HxW)", "median s", "CPU s", "peak RSS",
              "speed-up (official s / s)", "RSS / official", "alpha vs official (abs)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
