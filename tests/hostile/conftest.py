"""Fixtures for the hostile-input tests: the real app on a real loopback server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.config import Config
from api.demo import DEMO_DEFINITION, DEMO_PROVIDER
from api.services import SERVICES, Services
from ledger.keys import DEFAULT_ORIGIN, KEY_FILE
from ledger.note import generate_signer


@pytest.fixture
async def hostile(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    """(client, tenant headers, {"agent_id", "workflow_id"}) on a fresh ledger."""
    data = tmp_path / "data"
    data.mkdir()
    (data / KEY_FILE).write_text(generate_signer(DEFAULT_ORIGIN).skey + "\n")
    (data / KEY_FILE).chmod(0o600)
    config = Config(data_dir=data, max_body_bytes=64 * 1024, shutdown_grace_seconds=1.0)
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        services: Services = client.app[SERVICES]
        key = services.keys.create("tenant-h", ("admin",))
        headers = {"X-API-Key": key.api_key, "X-Tenant-ID": "tenant-h"}
        agent = await client.post(
            "/v1/agents", json={"name": "demo-agent", "provider": DEMO_PROVIDER}, headers=headers
        )
        assert agent.status == 201, await agent.text()
        wf = await client.post(
            "/v1/workflows", json={"name": "wf", "definition": DEMO_DEFINITION}, headers=headers
        )
        assert wf.status == 201, await wf.text()
        ids = {
            "agent_id": (await agent.json())["agent_id"],
            "workflow_id": (await wf.json())["workflow_id"],
        }
        yield client, headers, ids
