"""Fixtures for the orchestration engine tests: a real Log on a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import TENANT, FakeOpenAI, Harness, scripted

from ledger.orchestration import Engine


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "ledger.db")
    yield h
    await h.close()


@pytest.fixture
async def engine(harness: Harness) -> Engine:
    return await harness.open()


@pytest.fixture
def make_agent(engine: Engine) -> Callable[..., Awaitable[str]]:
    async def make(*responses: dict[str, Any], **kw: Any) -> str:
        name = kw.pop("name", "bot")
        provider = kw.pop("provider", None) or scripted(*responses)
        rec = await engine.register_agent(TENANT, name=name, provider=provider, **kw)
        return rec.agent_id

    return make


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()
