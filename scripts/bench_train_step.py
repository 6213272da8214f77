"""Time one P3M-Net training step (forward, losses, backward, Adam update).

Prints per-step wall times and their median, for a random batch at the
training size. With ``--data ROOT`` it also times the loading and augmentation
of one training sample (decode, online trimap, crop, flip, resize).

    python scripts/bench_train_step.py --size 512 --batch 2 --steps 5 --threads 2
    python scripts/bench_train_step.py --device cuda --precision bf16 --batch 8
    python scripts/bench_train_step.py --size 256 --batch 2 --steps 6 --threads 2 --compare-deterministic

``--compare-deterministic`` alternates default steps and steps under
``p3m train --deterministic``'s settings, in one process, and prints the ratio
of their medians.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from p3m.models import create_model
from p3m.train.losses import p3m_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--data", metavar="ROOT", help="also time sample loading from this dataset")
    parser.add_argument("--compare-deterministic", action="store_true",
                        help="alternate default and deterministic steps; print both medians and their ratio")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    n, s = args.batch, args.size
    image = torch.rand(n, 3, s, s, device=device)
    alpha = torch.rand(n, 1, s, s, device=device)
    trimap = torch.tensor([0.0, 128.0, 255.0], device=device)[torch.randint(0, 3, (n, 1, s, s), device=device)]
    fg, bg = torch.rand_like(image), torch.rand_like(image)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            output = model(image)
        loss = p3m_losses(output, alpha, trimap, image, fg, bg)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    print(f"model {args.model}, {args.size} px, batch {args.batch}, {args.precision}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    if args.compare_deterministic:
        from p3m.train.state import deterministic_mode

        def deterministic_step() -> float:
            with deterministic_mode(device):
                return step()

        for _ in range(args.warmup):
            step()
            deterministic_step()
        pairs = [(step(), deterministic_step()) for _ in range(args.steps)]
        default, deterministic = (statistics.median(column) for column in zip(*pairs))
        print(f"median default {default:.3f} s/step, deterministic {deterministic:.3f} s/step, "
              f"ratio {deterministic / default:.2f}")
        return
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    print("step times (s): " + ", ".join(f"{t:.2f}" for t in times))
    print(f"median {statistics.median(times):.2f} s/step, {args.batch / statistics.median(times):.2f} samples/s")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")

    if args.data:
        from p3m.train.dataset import P3MTrainDataset

        dataset = P3MTrainDataset(args.data, image_size=args.size)
        loads = []
        for index in range(min(len(dataset), 10)):
            start = time.perf_counter()
            dataset[(index, (0, 0, index))]
            loads.append(time.perf_counter() - start)
        print(f"sample loading + augmentation: median {statistics.median(loads) * 1000:.0f} ms "
              f"over {len(loads)} samples (one worker)")


if __name__ == "__main__":
    main()
