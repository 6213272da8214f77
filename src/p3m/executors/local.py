"""The local executor: the per-file step in this process, one file after the other."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class LocalExecutor:
    """Builds the step once and runs it on each item in turn, with a progress bar on a terminal.

    A step with an ``overlapped(items)`` method (``p3m matte``'s) runs through it,
    so its reading and writing overlap with its network.
    """

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def map(self, setup: Callable[[], Callable[[Item], Result]], items: Sequence[Item],
            desc: str = "", progress: bool = False) -> Iterator[Result]:
        from tqdm import tqdm

        step = setup()
        results = step.overlapped(items) if hasattr(step, "overlapped") else map(step, items)
        with tqdm(total=len(items), desc=desc or None, unit="image", dynamic_ncols=True,
                  disable=None if progress else True) as bar:  # None: TTY only
            for result in results:
                bar.update()
                yield result
