"""Load test for ``p3m serve``: N concurrent clients for a bounded time, then the figures.

Starts ``p3m serve`` on a free loopback port (or targets ``--url``), has each
client POST the same image to /v1/matte in a loop until ``--duration`` seconds
or ``--max-requests`` requests in all, and prints throughput, p50/p95 latency,
the count of each status and the server's peak RSS (VmHWM, when it started the
server). Clients that get 503 wait for its Retry-After (at most 5 s), as a
well-behaved client does.

    python scripts/load_test.py --weights r34.pth --method resize --clients 8 --duration 60
"""
from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "tests" / "fixtures" / "portraits" / "p_bac3c1ff.jpg"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "p3m", "serve", "--port", str(port), "--method", args.method,
               "--device", args.device, "--max-pending", str(args.max_pending)]
    if args.weights:
        command += ["--weights", str(args.weights)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"load_test: p3m serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    sys.exit("load_test: p3m serve was not ready within 180 s")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_clients(base: str, args, image: bytes) -> tuple[list[float], collections.Counter, float]:
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    issued = 0
    start = time.monotonic()
    deadline = start + args.duration
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def client():
        nonlocal issued
        with httpx.Client(base_url=base, timeout=args.duration + 60, headers=headers) as http:
            while time.monotonic() < deadline:
                with lock:
                    if issued >= args.max_requests:
                        return
                    issued += 1
                sent = time.monotonic()
                try:
                    response = http.post("/v1/matte", files={"image": ("photo.jpg", image, "image/jpeg")},
                                         data={"output": args.output})
                    status = str(response.status_code)
                except httpx.HTTPError as error:
                    response, status = None, type(error).__name__
                elapsed = time.monotonic() - sent
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed)
                if response is not None and response.status_code == 503:
                    wait = min(5.0, float(response.headers.get("retry-after", "1")))
                    time.sleep(max(0.0, min(wait, deadline - time.monotonic())))

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running server (default: start p3m serve here)")
    parser.add_argument("--weights", type=Path, help="checkpoint for the server this script starts")
    parser.add_argument("--method", default="resize", choices=("hybrid", "resize"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-pending", type=int, default=4)
    parser.add_argument("--api-key", help="bearer key of --url's server")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--output", default="alpha", choices=("alpha", "rgba", "composite", "trimap"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--max-requests", type=int, default=10_000, help="requests in all, at most")
    args = parser.parse_args()

    server, base = (None, args.url.rstrip("/")) if args.url else start_server(args)
    try:
        image = args.image.read_bytes()
        httpx.post(f"{base}/v1/matte", files={"image": ("warm.jpg", image, "image/jpeg")},
                   data={"output": args.output}, timeout=300,
                   headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {})
        latencies, statuses, elapsed = run_clients(base, args, image)
        rss = peak_rss_mb(server.pid) if server else None
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    done = statuses.get("200", 0)
    print(f"{args.clients} clients, {elapsed:.1f} s, image {args.image.name}, output {args.output}, "
          f"method {args.method}")
    print(f"requests: {sum(statuses.values())}, statuses: {dict(sorted(statuses.items()))}")
    print(f"throughput: {done / elapsed:.2f} images/s")
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"latency of 200s: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latencies):.2f} s")
    if rss is not None:
        print(f"server peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()
