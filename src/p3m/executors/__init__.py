"""Executors: one per-file step run over many files, in this process or across a Ray cluster.

An executor's ``map(setup, items, desc=..., progress=...)`` takes a *setup*, a
picklable callable without arguments that returns the per-file step
``step(item) -> result``, and yields the results in the order of ``items``.
The setup runs once per worker, so a model or a face detector is built once,
not once per file. Items are listed on the driver; workers read the inputs and
write the outputs themselves, so every path must be readable and writable
from every worker (a shared file system on a cluster).

``local`` runs the step here, one file after the other (the default; a step
that offers ``overlapped(items)``, as ``p3m matte``'s does, reads the next file
and writes the last one's outputs while its network works);
``ray`` runs it on Ray actors (the ``p3m[ray]`` extra).
"""
from __future__ import annotations

from typing import Optional

EXECUTORS = ("local", "ray")


class ExecutorError(Exception):
    """The cluster cannot be reached or a worker cannot start; one line, naming the cause."""


def create_executor(name: str, address: Optional[str] = None, workers: Optional[int] = None):
    """The executor called ``name`` (one of :data:`EXECUTORS`).

    ``address`` and ``workers`` are for ``ray``: see :class:`p3m.executors.ray.RayExecutor`.
    """
    if name == "local":
        from p3m.executors.local import LocalExecutor

        if address is not None or workers is not None:
            raise ValueError("--ray-address and --workers need --executor ray")
        return LocalExecutor()
    if name == "ray":
        from p3m.executors.ray import RayExecutor

        return RayExecutor(address=address, workers=workers)
    raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
