"""The local executor: the per-file step in this process, one file after the other."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class LocalExecutor:
    """Builds the step once and runs it on each item in turn, with a progress bar on a terminal."""

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def map(self, setup: Callable[[], Callable[[Item], Result]], items: Sequence[Item],
            desc: str = "", progress: bool = False) -> Iterator[Result]:
        from tqdm import tqdm

        step = setup()
        iterable: Iterable[Item] = tqdm(items, desc=desc or None, unit="image", dynamic_ncols=True,
                                        disable=None if progress else True)  # None: TTY only
        for item in iterable:
            yield step(item)
