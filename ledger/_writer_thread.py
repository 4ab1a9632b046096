"""One thread that runs a store's blocking writes, strictly in the order submitted.

A leaner ``ThreadPoolExecutor(1)``: no work-item objects, no second future chained onto
an asyncio one. The thread needs the interpreter lock only to pick up a job and to
hand its result back, which matters because every other moment it holds the lock,
the event loop's thread waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WriterThread"]

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
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # A daemon: if the process exits without closing the store, an unfinished
        # transaction is abandoned exactly as in a crash, which SQLite's WAL survives.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future, loop = job
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
        self._jobs.put(None)
        self._thread.join()
