"""One thread that runs a store's blocking writes: foreground jobs strictly in the order
submitted, background jobs (upkeep: indexing, WAL restarts) in the gaps between them.

A leaner ``ThreadPoolExecutor(1)``: no work-item objects, no second future chained onto
an asyncio one. The thread needs the interpreter lock only to pick up a job and to
hand its result back, which matters because every other moment it holds the lock,
the event loop's thread waits.

Why two lanes: an upkeep job holds the thread for several milliseconds, and commits
queued behind a run of them waited for all of it, which is where the append latency's
tail came from. A waiting foreground job now goes first; a background job waits for a
gap, or for ``_MAX_PASSED`` foreground jobs to pass it, so upkeep cannot starve under
a load that never leaves a gap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WriterThread"]

# Foreground jobs that may run while a background job waits: under a load that never
# leaves a gap, upkeep still gets one turn in this many + 1.
_MAX_PASSED = 4

_T = TypeVar("_T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


def _resolve(future: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if future.done():  # its awaiter was cancelled; the write itself still happened
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class WriterThread:
    def __init__(self, name: str) -> None:
        # One token a job (None to stop); the jobs themselves wait in their lane.
        self._tokens: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._foreground: collections.deque[_Job] = collections.deque()
        self._background: collections.deque[_Job] = collections.deque()
        # A daemon: if the process exits without closing the store, an unfinished
        # transaction is abandoned exactly as in a crash, which SQLite's WAL survives.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[..., _T], *args: Any, background: bool = False
    ) -> asyncio.Future[_T]:
        """Run ``fn(*args)`` on the thread. Foreground jobs run in submission order;
        a ``background`` one runs after them, in its own submission order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        (self._background if background else self._foreground).append((fn, args, future, loop))
        self._tokens.put(True)
        return future

    def _run(self) -> None:
        passed = 0  # foreground jobs run since the oldest background job was queued
        while self._tokens.get() is not None:
            # A token is put after its job is queued, so a job is waiting in one lane.
            if self._background and (not self._foreground or passed >= _MAX_PASSED):
                fn, args, future, loop = self._background.popleft()
                passed = 0
            else:
                fn, args, future, loop = self._foreground.popleft()
                passed = passed + 1 if self._background else 0
            try:
                result = fn(*args)
            except BaseException as e:  # noqa: BLE001 — delivered to the awaiting task
                error: BaseException | None = e
                result = None
            else:
                error = None
            # RuntimeError: the loop closed without closing the store (a crashed or
            # abandoned owner). Nobody is left to await the outcome, and the write itself
            # is as durable as SQLite made it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, error, result)

    def shutdown(self) -> None:
        """Run every job already submitted, then stop the thread."""
        self._tokens.put(None)
        self._thread.join()
