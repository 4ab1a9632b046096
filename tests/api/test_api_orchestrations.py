"""Orchestration routes end to end on a loopback server: both execute shapes,
state, listing, events (verified with the independent verifier), idempotency, cancel,
SSE resume, external steps and bundles."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import uuid
from contextlib import closing
from typing import Any

from aiohttp.test_utils import TestClient
from api_helpers import (
    THREE_STEP,
    Tenant,
    external_orchestration,
    json_ok,
    new_tenant,
    read_sse,
    scripted,
    setup_workflow,
)
from ulid import ULID

import verifier
from api.config import Config
from api.keys import KeyStore
from api.services import SERVICES


async def vkey(client: TestClient) -> str:
    return (await json_ok(client, "GET", "/v1/log/key", 200))["vkey"]  # type: ignore[no-any-return]


async def execute(client: TestClient, tenant: Tenant, body: dict[str, Any], **kw: Any) -> Any:
    headers = {**tenant.headers, **kw.pop("headers", {})}
    resp = await client.post("/v1/orchestrations/execute", json=body, headers=headers, **kw)
    assert resp.status in (200, 202), await resp.text()
    return resp, await resp.json()


async def test_execute_workflow_shape(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    body = {"workflow_id": wf, "agents": [agent], "parameters": {"text": "down"}}
    resp, state = await execute(client, tenant_a, body)
    assert resp.status == 202
    oid = state["orchestration_id"]
    assert resp.headers["Location"] == f"/v1/orchestrations/{oid}"
    assert state["id"] == "maip-orch:" + str(ULID.from_bytes(uuid.UUID(oid).bytes))
    assert state["workflow_id"] == wf
    assert state["agents"] == [agent]
    assert state["agent_id"] == agent
    assert state["parameters"] == {"text": "down"}
    assert state["status"] == "running"
    assert state["started_at"]
    assert state["created_at"]
    assert len(state["receipts"]) == 2  # created + started are durable before the answer
    assert {"steps", "results"} <= state.keys()
    done = await json_ok(
        client, "GET", f"/v1/orchestrations/{oid}?wait=10", 200, headers=tenant_a.headers
    )
    assert done["status"] == "completed"
    assert [s["step_id"] for s in done["steps"]] == ["classify", "extract", "route"]
    by_display = await json_ok(
        client, "GET", f"/v1/orchestrations/{state['id']}", 200, headers=tenant_a.headers
    )
    assert by_display == done


async def test_execute_agent_shape_with_prefer_wait(client: TestClient, tenant_a: Tenant) -> None:
    agent, _ = await setup_workflow(client, tenant_a)
    resp, state = await execute(
        client,
        tenant_a,
        {"agent_id": agent, "input": {"text": "hi"}, "model": "m", "max_steps": 3},
        headers={"Prefer": "wait=10"},
    )
    assert resp.status == 200
    assert resp.headers["Preference-Applied"] == "wait=10"
    assert state["status"] == "completed"
    assert state["agent_id"] == agent
    assert state["input"] == {"text": "hi"}
    assert state["model"] == "m"
    assert state["workflow_id"] is None


async def test_events_carry_exact_leaves_and_receipts_verify(
    client: TestClient, tenant_a: Tenant
) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(
        client, tenant_a, {"workflow_id": wf, "agents": [agent]}, headers={"Prefer": "wait=10"}
    )
    oid = state["orchestration_id"]
    events = (
        await json_ok(
            client, "GET", f"/v1/orchestrations/{oid}/events", 200, headers=tenant_a.headers
        )
    )["events"]
    assert [e["stream_seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "orchestration.created"
    assert events[-1]["type"] == "orchestration.completed"
    assert [e["receipt_id"] for e in events] == state["receipts"]
    key = await vkey(client)
    for e in events:
        assert {"event_id", "occurred_at", "payload", "leaf_index", "leaf"} <= e.keys()
        receipt = await json_ok(
            client, "GET", f"/v1/receipts/{e['receipt_id']}", 200, headers=tenant_a.headers
        )
        assert receipt["orchestration_id"] == oid
        assert receipt["event_id"] == e["event_id"]
        verified = verifier.verify_receipt(receipt, base64.b64decode(e["leaf"]), key)
        assert verified.receipt.leaf_index == e["leaf_index"]
    # A tampered leaf does not verify against its receipt.
    leaf = bytearray(base64.b64decode(events[0]["leaf"]))
    leaf[-2] ^= 1
    receipt = await json_ok(
        client, "GET", f"/v1/receipts/{events[0]['receipt_id']}", 200, headers=tenant_a.headers
    )
    try:
        verifier.verify_receipt(receipt, bytes(leaf), key)
    except verifier.VerificationError:
        pass
    else:
        raise AssertionError("a tampered leaf verified")


async def test_bundle_verifies_offline(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(
        client, tenant_a, {"workflow_id": wf, "agents": [agent]}, headers={"Prefer": "wait=10"}
    )
    resp = await client.get(
        f"/v1/orchestrations/{state['orchestration_id']}/bundle", headers=tenant_a.headers
    )
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    report = verifier.verify_bundle(await resp.read(), await vkey(client))
    assert report.status == "completed"
    assert not report.running
    assert report.event_count == len(state["receipts"])


async def test_regression_a_bundle_has_no_checkpoint_line_for_the_header_checkpoint(
    client: TestClient, tenant_a: Tenant
) -> None:
    """log-format §6: a receipt issued at the header's own size uses the header
    checkpoint, with no separate line. One was written, with an empty proof, and the
    verifier counted that checkpoint twice."""
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(
        client, tenant_a, {"workflow_id": wf, "agents": [agent]}, headers={"Prefer": "wait=10"}
    )
    resp = await client.get(
        f"/v1/orchestrations/{state['orchestration_id']}/bundle", headers=tenant_a.headers
    )
    body = await resp.read()
    lines = [json.loads(line) for line in body.splitlines()]
    header = lines[0]
    header_size = verifier.verify_checkpoint(header["checkpoint"], await vkey(client)).size
    sizes = [int(e["receipt"]["tree_size"]) for e in lines if e["kind"] == "event"]
    assert header_size in sizes  # the last batch's receipts are of the header's size
    checkpoint_lines = [e for e in lines if e["kind"] == "checkpoint"]
    assert all(e["checkpoint"] != header["checkpoint"] for e in checkpoint_lines)
    assert len(checkpoint_lines) == len(set(sizes) - {header_size})
    report = verifier.verify_bundle(body, await vkey(client))
    assert report.checkpoints_verified == 1 + len(checkpoint_lines)


async def test_idempotency_key(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    body = {"workflow_id": wf, "agents": [agent], "parameters": {"n": 1}}
    h = {"Idempotency-Key": "order-42"}
    _, s1 = await execute(client, tenant_a, body, headers=h)
    r2, s2 = await execute(client, tenant_a, body, headers=h)
    assert s1["orchestration_id"] == s2["orchestration_id"]
    assert r2.headers["Idempotent-Replayed"] == "true"
    conflict = await client.post(
        "/v1/orchestrations/execute",
        json={**body, "parameters": {"n": 2}},
        headers={**tenant_a.headers, **h},
    )
    assert conflict.status == 409
    assert conflict.content_type == "application/problem+json"
    # Concurrent first uses of one key still make one orchestration.
    h2 = {"Idempotency-Key": "order-43"}
    results = await asyncio.gather(*(execute(client, tenant_a, body, headers=h2) for _ in range(5)))
    assert len({s["orchestration_id"] for _, s in results}) == 1
    listed = await json_ok(client, "GET", "/v1/orchestrations", 200, headers=tenant_a.headers)
    assert len(listed["items"]) == 2


async def test_pagination_and_filters(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    other, _ = await setup_workflow(client, tenant_a, name="other")
    ids = []
    for i in range(7):
        a = agent if i % 2 == 0 else other
        _, s = await execute(
            client, tenant_a, {"workflow_id": wf, "agents": [a]}, headers={"Prefer": "wait=10"}
        )
        ids.append(s["orchestration_id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        q = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await json_ok(
            client, "GET", f"/v1/orchestrations?{q}", 200, headers=tenant_a.headers
        )
        seen += [o["orchestration_id"] for o in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, no repeats, none missing
    by_agent = await json_ok(
        client, "GET", f"/v1/orchestrations?agent_id={other}", 200, headers=tenant_a.headers
    )
    assert {o["orchestration_id"] for o in by_agent["items"]} == set(ids[1::2])
    completed = await json_ok(
        client, "GET", "/v1/orchestrations?status=completed", 200, headers=tenant_a.headers
    )
    assert len(completed["items"]) == 7
    running = await json_ok(
        client, "GET", "/v1/orchestrations?status=running", 200, headers=tenant_a.headers
    )
    assert running["items"] == []
    by_wf = await json_ok(
        client, "GET", f"/v1/orchestrations?workflow_id={wf}&limit=2", 200, headers=tenant_a.headers
    )
    assert len(by_wf["items"]) == 2
    assert by_wf["next_cursor"] is not None
    bad = await client.get("/v1/orchestrations?status=bogus", headers=tenant_a.headers)
    assert bad.status == 400


async def test_cancel(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a, delay=30)
    _, state = await execute(client, tenant_a, {"workflow_id": wf, "agents": [agent]})
    oid = state["orchestration_id"]
    cancelled = await json_ok(
        client,
        "POST",
        f"/v1/orchestrations/{oid}/cancel",
        200,
        json={"reason": "operator said so"},
        headers=tenant_a.headers,
    )
    assert cancelled["status"] == "cancelled"
    assert cancelled["reason"] == "operator said so"
    again = await client.post(f"/v1/orchestrations/{oid}/cancel", headers=tenant_a.headers)
    assert again.status == 409
    events = (
        await json_ok(
            client, "GET", f"/v1/orchestrations/{oid}/events", 200, headers=tenant_a.headers
        )
    )["events"]
    assert events[-1]["type"] == "orchestration.cancelled"
    assert events[-1]["payload"]["requested_by"].startswith("key:")


async def test_sse_stream_and_resume(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a, delay=0.2)
    _, state = await execute(client, tenant_a, {"workflow_id": wf, "agents": [agent]})
    path = f"/v1/orchestrations/{state['orchestration_id']}/events/stream"
    first = await client.get(path, headers=tenant_a.headers)
    assert first.status == 200
    assert first.content_type == "text/event-stream"
    head = await read_sse(first, limit=3)
    first.close()
    assert [m["id"] for m in head] == ["1", "2", "3"]
    assert head[0]["event"] == "orchestration.created"
    resumed = await client.get(path, headers={**tenant_a.headers, "Last-Event-ID": "3"})
    rest = await read_sse(resumed)
    ids = [int(m["id"]) for m in rest]
    assert ids == list(range(4, 4 + len(ids)))  # no gap, no repeat
    assert rest[-1]["event"] == "orchestration.completed"
    all_events = (
        await json_ok(
            client,
            "GET",
            f"/v1/orchestrations/{state['orchestration_id']}/events",
            200,
            headers=tenant_a.headers,
        )
    )["events"]
    assert len(all_events) == 3 + len(rest)


async def test_regression_a_wait_on_an_external_orchestration_lasts_until_it_ends(
    client: TestClient, tenant_a: Tenant
) -> None:
    # ?wait= waited only for runs of this process: on an external executor's
    # orchestration it answered at once, still running, whatever the wait asked.
    oid = await external_orchestration(client, tenant_a)
    waiting = asyncio.create_task(
        client.get(f"/v1/orchestrations/{oid}?wait=30", headers=tenant_a.headers)
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await json_ok(
        client,
        "POST",
        f"/v1/orchestrations/{oid}/steps",
        201,
        json={"events": [{"type": "orchestration.completed", "payload": {"results": None}}]},
        headers=tenant_a.headers,
    )
    resp = await asyncio.wait_for(waiting, 10)
    assert resp.status == 200
    assert (await resp.json())["status"] == "completed"
    # And a wait that runs out answers with the run as it stands.
    other = await external_orchestration(client, tenant_a)
    state = await json_ok(
        client, "GET", f"/v1/orchestrations/{other}?wait=1", 200, headers=tenant_a.headers
    )
    assert state["status"] == "running"


async def test_regression_prefer_wait_does_not_hold_an_external_executor_s_own_create(
    client: TestClient, tenant_a: Tenant
) -> None:
    # Once a wait lasted until an external orchestration ended, Prefer: wait on its
    # creation held the executor's own request, which must return before it can act.
    resp = await asyncio.wait_for(
        client.post(
            "/v1/orchestrations",
            json={"executor": "external", "input": None},
            headers={**tenant_a.headers, "Prefer": "wait=30"},
        ),
        10,
    )
    assert resp.status == 202, await resp.text()
    assert "Preference-Applied" not in resp.headers


async def test_external_executor_records_steps(client: TestClient, tenant_a: Tenant) -> None:
    agent, _ = await setup_workflow(client, tenant_a)
    resp = await client.post(
        "/v1/orchestrations",
        json={"executor": "external", "agent_id": agent, "input": {"q": "hi"}},
        headers=tenant_a.headers,
    )
    assert resp.status == 202, await resp.text()
    oid = (await resp.json())["orchestration_id"]
    step = [
        {
            "type": "step.started",
            "payload": {
                "step_id": "s1",
                "agent_id": agent,
                "action": "decision",
                "attempt": 1,
                "inputs": {},
            },
        },
        {"type": "step.completed", "payload": {"step_id": "s1", "attempt": 1, "output": "ok"}},
        {"type": "orchestration.completed", "payload": {"results": {"answer": 42}}},
    ]
    recorded = await json_ok(
        client,
        "POST",
        f"/v1/orchestrations/{oid}/steps",
        201,
        json={"events": step},
        headers=tenant_a.headers,
    )
    assert len(recorded["receipts"]) == 3
    events = (
        await json_ok(
            client, "GET", f"/v1/orchestrations/{oid}/events", 200, headers=tenant_a.headers
        )
    )["events"]
    key = await vkey(client)
    for r, e in zip(recorded["receipts"], events[2:], strict=True):
        verifier.verify_receipt(r, base64.b64decode(e["leaf"]), key)
    state = await json_ok(client, "GET", f"/v1/orchestrations/{oid}", 200, headers=tenant_a.headers)
    assert state["status"] == "completed"
    assert state["results"] == {"answer": 42}
    assert state["executor"] == "external"
    ended = await client.post(
        f"/v1/orchestrations/{oid}/steps", json={"events": step[:1]}, headers=tenant_a.headers
    )
    assert ended.status == 409
    bad = await client.post(
        f"/v1/orchestrations/{oid}/steps",
        json={"events": [{"type": "agent.registered", "payload": {}}]},
        headers=tenant_a.headers,
    )
    assert bad.status in (409, 422)


async def test_registry_routes(client: TestClient, tenant_a: Tenant) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    got = await json_ok(client, "GET", f"/v1/agents/{agent}", 200, headers=tenant_a.headers)
    assert got["name"] == "bot"
    assert got["provider"]["kind"] == "scripted"
    listed = await json_ok(client, "GET", "/v1/agents", 200, headers=tenant_a.headers)
    assert [a["agent_id"] for a in listed["items"]] == [agent]
    w = await json_ok(client, "GET", f"/v1/workflows/{wf}?version=1", 200, headers=tenant_a.headers)
    assert w["version"] == 1
    assert w["version_hash"].startswith("sha256:")
    bad = await client.post(
        "/v1/workflows",
        json={"name": "x", "definition": {"steps": [{"id": "a", "action": "fly"}]}},
        headers=tenant_a.headers,
    )
    assert bad.status == 422
    problem = await bad.json(content_type=None)
    assert problem["errors"]
    assert problem["errors"][0]["field"].startswith("$")
    bad_agent = await client.post(
        "/v1/agents",
        json={"name": "x", "provider": {"kind": "telepathy"}},
        headers=tenant_a.headers,
    )
    assert bad_agent.status == 422
    assert (await client.get("/v1/agents/nope", headers=tenant_a.headers)).status == 404
    ok = await client.post(
        "/v1/agents", json={"name": "y", "provider": scripted()}, headers=tenant_a.headers
    )
    assert ok.status == 201
    assert ok.headers["Location"].startswith("/v1/agents/")


async def test_regression_reserved_idempotency_key_never_starts_a_second_run(
    client: TestClient, tenant_a: Tenant, config: Config
) -> None:
    """The key used to be recorded only after the run started, so a crash or a refused
    write in between let a retry start a second orchestration. Now the key is reserved
    first; a reservation whose run never became durable is started under its own id."""
    from api.routes.orchestrations import _body_hash

    agent, wf = await setup_workflow(client, tenant_a)
    body = {"workflow_id": wf, "agents": [agent], "parameters": {"n": 7}}
    reserved = "0192f9c3-7d4e-7b1a-9c2e-3f4a5b6c7d8e"
    # The state a crash leaves behind: the key reserved, the orchestration never written.
    with closing(KeyStore(config.keys_path)) as keys:
        keys.remember(
            tenant_a.tenant_id, "execute", "retry-1", _body_hash("execute", body), reserved
        )
    h = {"Idempotency-Key": "retry-1"}
    r1, s1 = await execute(client, tenant_a, body, headers=h)
    assert s1["orchestration_id"] == reserved
    assert "Idempotent-Replayed" not in r1.headers
    r2, s2 = await execute(client, tenant_a, body, headers=h)
    assert s2["orchestration_id"] == reserved
    assert r2.headers["Idempotent-Replayed"] == "true"
    listed = await json_ok(client, "GET", "/v1/orchestrations", 200, headers=tenant_a.headers)
    assert [item["orchestration_id"] for item in listed["items"]] == [reserved]


async def test_a_receipt_kept_as_issued_reads_as_the_ledger_would_build_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    """Receipts are cached as the log issues them; the answer must be byte for byte the
    one built from the ledger (event row, stored proof, checkpoint) after the cache is
    gone, as after a restart."""
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(
        client, tenant_a, {"workflow_id": wf, "agents": [agent]}, headers={"Prefer": "wait=10"}
    )
    receipts = client.app[SERVICES].receipts
    assert all(isinstance(receipts[(tenant_a.tenant_id, rid)], tuple) for rid in state["receipts"])

    async def fetch_all() -> list[bytes]:
        out = []
        for rid in state["receipts"]:
            resp = await client.get(f"/v1/receipts/{rid}", headers=tenant_a.headers)
            assert resp.status == 200
            out.append(await resp.read())
        return out

    issued = await fetch_all()
    receipts.clear()
    assert await fetch_all() == issued


async def test_a_small_receipt_cache_stays_bounded_and_evicted_receipts_still_serve(
    config: Config, make_client: Any
) -> None:
    """``receipt_cache_entries`` bounds the receipts kept for GET; one that left the
    cache is rebuilt from the ledger, byte for byte the answer it had while cached."""
    small = dataclasses.replace(config, receipt_cache_entries=3)
    async with make_client(small) as client:
        services = client.app[SERVICES]
        tenant = new_tenant(services.keys, "tenant-c")
        agent, wf = await setup_workflow(client, tenant)
        _, state = await execute(
            client, tenant, {"workflow_id": wf, "agents": [agent]}, headers={"Prefer": "wait=10"}
        )
        ids = state["receipts"]
        assert len(ids) > 3
        assert len(services.receipts) == 3  # the newest three issued
        first = []
        for rid in ids:
            resp = await client.get(f"/v1/receipts/{rid}", headers=tenant.headers)
            assert resp.status == 200
            first.append(await resp.read())
            assert len(services.receipts) <= 3
        for rid, body in zip(ids, first, strict=True):  # all evicted by now but the last 3
            resp = await client.get(f"/v1/receipts/{rid}", headers=tenant.headers)
            assert await resp.read() == body


async def test_regression_a_refused_request_does_not_use_up_its_idempotency_key(
    client: TestClient, tenant_a: Tenant
) -> None:
    # The key was reserved before start() and kept when start() refused the request, so
    # the corrected retry with the same key was a 409 "used with a different body".
    agent, wf = await setup_workflow(client, tenant_a)
    h = {**tenant_a.headers, "Idempotency-Key": "fix-and-retry"}
    wrong = {"workflow_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "agents": [agent]}
    for _ in range(2):
        refused = await client.post("/v1/orchestrations/execute", json=wrong, headers=h)
        assert refused.status == 404
    no_agent = {"workflow_id": wf, "agents": []}  # its llm step has no agent to run on
    refused = await client.post("/v1/orchestrations/execute", json=no_agent, headers=h)
    assert refused.status == 422
    right = {"workflow_id": wf, "agents": [agent]}
    first = await client.post("/v1/orchestrations/execute", json=right, headers=h)
    assert first.status == 202, await first.text()
    again = await client.post("/v1/orchestrations/execute", json=right, headers=h)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["orchestration_id"] == (await first.json())["orchestration_id"]
    # Once a request started something, the key is bound to its body.
    other = await client.post("/v1/orchestrations/execute", json=wrong, headers=h)
    assert other.status == 409


async def test_regression_an_idempotency_key_lock_is_kept_while_a_request_waits_for_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    # The holder dropped the key's lock from the map on release if it looked unlocked,
    # which it does between the release and the waiter's wake-up: a third request then
    # made a new lock and ran beside the waiter, both starting the same reservation.
    from aiohttp.test_utils import make_mocked_request

    from api.routes.orchestrations import _idempotent
    from ledger.errors import StorageUnavailableError

    gates: list[asyncio.Event] = []
    inside = most = 0

    async def start(_: str | None) -> Any:
        nonlocal inside, most
        gate = asyncio.Event()
        gates.append(gate)
        inside += 1
        most = max(most, inside)
        try:
            await gate.wait()
        finally:
            inside -= 1
        # Storage refused the write: the reservation stays for a retry to start.
        raise StorageUnavailableError("disk full")

    def request() -> asyncio.Task[Any]:
        mocked = make_mocked_request(
            "POST", "/v1/orchestrations", headers={"Idempotency-Key": "k"}, app=client.app
        )
        return asyncio.ensure_future(
            _idempotent(mocked, tenant_a.tenant_id, "create", {"n": 1}, start)
        )

    async def until(condition: Any) -> None:
        # The idempotency store answers from its own thread: yielding alone is not
        # always long enough for it on a busy machine (bounded: 10 s).
        for _ in range(10_000):
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("never happened")

    a = request()
    await until(lambda: len(gates) == 1)
    b = request()  # waits for a's lock
    await asyncio.sleep(0)
    gates[0].set()  # a fails; b takes the lock and starts the reservation again
    await until(lambda: len(gates) == 2)
    c = request()  # must wait for b
    await until(a.done)
    for _ in range(20):
        await asyncio.sleep(0)
    for gate in gates:
        gate.set()
    await until(lambda: len(gates) == 3)
    gates[2].set()
    results = await asyncio.gather(a, b, c, return_exceptions=True)
    assert all(isinstance(r, StorageUnavailableError) for r in results), results
    assert most == 1, "two requests with one Idempotency-Key ran at once"
    assert client.app[SERVICES].idempotency_locks == {}


async def test_head_on_an_open_event_stream_answers_at_once(
    client: TestClient, tenant_a: Tenant
) -> None:
    """Regression: HEAD ran the SSE handler, which waits for the stream to end. HEAD
    sends no body, so the client was done while the handler and its subscription stayed
    until the orchestration ended or the connection closed, and a next request on that
    keep-alive connection waited behind it."""
    oid = await external_orchestration(client, tenant_a)  # runs until steps are recorded
    head = await asyncio.wait_for(
        client.head(f"/v1/orchestrations/{oid}/events/stream", headers=tenant_a.headers), 5
    )
    assert head.status == 200
    assert head.content_type == "text/event-stream"
    assert not client.app[SERVICES].hub._subs  # nothing stays subscribed


async def test_regression_sse_resumed_from_the_terminal_event_ends(
    client: TestClient, tenant_a: Tenant
) -> None:
    """An EventSource that got the terminal event reconnects with its id: there is no
    backlog and no live event to come, and the stream used to send keep-alives forever."""
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(
        client,
        tenant_a,
        {"workflow_id": wf, "agents": [agent]},
        headers={"Prefer": "wait=10"},
    )
    oid = state["orchestration_id"]
    assert state["status"] == "completed"
    events = (
        await json_ok(
            client, "GET", f"/v1/orchestrations/{oid}/events", 200, headers=tenant_a.headers
        )
    )["events"]
    path = f"/v1/orchestrations/{oid}/events/stream"
    for last in (events[-1]["stream_seq"], events[-1]["stream_seq"] + 40):
        resp = await client.get(path, headers={**tenant_a.headers, "Last-Event-ID": str(last)})
        assert resp.status == 200
        assert await asyncio.wait_for(read_sse(resp), 5) == []


async def test_regression_sse_resumed_from_past_the_head_ends_with_the_run(
    client: TestClient, tenant_a: Tenant
) -> None:
    """A Last-Event-ID past the stream's head: the terminal event, when it comes, is not
    sent (its seq is below the id), but the stream must still end with it."""
    oid = await external_orchestration(client, tenant_a)  # seq 1, 2
    resp = await client.get(
        f"/v1/orchestrations/{oid}/events/stream",
        headers={**tenant_a.headers, "Last-Event-ID": "50"},
    )
    assert resp.status == 200
    await json_ok(client, "POST", f"/v1/orchestrations/{oid}/cancel", 200, headers=tenant_a.headers)
    assert await asyncio.wait_for(read_sse(resp), 5) == []


async def test_regression_head_on_a_bundle_sends_no_body(
    client: TestClient, tenant_a: Tenant
) -> None:
    """HEAD on the bundle wrote the bundle after the headers (RFC 9110 §9.3.2: HEAD has
    none), so on a kept-alive connection the next response was read from its lines."""
    oid = await external_orchestration(client, tenant_a)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    with closing(writer):
        headers = "".join(f"{k}: {v}\r\n" for k, v in tenant_a.headers.items())
        writer.write(
            f"HEAD /v1/orchestrations/{oid}/bundle HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"application/x-ndjson" in head
    assert rest.startswith(b"HTTP/1.1 200"), rest[:120]


async def test_regression_list_filters_take_ids_in_any_case(
    client: TestClient, tenant_a: Tenant
) -> None:
    """The agent_id and workflow_id filters were compared as given: ids are stored in
    lower case, so an upper-case id (valid, and found by the id routes) matched nothing."""
    agent, wf = await setup_workflow(client, tenant_a)
    _, state = await execute(client, tenant_a, {"workflow_id": wf, "agents": [agent]})
    for name, value in (("agent_id", agent), ("workflow_id", wf), ("agent", agent)):
        for given in (value, value.upper()):
            page = await json_ok(
                client, "GET", f"/v1/orchestrations?{name}={given}", 200, headers=tenant_a.headers
            )
            assert [o["orchestration_id"] for o in page["items"]] == [state["orchestration_id"]]
    for name in ("agent_id", "workflow_id"):
        resp = await client.get(f"/v1/orchestrations?{name}=bot", headers=tenant_a.headers)
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["field"] == name


async def test_regression_execute_answers_other_methods_with_405_allow_post(
    client: TestClient, tenant_a: Tenant
) -> None:
    """GET and HEAD on /v1/orchestrations/execute fell through to /{id} and were a 404
    for an orchestration named "execute", while other methods' 405 listed GET in Allow."""
    for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
        resp = await client.request(method, "/v1/orchestrations/execute", headers=tenant_a.headers)
        assert resp.status == 405, (method, resp.status)
        assert resp.headers["Allow"] == "POST", method
    agent, _ = await setup_workflow(client, tenant_a)
    await execute(client, tenant_a, {"agent_id": agent, "input": "x"})  # POST still runs


