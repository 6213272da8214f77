"""The Ray executor: the per-file step on Ray actors, each with its own model or detector.

Without an address an embedded Ray is started on this machine (loopback only,
no dashboard) and stopped at the end; with ``address`` (``HOST:PORT`` of a
running cluster, or ``auto``) the job joins that cluster. Actors get one GPU
each when the cluster has GPUs; otherwise the cluster's CPUs are shared out
among them (Ray sets each actor's thread count to its share).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Iterator, Optional, Sequence, TypeVar

from p3m.executors import ExecutorError

Item = TypeVar("Item")
Result = TypeVar("Result")
CPUS_PER_WORKER = 4


class _StepActor:
    """Holds one built step; a setup that fails is reported by :meth:`ready`, not raised."""

    def __init__(self, setup: Callable[[], Callable], working_dir: str):
        self.step, self.error = None, None
        try:
            os.chdir(working_dir)  # relative paths name the same files as on the driver
            self.step = setup()
        except Exception as error:  # reported to the driver as one line by ready()
            self.error = f"{type(error).__name__}: {str(error).strip()}".splitlines()[0]

    def ready(self) -> Optional[str]:
        return self.error

    def run(self, item):
        return self.step(item)


def default_workers(resources: dict) -> int:
    """One worker per GPU of the cluster, else one per :data:`CPUS_PER_WORKER` CPUs (at least one)."""
    gpus = int(resources.get("GPU", 0))
    return gpus if gpus else max(1, int(resources.get("CPU", 1)) // CPUS_PER_WORKER)


class RayExecutor:
    """Runs the step on ``workers`` Ray actors; use it as a context manager.

    Args:
        address: a running cluster (``HOST:PORT`` or ``auto``); None starts an
            embedded Ray on this machine for the duration of the job. When
            this process has already initialized Ray, the job runs there.
        workers: number of actors; None: :func:`default_workers`.
    """

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None):
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.address, self.workers = address, workers
        self._started_here = False

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ModuleNotFoundError:
            raise ExecutorError("the ray executor needs Ray: pip install 'p3m[ray]'") from None
        if not ray.is_initialized():
            try:
                if self.address is None:
                    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                             logging_level="warning")
                else:
                    ray.init(address=self.address, logging_level="warning")
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ExecutorError(f"cannot start or reach Ray at {self.address or 'this machine'}: "
                                    f"{str(error).strip().splitlines()[0] if str(error).strip() else error}") from None
            self._started_here = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False

    def _actor_options(self, workers: int, resources: dict) -> dict:
        if resources.get("GPU", 0) >= 1:
            return {"num_gpus": 1}
        import ray

        node_cpus = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=1)
        share = resources.get("CPU", 1) / workers
        return {"num_cpus": min(math.floor(share), node_cpus) if share >= 1 else round(share, 3)}

    def map(self, setup: Callable[[], Callable[[Item], Result]], items: Sequence[Item],
            desc: str = "", progress: bool = False) -> Iterator[Result]:
        """Yield ``step(item)`` for each item, in order; actors start only when there is work."""
        import ray
        from ray.util import ActorPool
        from tqdm import tqdm

        if not items:
            return
        resources = ray.cluster_resources()
        workers = min(self.workers or default_workers(resources), len(items))
        actor_class = ray.remote(**self._actor_options(workers, resources))(_StepActor)
        started = time.perf_counter()
        actors = [actor_class.remote(setup, os.getcwd()) for _ in range(workers)]
        try:
            errors = [error for error in ray.get([actor.ready.remote() for actor in actors]) if error]
            if errors:
                raise ExecutorError(f"a Ray worker could not start: {errors[0]}")
            ready = time.perf_counter()
            bar = tqdm(total=len(items), desc=desc or None, unit="image", dynamic_ncols=True,
                       disable=None if progress else True)
            with bar:
                for result in ActorPool(actors).map(lambda actor, item: actor.run.remote(item), items):
                    bar.update()
                    yield result
            seconds = max(time.perf_counter() - ready, 1e-6)
            print(f"ray: {len(items)} images in {seconds:.1f} s ({len(items) / seconds:.2f} images/s) "
                  f"on {workers} worker(s), {ready - started:.1f} s to start them", file=sys.stderr)
        except ray.exceptions.RayError as error:
            raise ExecutorError(f"a Ray worker failed: {str(error).strip().splitlines()[0]}") from None
        finally:
            if ray.is_initialized():  # a Ctrl-C may have shut Ray down before this generator closes
                for actor in actors:
                    ray.kill(actor)
