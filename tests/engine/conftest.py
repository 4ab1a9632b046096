"""Fixtures for the orchestration engine tests: a real Log on a real SQLite file."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.log import Log
from ledger.note import generate_signer
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine
from ledger.sqlite_store import SQLiteEventStore

TENANT = "tenant-a"

SCRIPTED = {"kind": "scripted", "responses": [{"content": "hello"}]}


async def _no_sleep(_: float) -> None:
    return None


class Harness:
    """A log and an engine over one SQLite file; ``reopen`` simulates a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signer = generate_signer("maip-ledger.test/log")
        self.log: Log | None = None
        self.engine: Engine | None = None

    async def open(self, **engine_options: Any) -> Engine:
        self.log = await Log.open(SQLiteEventStore(self.path), self.signer, ORCHESTRATION_EVENTS)
        engine_options.setdefault("sleep", _no_sleep)
        self.engine = Engine(self.log, **engine_options)
        await self.engine.start()
        return self.engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
        if self.log is not None:
            await self.log.close()
            self.log = None


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "ledger.db")
    yield h
    await h.close()


@pytest.fixture
async def engine(harness: Harness) -> Engine:
    return await harness.open()


@pytest.fixture
def make_agent(engine: Engine) -> Callable[..., Any]:
    async def make(responses: list[dict[str, Any]] | None = None, **kw: Any) -> str:
        provider = {"kind": "scripted", "responses": responses or [{"content": "hello"}]}
        rec = await engine.register_agent(
            TENANT, name=kw.pop("name", "bot"), provider=provider, **kw
        )
        return rec.agent_id

    return make


_ = os