async def test_regression_an_unchanged_workflow_registered_again_is_200_not_201(
    client: TestClient, tenant_a: Tenant
) -> None:
    """Registering a workflow's unchanged definition again writes nothing and returns the
    latest version; it was answered 201 Created, as if a version had been made."""
    _, wf = await setup_workflow(client, tenant_a)
    body = {"name": "bot-triage", "definition": THREE_STEP, "workflow_id": wf.upper()}
    before = await (await client.get("/v1/log/checkpoint")).text()
    again = await client.post("/v1/workflows", json=body, headers=tenant_a.headers)
    assert again.status == 200, await again.text()
    assert (await again.json())["version"] == 1
    assert await (await client.get("/v1/log/checkpoint")).text() == before  # nothing written
    changed = {**body, "name": "renamed"}
    new = await client.post("/v1/workflows", json=changed, headers=tenant_a.headers)
    assert new.status == 201
    assert (await new.json())["version"] == 2
    assert new.headers["Location"] == f"/v1/workflows/{wf}"


async def test_regression_a_stream_reads_a_batch_without_a_task_per_event(
    client: TestClient, tenant_a: Tenant
) -> None:
    # Each live event was read through while_connected: two new tasks (its own and
    # wait_for's) for an event already in the queue.
    agent, _ = await setup_workflow(client, tenant_a)
    created = await json_ok(
        client,
        "POST",
        "/v1/orchestrations",
        202,
        json={"executor": "external", "agent_id": agent, "input": None},
        headers=tenant_a.headers,
    )
    oid = created["orchestration_id"]
    stream = await client.get(f"/v1/orchestrations/{oid}/events/stream", headers=tenant_a.headers)
    backlog = await asyncio.wait_for(read_sse(stream, limit=2), 10)
    assert len(backlog) == 2
    batch: list[dict[str, Any]] = []
    for i in range(20):
        started = {"step_id": f"s{i}", "agent_id": agent, "action": "decision", "attempt": 1}
        batch.append({"type": "step.started", "payload": {**started, "inputs": {}}})
        done = {"step_id": f"s{i}", "attempt": 1, "output": "ok"}
        batch.append({"type": "step.completed", "payload": done})
    batch.append({"type": "orchestration.completed", "payload": {"results": None}})
    loop = asyncio.get_running_loop()
    created_tasks = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        nonlocal created_tasks
        created_tasks += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting)
    try:
        await json_ok(
            client,
            "POST",
            f"/v1/orchestrations/{oid}/steps",
            201,
            json={"events": batch},
            headers=tenant_a.headers,
        )
        live = await asyncio.wait_for(read_sse(stream), 10)
    finally:
        loop.set_task_factory(None)
    assert len(live) == len(batch)
    assert created_tasks < len(batch) // 2, created_tasks
