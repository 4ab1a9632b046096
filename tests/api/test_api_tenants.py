"""Tenant isolation: tenant A's credential never reaches tenant B's resources. Every
attempt is a 404 (no existence leak), identical to asking for an id that never existed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_helpers import (
    Tenant,
    external_orchestration,
    json_ok,
    new_tenant,
    read_sse,
    scripted,
    setup_workflow,
)

from api.app import create_app
from api.config import Config
from api.routes import orchestrations
from api.services import SERVICES, Services


@pytest.fixture
async def b_world(client: TestClient, tenant_b: Tenant) -> dict[str, str]:
    agent, wf = await setup_workflow(client, tenant_b, delay=30)
    resp = await client.post(
        "/v1/orchestrations/execute",
        json={"workflow_id": wf, "agents": [agent]},
        headers=tenant_b.headers,
    )
    state = await resp.json()
    events = await json_ok(
        client,
        "GET",
        f"/v1/orchestrations/{state['orchestration_id']}/events",
        200,
        headers=tenant_b.headers,
    )
    return {
        "agent": agent,
        "workflow": wf,
        "orch": state["orchestration_id"],
        "display": state["id"],
        "receipt": state["receipts"][0],
        "event": events["events"][0]["event_id"],
    }


def matrix(b: dict[str, str]) -> list[tuple[str, str, object]]:
    o = b["orch"]
    return [
        ("GET", f"/v1/orchestrations/{o}", None),
        ("GET", f"/v1/orchestrations/{b['display']}", None),
        ("GET", f"/v1/orchestrations/{o}/events", None),
        ("GET", f"/v1/orchestrations/{o}/events/stream", None),
        ("GET", f"/v1/orchestrations/{o}/bundle", None),
        ("POST", f"/v1/orchestrations/{o}/cancel", {"reason": "x"}),
        ("POST", f"/v1/orchestrations/{o}/steps", {"events": [{"type": "x", "payload": {}}]}),
        ("GET", f"/v1/receipts/{b['receipt']}", None),
        ("GET", f"/v1/receipts/{b['event']}", None),
        ("GET", f"/v1/agents/{b['agent']}", None),
        ("GET", f"/v1/workflows/{b['workflow']}", None),
        ("POST", "/v1/orchestrations/execute", {"workflow_id": b["workflow"], "agents": []}),
        ("POST", "/v1/orchestrations/execute", {"agent_id": b["agent"], "input": "x"}),
        (
            "POST",
            "/v1/orchestrations",
            {"executor": "external", "agent_id": b["agent"], "input": None},
        ),
    ]


async def test_tenant_a_cannot_touch_tenant_b(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, b_world: dict[str, str]
) -> None:
    for method, path, body in matrix(b_world):
        resp = await client.request(method, path, json=body, headers=tenant_a.headers)
        text = await resp.text()
        assert resp.status == 404, (method, path, resp.status, text)
        assert resp.content_type == "application/problem+json"
        # Still there for its owner (the 404 was isolation, not absence).
    owner = await client.get(f"/v1/orchestrations/{b_world['orch']}", headers=tenant_b.headers)
    assert owner.status == 200
    assert (await owner.json())["status"] == "running"


async def test_listings_are_per_tenant(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, b_world: dict[str, str]
) -> None:
    for path in ("/v1/orchestrations", "/v1/agents", "/v1/workflows"):
        mine = await json_ok(client, "GET", path, 200, headers=tenant_a.headers)
        assert mine["items"] == [], path
        theirs = await json_ok(client, "GET", path, 200, headers=tenant_b.headers)
        assert len(theirs["items"]) == 1, path
    filtered = await json_ok(
        client,
        "GET",
        f"/v1/orchestrations?agent_id={b_world['agent']}&workflow_id={b_world['workflow']}",
        200,
        headers=tenant_a.headers,
    )
    assert filtered["items"] == []


async def test_foreign_and_unknown_ids_answer_alike(
    client: TestClient, tenant_a: Tenant, b_world: dict[str, str]
) -> None:
    foreign = await client.get(f"/v1/orchestrations/{b_world['orch']}", headers=tenant_a.headers)
    unknown = await client.get(f"/v1/orchestrations/{uuid.uuid4()}", headers=tenant_a.headers)
    f_body, u_body = await foreign.json(content_type=None), await unknown.json(content_type=None)
    assert foreign.status == unknown.status == 404
    assert f_body["type"] == u_body["type"]
    assert f_body["title"] == u_body["title"]


async def test_a_key_for_b_header_is_403(
    client: TestClient, tenant_a: Tenant, b_world: dict[str, str]
) -> None:
    resp = await client.get(
        f"/v1/orchestrations/{b_world['orch']}",
        headers={"X-API-Key": tenant_a.api_key, "X-Tenant-ID": "tenant-b"},
    )
    assert resp.status == 403


async def test_receipt_cache_is_per_tenant(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant, b_world: dict[str, str]
) -> None:
    # B's own reads put its receipt in the server's cache, in every accepted spelling;
    # A asking for the same ids must still be refused.
    spellings = (b_world["receipt"], b_world["receipt"].upper(), b_world["event"])
    for rid in spellings:
        owner = await client.get(f"/v1/receipts/{rid}", headers=tenant_b.headers)
        assert owner.status == 200
        assert (await owner.json())["receipt_id"] == b_world["receipt"]
    for rid in spellings:
        other = await client.get(f"/v1/receipts/{rid}", headers=tenant_a.headers)
        assert other.status == 404, rid
        assert other.content_type == "application/problem+json"


async def test_regression_agent_and_workflow_ids_are_case_insensitive(
    client: TestClient, tenant_a: Tenant, b_world: dict[str, str]
) -> None:
    """Orchestration ids were canonicalised, agent and workflow ids were not: the same
    UUID in upper case answered 404. A foreign id stays 404 in every spelling."""
    agent, workflow = await setup_workflow(client, tenant_a)
    for path in (f"/v1/agents/{agent.upper()}", f"/v1/workflows/{workflow.upper()}"):
        resp = await client.get(path, headers=tenant_a.headers)
        assert resp.status == 200, await resp.text()
    for path in (f"/v1/agents/{b_world['agent'].upper()}", "/v1/agents/not-a-uuid"):
        assert (await client.get(path, headers=tenant_a.headers)).status == 404


async def test_a_tenant_at_its_request_limit_gets_429_and_other_tenants_do_not(
    config: Config, make_client: Callable[[Config], TestClient]
) -> None:
    # Held-open requests (streams, waits) cost the server next to nothing each, so one
    # tenant could hold every connection it allows and leave the others 503s.
    async with make_client(dataclasses.replace(config, max_requests_per_tenant=2)) as client:
        services = client.app[SERVICES]
        a, b = new_tenant(services.keys, "tenant-a"), new_tenant(services.keys, "tenant-b")
        oid = await external_orchestration(client, a)
        path = f"/v1/orchestrations/{oid}/events/stream"
        streams = [await client.get(path, headers=a.headers) for _ in range(2)]
        assert [s.status for s in streams] == [200, 200]
        assert services.tenant_requests.in_flight("tenant-a") == 2

        refused = await client.get(f"/v1/orchestrations/{oid}", headers=a.headers)
        assert refused.status == 429
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.headers["Retry-After"] == "1"
        assert "max_requests_per_tenant" in (await refused.json())["detail"]
        await json_ok(client, "GET", "/v1/agents", 200, headers=b.headers)

        # The run ends (cancelled in-process: tenant a has no request to spare), so do
        # its streams, and with them the tenant's hold.
        await services.engine.cancel("tenant-a", oid, reason="test")
        for s in streams:
            assert (await asyncio.wait_for(read_sse(s), 5))[-1]["event"] == (
                "orchestration.cancelled"
            )
        await json_ok(client, "GET", f"/v1/orchestrations/{oid}", 200, headers=a.headers)
        assert services.tenant_requests.in_flight("tenant-a") == 0


@contextlib.asynccontextmanager
async def _served_as_serve_does(config: Config) -> AsyncIterator[tuple[str, Services]]:
    """The app on a real listener run as ``serve`` runs it: a handler whose client left
    is not cancelled (aiohttp's test server cancels it)."""
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", runner.app[SERVICES]
    finally:
        await runner.cleanup()


async def _slot_freed(services: Services, tenant: str) -> None:
    async with asyncio.timeout(30):
        while services.tenant_requests.in_flight(tenant):
            await asyncio.sleep(0.05)


async def _external(session: aiohttp.ClientSession, tenant: Tenant) -> str:
    created = await session.post(
        "/v1/orchestrations", json={"executor": "external", "input": None}, headers=tenant.headers
    )
    assert created.status == 202, await created.text()
    oid: str = (await created.json())["orchestration_id"]
    return oid


async def test_regression_a_stream_its_client_dropped_frees_the_tenants_slot(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dropped stream lived on, holding its tenant's slot, until a heartbeat write
    # failed, every 15 s. With the heartbeat put out of reach, only noticing that the
    # client is gone frees it.
    monkeypatch.setattr(orchestrations, "_SSE_HEARTBEAT_SECONDS", 3600.0)
    async with _served_as_serve_does(config) as (url, services):
        a = new_tenant(services.keys, "tenant-a")
        async with aiohttp.ClientSession(url) as session:
            oid = await _external(session, a)
            stream = await session.get(f"/v1/orchestrations/{oid}/events/stream", headers=a.headers)
            assert stream.status == 200
            # The backlog read, the stream waits for what comes next when the client goes.
            assert len(await asyncio.wait_for(read_sse(stream, limit=2), 10)) == 2
            assert services.tenant_requests.in_flight("tenant-a") == 1
            stream.close()
            await _slot_freed(services, "tenant-a")
            assert services.hub.subscribers("tenant-a", oid) == 0


async def test_regression_a_wait_its_client_dropped_frees_the_tenants_slot(
    config: Config,
) -> None:
    # GET ?wait=60 on a run still going held its slot for the whole minute after its
    # client had gone.
    async with _served_as_serve_does(config) as (url, services):
        a = new_tenant(services.keys, "tenant-a")
        async with aiohttp.ClientSession(url) as session:
            agent = await session.post(
                "/v1/agents",
                json={"name": "slow", "provider": scripted(delay=30)},
                headers=a.headers,
            )
            assert agent.status == 201, await agent.text()
            started = await session.post(
                "/v1/orchestrations/execute",
                json={"agent_id": (await agent.json())["agent_id"], "input": "x"},
                headers=a.headers,
            )
            assert started.status == 202, await started.text()
            oid = (await started.json())["orchestration_id"]
            waiting = asyncio.create_task(
                session.get(f"/v1/orchestrations/{oid}?wait=60", headers=a.headers)
            )
            async with asyncio.timeout(10):
                while not services.tenant_requests.in_flight("tenant-a"):
                    await asyncio.sleep(0.05)
            waiting.cancel()  # the client gives up: its connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await _slot_freed(services, "tenant-a")


async def test_regression_shutdown_answers_a_wait_on_an_external_orchestration(
    config: Config,
) -> None:
    # Engine.close ended the waits on runs of this process, not those on an external
    # executor's: a held ?wait=60 kept the shutdown waiting until the wait ran out.
    runner = web.AppRunner(create_app(config), shutdown_timeout=60)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        services = runner.app[SERVICES]
        a = new_tenant(services.keys, "tenant-a")
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            oid = await _external(session, a)
            waiting = asyncio.create_task(
                session.get(f"/v1/orchestrations/{oid}?wait=60", headers=a.headers)
            )
            async with asyncio.timeout(10):
                while not services.tenant_requests.in_flight("tenant-a"):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the wait is held
            async with asyncio.timeout(20):
                await runner.cleanup()
                resp = await waiting
            assert resp.status == 200
            assert (await resp.json())["status"] == "running"
    finally:
        await runner.cleanup()
