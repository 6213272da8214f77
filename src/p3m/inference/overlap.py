"""A per-item step in three stages, with the first and the last beside the middle one.

``p3m matte`` on a folder decodes the next image and writes the previous one's
outputs in background threads while the network mattes the current image, so a
batch of N images costs close to N network passes. The heavy parts of every
stage (Pillow's decoders, zlib, OpenCV, NumPy, torch) release the GIL.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Ran = TypeVar("Ran")
Result = TypeVar("Result")


def overlapped(items: Iterable[Item], load: Callable[[Item], Loaded], run: Callable[[Loaded], Ran],
               finish: Callable[[Ran], Result], ahead: int = 1, behind: int = 1) -> Iterator[Result]:
    """Yield ``finish(run(load(item)))`` for each item, in the order of ``items``.

    ``load`` runs in a background thread ``ahead`` (at least 1) items ahead of
    ``run``, ``run`` in the caller's thread, ``finish`` in a second background
    thread with at most ``behind`` items waiting for it or under way, so at
    most ``ahead + behind + 1`` items are held at once. The stages are expected
    to catch an item's own errors; any exception that escapes one (Ctrl-C
    included) ends the iteration: loads and finishes not yet started are
    dropped, and the ones under way run to their end first, so a write is
    never cut short.
    """
    loader = ThreadPoolExecutor(1, thread_name_prefix="p3m-load")
    finisher = ThreadPoolExecutor(1, thread_name_prefix="p3m-finish")
    remaining = iter(items)
    loads: deque[Future] = deque(loader.submit(load, item) for item in islice(remaining, ahead))
    finishes: deque[Future] = deque()
    try:
        while loads:
            loaded = loads.popleft().result()
            loads.extend(loader.submit(load, item) for item in islice(remaining, 1))
            finishes.append(finisher.submit(finish, run(loaded)))
            while finishes and (finishes[0].done() or len(finishes) > behind):
                yield finishes.popleft().result()
        while finishes:
            yield finishes.popleft().result()
    finally:
        loader.shutdown(cancel_futures=True)
        finisher.shutdown(cancel_futures=True)
