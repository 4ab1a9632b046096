"""Reads that concurrent callers share.

Each store read from the event loop is a round trip to the reader thread, and under
load the trip, not the query, is the cost: 64 clients fetching receipts, or 8 readers
building proofs, queued one trip each. Here the requests made while a read is in
flight wait for the next read, which serves all of them with one query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchedReads"]

K = TypeVar("K")
R = TypeVar("R")


class BatchedReads(Generic[K, R]):
    """``read(keys)`` answers for all the keys it is given; each caller of :meth:`get`
    receives the whole answer of the read that included its keys."""

    def __init__(self, read: Callable[[list[K]], Awaitable[R]], name: str) -> None:
        self._read = read
        self._name = name
        self._wanted: list[tuple[Sequence[K], asyncio.Future[R]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def get(self, keys: Sequence[K]) -> R:
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._wanted.append((keys, waiter))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name=self._name)
        return await waiter

    async def _run(self) -> None:
        while self._wanted:
            wanted, self._wanted = self._wanted, []
            try:
                answer = await self._read([key for keys, _ in wanted for key in keys])
            except Exception as e:  # noqa: BLE001 — every waiter gets the read's error
                for _, waiter in wanted:
                    if not waiter.done():
                        waiter.set_exception(e)
                continue
            for _, waiter in wanted:
                if not waiter.done():  # a cancelled caller stops waiting; the rest go on
                    waiter.set_result(answer)
