"""Hostile input against the real app on loopback: each case answers a clear 4xx
problem+json, never a 500, and stores nothing (the log size is unchanged)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.services import SERVICES

Ctx = tuple[TestClient, dict[str, str], dict[str, str]]
PROBLEM = "application/problem+json"


def _size(client: TestClient) -> int:
    size: int = client.app[SERVICES].log.size
    return size


async def _problem(client: TestClient, method: str, path: str, status: int, **kw: Any) -> Any:
    before = _size(client)
    resp = await client.request(method, path, **kw)
    body = await resp.text()
    assert resp.status == status, (resp.status, body[:300])
    assert resp.content_type == PROBLEM, body[:300]
    assert _size(client) == before
    return await resp.json(content_type=None)


async def test_hostile_deeply_nested_json_10000_levels_is_400(hostile: Ctx) -> None:
    """Regression: msgspec raises RecursionError (not DecodeError) here; it was a 500."""
    client, headers, ids = hostile
    deep = '{"a":' * 10_000 + "1" + "}" * 10_000
    body = f'{{"workflow_id": "{ids["workflow_id"]}", "agents": [], "parameters": {deep}}}'
    hdrs = {**headers, "Content-Type": "application/json"}
    await _problem(client, "POST", "/v1/orchestrations/execute", 400, data=body, headers=hdrs)
    await _problem(client, "POST", "/v1/orchestrations", 400, data="[" * 10_000, headers=hdrs)


async def test_hostile_oversized_body_is_413(hostile: Ctx) -> None:
    client, headers, ids = hostile
    big = {"workflow_id": ids["workflow_id"], "agents": [], "parameters": {"t": "x" * 100_000}}
    await _problem(client, "POST", "/v1/orchestrations/execute", 413, json=big, headers=headers)


async def test_hostile_huge_array_is_rejected(hostile: Ctx) -> None:
    client, headers, ids = hostile
    body = {"workflow_id": ids["workflow_id"], "agents": [ids["agent_id"]] * 2000}
    await _problem(client, "POST", "/v1/orchestrations/execute", 413, json=body, headers=headers)
    events = {"events": [{"type": "step.started", "payload": {}}] * 5000}
    await _problem(
        client,
        "POST",
        f"/v1/orchestrations/{ids['agent_id']}/steps",
        413,
        json=events,
        headers=headers,
    )


async def test_hostile_lone_surrogate_string_is_400(hostile: Ctx) -> None:
    client, headers, ids = hostile
    body = (
        f'{{"workflow_id": "{ids["workflow_id"]}", "agents": [], "parameters": {{"t": "\\ud800"}}}}'
    )
    hdrs = {**headers, "Content-Type": "application/json"}
    await _problem(client, "POST", "/v1/orchestrations/execute", 400, data=body, headers=hdrs)


async def test_hostile_nul_in_ids_is_404(hostile: Ctx) -> None:
    client, headers, ids = hostile
    body = {"workflow_id": ids["workflow_id"] + "\u0000", "agents": [ids["agent_id"]]}
    resp = await client.post("/v1/orchestrations/execute", json=body, headers=headers)
    assert resp.status in (404, 422), await resp.text()
    assert resp.content_type == PROBLEM
    await _problem(client, "GET", "/v1/orchestrations/%00", 404, headers=headers)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/orchestrations/..%2F..%2Fetc%2Fpasswd",
        "/v1/orchestrations/..%2F..%2Fetc%2Fpasswd/events",
        "/v1/receipts/..%2F..%2Fledger.db",
        "/v1/agents/..%2Fkeys.db",
        "/v1/log/checkpoints/..%2F1",
    ],
)
async def test_hostile_path_traversal_in_ids_is_404(hostile: Ctx, path: str) -> None:
    client, headers, _ = hostile
    await _problem(client, "GET", path, 404, headers=headers)


SQL = "' OR 1=1; DROP TABLE api_keys; --"


async def test_hostile_sql_metacharacters_in_parameters(hostile: Ctx) -> None:
    client, headers, _ = hostile
    h = headers
    await _problem(
        client, "GET", "/v1/orchestrations", 400, params={"status": SQL}, headers=headers
    )
    await _problem(
        client, "GET", "/v1/orchestrations", 400, params={"cursor": SQL}, headers=headers
    )
    await _problem(client, "GET", "/v1/orchestrations", 400, params={"limit": SQL}, headers=h)
    for name in ("agent_id", "workflow_id"):
        got = await _problem(
            client, "GET", "/v1/orchestrations", 400, params={name: SQL}, headers=h
        )
        assert got["errors"][0]["field"] == name
    await _problem(client, "GET", f"/v1/receipts/{SQL}", 404, headers=headers)
    await _problem(client, "GET", "/v1/log/proof/inclusion", 400, params={"index": SQL})
    await _problem(
        client, "GET", "/v1/orchestrations", 403, headers={**headers, "X-Tenant-ID": SQL}
    )
    await _problem(client, "GET", "/v1/orchestrations", 401, headers={**headers, "X-API-Key": SQL})
    body = {"workflow_id": SQL, "agents": [SQL]}
    resp = await client.post("/v1/orchestrations/execute", json=body, headers=headers)
    assert resp.status in (404, 422), await resp.text()
    # The key store survived: the same key still authenticates.
    ok = await client.get("/v1/orchestrations", headers=headers)
    assert ok.status == 200


class _FullDb:
    """A key-store connection whose writes fail as SQLite does on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)


async def test_hostile_regression_idempotency_store_full_is_503_not_500(hostile: Ctx) -> None:
    """Found by the soak: with the disk full, recording an Idempotency-Key raised
    sqlite3.OperationalError through the API as a 500. It is a 503 problem now."""
    client, headers, ids = hostile
    keys = client.app[SERVICES].keys
    real = keys._db
    keys._db = _FullDb(real)  # type: ignore[assignment]
    try:
        body = {"workflow_id": ids["workflow_id"], "agents": [ids["agent_id"]]}
        resp = await client.post(
            "/v1/orchestrations/execute", json=body, headers={**headers, "Idempotency-Key": "k1"}
        )
        assert resp.status == 503, await resp.text()
        assert resp.content_type == PROBLEM
        assert resp.headers["Retry-After"] == "5"
    finally:
        keys._db = real
