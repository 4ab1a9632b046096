"""What the engine needs of the ledger's log: :class:`EngineLog`, and the committed
leaves its listeners are handed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ledger.events import Event, EventCatalog, NewEvent
from ledger.receipt import Receipt
from ledger.store import EventStore

__all__ = ["EngineLog", "Recorded"]


class Recorded(Protocol):
    @property
    def event(self) -> Event: ...
    @property
    def leaf_index(self) -> int: ...
    @property
    def receipt_id(self) -> str: ...


class EngineLog(Protocol):
    """What the engine needs of :class:`ledger.log.Log`."""

    @property
    def catalog(self) -> EventCatalog: ...
    @property
    def size(self) -> int: ...
    async def append(
        self, tenant_id: str, stream_id: str, expected_seq: int, events: Sequence[NewEvent]
    ) -> list[Receipt]: ...
    async def submit(
        self, tenant_id: str, stream_id: str, expected_seq: int, events: Sequence[NewEvent]
    ) -> asyncio.Future[list[Receipt]]: ...
    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int = 0, limit: int | None = None
    ) -> Sequence[Any]: ...
    async def read_log(self, from_index: int = 0, limit: int = 1000) -> Sequence[Any]: ...
    def add_listener(self, listener: Callable[[Sequence[Any]], None]) -> None: ...
    def remove_listener(self, listener: Callable[[Sequence[Any]], None]) -> None: ...
    @property
    def store(self) -> EventStore: ...
    async def root_at(self, tree_size: int) -> bytes: ...
    def seal(self, *parts: bytes | bytearray) -> bytes: ...
