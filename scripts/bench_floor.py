#!/usr/bin/env python3
"""Where one ``Matter.predict`` call spends its time, and the floor its dense arithmetic sets.

usage: python scripts/bench_floor.py --weights CKPT --image FILE [--model resnet34]
           [--method hybrid] [--official-seconds S [--target 3]]

Counts the floating-point operations of one call (``torch.utils.flop_counter``:
convolutions, attention, matrix products) and times the same call under the
profiler, after one warm-up call; for HYBRID also the work of both passes with
every branch, as the official code computes them. Per family of operations it
prints the work, the seconds spent in it and the rate it ran at; beside them
the rate of a large matrix product on this machine. The dense work at the
faster of those rates is a floor for the call: only making that work itself
faster goes below it. ``--official-seconds`` (the official code's time for the
same call, e.g. from ``bench_official.py``) adds what a ``--target`` speed-up
over it would require.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import p3m
from p3m.inference.pipeline import pass_size
from p3m.io import read_image

# family -> substrings of the operator names that belong to it (flop counter and profiler alike)
FAMILIES = {
    "convolution": ("convolution",),
    "attention": ("scaled_dot_product",),
    "matrix product": ("addmm", "aten::mm", "aten.mm", "bmm"),
}


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """The CPU attention kernel, which torch's counter does not know: the two products
    query x key^T and weights x value, (B, H, L, E) x (B, H, S, E) and (B, H, L, S) x (B, H, S, Ev)."""
    batch, heads, length, dim = query
    return 2 * batch * heads * length * key[2] * (dim + value[3])


def family(name: str) -> str | None:
    for label, parts in FAMILIES.items():
        if any(part in name for part in parts):
            return label
    return None


def gemm_rate(side: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of a (side x side) float32 matrix product with the threads torch uses."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    return 2 * side ** 3 * repeat / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--method", default="hybrid")
    parser.add_argument("--official-seconds", type=float, help="the official code's seconds for the same call")
    parser.add_argument("--target", type=float, default=3.0, help="the speed-up over the official code to weigh")
    args = parser.parse_args()

    matter = p3m.Matter(model=args.model, weights=args.weights, method=args.method, device="cpu")
    image = read_image(args.image)
    matter.predict(image)  # warm-up: one-off allocations, kernel selection

    with FlopCounterMode(display=False) as counter:
        matter.predict(image)
    work = defaultdict(float)
    for operator, flops in counter.get_flop_counts()["Global"].items():
        if family(str(operator)) is not None:
            work[family(str(operator))] += flops / 1e9

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        matter.predict(image)
        call_seconds = time.perf_counter() - started
    spent = defaultdict(float)
    for event in profiler.key_averages():
        label = family(event.key)
        if label is not None:
            spent[label] += event.self_cpu_time_total / 1e6
    gemm = gemm_rate()
    every_branch = None
    if args.method == "hybrid":  # the official code runs both passes with every branch
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            for ratio in (0.5, 1.0):
                matter.runtime.network(torch.zeros(1, 3, *pass_size(*image.shape[:2], ratio, matter.max_size)))
        every_branch = counter.get_total_flops() / 1e9

    height, width = image.shape[:2]
    print(f"{args.model} {args.method}, {height}x{width}, {torch.get_num_threads()} threads; one call "
          f"{call_seconds:.2f} s under the profiler")
    print("| family | GFLOP | seconds in it | GFLOP/s |")
    print("|---|---|---|---|")
    best = gemm
    for label in FAMILIES:
        if work[label]:
            rate = work[label] / spent[label] if spent[label] else float("nan")
            best = max(best, rate)
            print(f"| {label} | {work[label]:.0f} | {spent[label]:.2f} | {rate:.0f} |")
    dense = sum(work[label] for label in FAMILIES)
    in_dense = sum(spent.values())
    print(f"| everything else | | {call_seconds - in_dense:.2f} | |")
    if every_branch is not None:
        print(f"| (both passes with every branch, as the official code runs them) | {every_branch:.0f} | | |")
    print(f"\nmatrix product 2048x2048 on this machine: {gemm:.0f} GFLOP/s")
    floor = dense / best
    print(f"floor: {dense:.0f} GFLOP at {best:.0f} GFLOP/s = {floor:.2f} s (the call: {call_seconds:.2f} s)")
    if args.official_seconds:
        print(f"official {args.official_seconds:.2f} s: {args.target:g}x needs {args.official_seconds / args.target:.2f} s "
              f"({dense / (args.official_seconds / args.target):.0f} GFLOP/s with nothing else); "
              f"{args.official_seconds / floor:.2f}x at the floor")


if __name__ == "__main__":
    main()
