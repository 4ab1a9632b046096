"""The progress bar ``maip-verify bundle`` shows on a terminal (stderr) while a large
bundle verifies: ``verify_bundle``'s ``progress(done, total)`` hook drawn with rich.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

__all__ = ["progress_bar"]

_MIN_EVENTS = 10_000


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    bar: Progress | None = None
    task: TaskID | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if total < _MIN_EVENTS:
            return
        if bar is None:
            bar = Progress(
                TextColumn("verifying"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,} events"),
                TimeRemainingColumn(),
                transient=True,
            )
            bar.start()
            task = bar.add_task("verify", total=total)
        assert task is not None
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()
