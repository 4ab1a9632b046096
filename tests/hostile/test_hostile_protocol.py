"""Protocol abuse against the real app on loopback: slow bodies, header floods, an SSE
client that never reads. Each answers a clear 4xx (or is cut off) and nothing is stored."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient

from api.routes import _common
from api.services import SERVICES

Ctx = tuple[TestClient, dict[str, str], dict[str, str]]


async def _raw(client: TestClient, request: bytes, *, then: bytes = b"", wait: float = 0) -> bytes:
    """Send ``request`` on a fresh connection, optionally more after ``wait``; read all."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        if wait:
            await asyncio.sleep(wait)
        if then:
            writer.write(then)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def _head(client: TestClient, headers: dict[str, str], path: str, length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {client.host}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_hostile_slowloris_body_is_408_after_the_read_timeout(
    hostile: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: aiohttp has no body read timeout, so a body that never finished held
    the request (and its handler) open forever. It is bounded now."""
    client, headers, ids = hostile
    monkeypatch.setattr(_common, "BODY_READ_TIMEOUT_SECONDS", 0.5)
    before = client.app[SERVICES].log.size
    body = b'{"workflow_id": "' + ids["workflow_id"].encode() + b'", "agents": []}'
    start = time.monotonic()
    answer = await _raw(
        client, _head(client, headers, "/v1/orchestrations/execute", len(body)) + body[:10]
    )
    assert time.monotonic() - start < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer
    assert client.app[SERVICES].log.size == before


async def test_hostile_header_flood_is_4xx(hostile: Ctx) -> None:
    client, headers, _ = hostile
    flood = {f"X-Flood-{i}": "y" * 100 for i in range(500)}
    answer = await _raw(client, _head(client, {**headers, **flood}, "/v1/orchestrations", 2))
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    huge = {"X-Huge": "z" * 100_000}
    answer = await _raw(client, _head(client, {**headers, **huge}, "/v1/orchestrations", 2))
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    ok = await client.get("/v1/orchestrations", headers=headers)
    assert ok.status == 200


async def test_hostile_sse_client_that_never_reads_does_not_block_writes(hostile: Ctx) -> None:
    client, headers, ids = hostile
    created = await client.post(
        "/v1/orchestrations",
        json={"executor": "external", "agent_id": ids["agent_id"], "input": {}},
        headers=headers,
    )
    assert created.status == 202, await created.text()
    oid = (await created.json())["orchestration_id"]
    # Subscribe and never read: the socket buffers fill, then the server's writes stall.
    _, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = [f"GET /v1/orchestrations/{oid}/events/stream HTTP/1.1", f"Host: {client.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        big = "x" * 60_000
        for i in range(100):
            start = time.monotonic()
            resp = await client.post(
                f"/v1/orchestrations/{oid}/steps",
                json={
                    "events": [
                        {
                            "type": "step.started",
                            "payload": {
                                "step_id": f"s{i}",
                                "agent_id": ids["agent_id"],
                                "action": "decision",
                                "attempt": 1,
                                "inputs": {"pad": big},
                            },
                        }
                    ]
                },
                headers=headers,
            )
            assert resp.status == 201, await resp.text()
            assert time.monotonic() - start < 5
    finally:
        writer.close()
        await writer.wait_closed()
    state = await client.get(f"/v1/orchestrations/{oid}/events", headers=headers)
    assert len((await state.json())["events"]) >= 101


async def test_hostile_body_in_two_parts_within_the_timeout_is_read_whole(
    hostile: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timed read is for bodies still arriving when the handler starts; a body that
    completes in time is read whole, not cut at what had arrived."""
    client, headers, ids = hostile
    monkeypatch.setattr(_common, "BODY_READ_TIMEOUT_SECONDS", 5.0)
    before = client.app[SERVICES].log.size
    body = b'{"workflow_id": "' + ids["workflow_id"].encode() + b'", "agents": []}'
    answer = await _raw(
        client,
        _head(client, headers, "/v1/orchestrations/execute", len(body)) + body[:10],
        then=body[10:],
        wait=0.3,
    )
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    assert client.app[SERVICES].log.size > before
