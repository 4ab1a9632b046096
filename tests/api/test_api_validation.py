"""Errors and limits: RFC 9457 problems with field paths; 400/413/415/422/409; 429."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from api_helpers import Tenant, external_orchestration, new_tenant, setup_workflow

from api.app import create_app
from api.config import Config
from api.server import BoundedSite
from api.services import SERVICES, Services

EXECUTE = "/v1/orchestrations/execute"


async def post_raw(
    client: TestClient, tenant: Tenant, data: bytes, ctype: str = "application/json"
) -> tuple[int, dict[str, Any], str]:
    resp = await client.post(EXECUTE, data=data, headers={**tenant.headers, "Content-Type": ctype})
    return resp.status, await resp.json(content_type=None), resp.content_type


async def test_malformed_json_is_400(client: TestClient, tenant_a: Tenant) -> None:
    status, body, ctype = await post_raw(client, tenant_a, b'{"workflow_id": ')
    assert status == 400
    assert ctype == "application/problem+json"
    assert body["type"].endswith("/malformed-json")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"executor": "external", "executor": "engine", "input": 1}', "$.executor"),
        (b'{"executor": "external", "input": {"a": 1, "b": 2, "a": 3}}', "$.input.a"),
        (b'{"executor": "external", "input": [0, {"k": 1, "k": 1}]}', "$.input[1].k"),
    ],
)
async def test_regression_a_body_repeating_a_member_name_is_400_naming_it(
    client: TestClient, tenant_a: Tenant, services: Services, data: bytes, field: str
) -> None:
    # It was taken with the last value kept; a proxy that keeps the first would have
    # approved one request and seen another run (RFC 8259 §4, RFC 7493 §2.3).
    before = services.log.size
    resp = await client.post(
        "/v1/orchestrations",
        data=data,
        headers={**tenant_a.headers, "Content-Type": "application/json"},
    )
    assert resp.status == 400, await resp.text()
    body = await resp.json(content_type=None)
    assert body["type"].endswith("/malformed-json")
    assert body["errors"][0]["field"] == field
    assert repr(field.rsplit(".", 1)[-1]) in body["detail"]
    assert services.log.size == before


async def test_the_same_name_in_different_objects_is_not_a_repeat(
    client: TestClient, tenant_a: Tenant
) -> None:
    data = b'{"executor": "external", "input": {"executor": 1, "x": {"executor": 2}}}'
    resp = await client.post(
        "/v1/orchestrations",
        data=data,
        headers={**tenant_a.headers, "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def test_wrong_content_type_is_415(client: TestClient, tenant_a: Tenant) -> None:
    status, body, _ = await post_raw(client, tenant_a, b"{}", ctype="text/plain")
    assert status == 415
    assert body["status"] == 415


async def test_too_large_is_413(client: TestClient, tenant_a: Tenant) -> None:
    big = b'{"agent_id": "' + b"x" * (128 * 1024) + b'"}'
    status, body, _ = await post_raw(client, tenant_a, big)
    assert status == 413
    assert body["type"].endswith("/payload-too-large")


async def test_unknown_field_is_422_naming_it(client: TestClient, tenant_a: Tenant) -> None:
    status, body, _ = await post_raw(
        client,
        tenant_a,
        b'{"workflow_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "agents": [], "colour": 1}',
    )
    assert status == 422
    assert body["errors"][0]["field"] == "$.colour"


async def test_missing_and_mistyped_fields_name_their_path(
    client: TestClient, tenant_a: Tenant
) -> None:
    status, body, _ = await post_raw(
        client, tenant_a, b'{"agent_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"}'
    )
    assert status == 422
    assert "input" in body["errors"][0]["message"]
    status, body, _ = await post_raw(
        client,
        tenant_a,
        b'{"agent_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "input": 1, "max_steps": "x"}',
    )
    assert status == 422
    assert body["errors"][0]["field"] == "$.max_steps"
    status, body, _ = await post_raw(client, tenant_a, b"[1, 2]")
    assert status == 422


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/orchestrations/execute",
            {"agent_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "input": 1},
        ),
        ("/v1/orchestrations", {"executor": "external", "input": 1}),
        ("/v1/agents", {"name": "a", "provider": {"kind": "scripted"}}),
    ],
)
async def test_regression_an_empty_model_name_is_422_naming_it(
    client: TestClient, tenant_a: Tenant, path: str, body: dict[str, Any]
) -> None:
    # "" was accepted as a model and sent to the provider as the one to use.
    resp = await client.post(path, json={**body, "model": ""}, headers=tenant_a.headers)
    assert resp.status == 422, await resp.text()
    assert (await resp.json(content_type=None))["errors"][0]["field"] == "$.model"


async def test_unknown_workflow_is_404_and_bad_agent_ref_422(
    client: TestClient, tenant_a: Tenant
) -> None:
    agent, _ = await setup_workflow(client, tenant_a)
    status, _, _ = await post_raw(
        client,
        tenant_a,
        b'{"workflow_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "agents": []}',
    )
    assert status == 404
    resp = await client.post(
        EXECUTE,
        json={"agent_id": agent, "input": "x", "timeout_seconds": 0},
        headers=tenant_a.headers,
    )
    assert resp.status == 422
    assert (await resp.json(content_type=None))["errors"][0]["field"] == "$.timeout_seconds"


async def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    resp = await client.get("/v1/nothing-here")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    resp = await client.delete("/v1/log/key")
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    from api_helpers import write_signing_key

    write_signing_key(tmp_path)
    config = Config(data_dir=tmp_path, rate_limit=1.0, rate_burst=2)
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-r")
        statuses = []
        for _ in range(4):
            resp = await client.get("/v1/orchestrations", headers=tenant.headers)
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.content_type == "application/problem+json"
        assert statuses[:2] == [200, 200]
        assert 429 in statuses[2:]
        # Another key has its own bucket.
        other = new_tenant(client.app[SERVICES].keys, "tenant-s")
        assert (await client.get("/v1/orchestrations", headers=other.headers)).status == 200


async def test_rate_limit_off_by_default(client: TestClient, tenant_a: Tenant) -> None:
    for _ in range(30):
        assert (await client.get("/v1/orchestrations", headers=tenant_a.headers)).status == 200


async def test_regression_a_unicode_digit_in_a_checkpoint_size_is_404_not_500(
    client: TestClient,
) -> None:
    # "²" passed str.isdigit() and then made int() raise.
    for size in ("%C2%B2", "%D9%A5", "%201", "1_0"):
        resp = await client.get(f"/v1/log/checkpoints/{size}")
        assert resp.status == 404, (size, resp.status)
        assert resp.content_type == "application/problem+json"


async def test_regression_a_unicode_digit_in_a_workflow_version_is_400_naming_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    _, wf = await setup_workflow(client, tenant_a)
    for version in ("%C2%B2", "%D9%A1", "%201", "1_0", "0"):
        resp = await client.get(f"/v1/workflows/{wf}?version={version}", headers=tenant_a.headers)
        assert resp.status == 400, (version, resp.status)
        assert (await resp.json(content_type=None))["errors"][0]["field"] == "version"
    resp = await client.get(f"/v1/workflows/{wf}?version=01", headers=tenant_a.headers)
    assert resp.status == 200


async def test_regression_a_unicode_digit_in_last_event_id_is_400_naming_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    oid = await external_orchestration(client, tenant_a)
    for last in ("\u00b2", "\u0665", "1_0", "+1"):
        resp = await client.get(
            f"/v1/orchestrations/{oid}/events/stream",
            headers={**tenant_a.headers, "Last-Event-ID": last},
        )
        assert resp.status == 400, (last, resp.status)
        assert resp.content_type == "application/problem+json"
        assert (await resp.json(content_type=None))["errors"][0]["field"] == "Last-Event-ID"


async def test_regression_integer_query_parameters_are_ascii_digits_only(
    client: TestClient, tenant_a: Tenant
) -> None:
    # int() took " 5", "5_0" and U+0665 (Arabic-Indic five) as numbers.
    for limit in ("%205", "5_0", "%D9%A5", "%C2%B2", "+5", "-5"):
        resp = await client.get(f"/v1/orchestrations?limit={limit}", headers=tenant_a.headers)
        assert resp.status == 400, (limit, resp.status)
        assert (await resp.json(content_type=None))["errors"][0]["field"] == "limit"
    for limit in ("5", "005"):
        resp = await client.get(f"/v1/orchestrations?limit={limit}", headers=tenant_a.headers)
        assert resp.status == 200, (limit, resp.status)
    resp = await client.get("/v1/orchestrations?limit=" + "9" * 5000, headers=tenant_a.headers)
    assert resp.status == 400
    assert "1..500" in (await resp.json(content_type=None))["detail"]


async def test_regression_invalid_utf8_inside_a_json_string_is_400_on_every_post_route(
    client: TestClient, tenant_a: Tenant
) -> None:
    # msgspec raises UnicodeDecodeError, not DecodeError, for bad UTF-8 in a string.
    oid = await external_orchestration(client, tenant_a)
    for route in (
        EXECUTE,
        "/v1/orchestrations",
        "/v1/agents",
        "/v1/workflows",
        f"/v1/orchestrations/{oid}/steps",
        f"/v1/orchestrations/{oid}/cancel",
    ):
        for data in (b'{"workflow_id": "\xff"}', b'{"\xc3": 1}', b'"\xed\xa0\x80"'):
            resp = await client.post(
                route, data=data, headers={**tenant_a.headers, "Content-Type": "application/json"}
            )
            assert resp.status == 400, (route, data, resp.status)
            assert resp.content_type == "application/problem+json"
            body = await resp.json(content_type=None)
            assert body["type"].endswith("/malformed-json")


async def test_regression_a_body_that_does_not_decompress_is_400_not_500(
    client: TestClient, tenant_a: Tenant
) -> None:
    agent = {"name": "a", "provider": {"kind": "scripted", "responses": []}}
    body = json.dumps(agent).encode()

    async def post(coding: str, data: bytes) -> ClientResponse:
        headers = {"Content-Type": "application/json", "Content-Encoding": coding}
        return await client.post("/v1/agents", data=data, headers={**tenant_a.headers, **headers})

    for coding in ("gzip", "deflate"):
        resp = await post(coding, b"definitely not compressed")
        assert resp.status == 400, (coding, resp.status)
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/malformed-body")
    for coding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        resp = await post(coding, data)
        assert resp.status == 201, (coding, resp.status, await resp.text())


async def test_regression_a_body_in_an_unknown_content_coding_is_415(
    client: TestClient, tenant_a: Tenant
) -> None:
    # aiohttp passed such a body on still coded, to be read as if it were plain.
    for coding in ("compress", "x-custom", "gzip, gzip"):
        resp = await client.post(
            "/v1/agents",
            data=b'{"name": "a", "provider": {"kind": "scripted", "responses": []}}',
            headers={
                **tenant_a.headers,
                "Content-Type": "application/json",
                "Content-Encoding": coding,
            },
        )
        assert resp.status == 415, (coding, resp.status)
        assert resp.content_type == "application/problem+json"
        assert resp.headers["Accept-Encoding"] == "gzip, deflate"
    resp = await client.post(
        "/v1/agents",
        data=b'{"name": "a", "provider": {"kind": "scripted", "responses": []}}',
        headers={
            **tenant_a.headers,
            "Content-Type": "application/json",
            "Content-Encoding": "identity",
        },
    )
    assert resp.status == 201


@contextlib.asynccontextmanager
async def _bounded_server(config: Config) -> AsyncIterator[tuple[int, Tenant]]:
    """The app behind the listening side ``serve`` uses; yields (port, a tenant)."""
    runner = web.AppRunner(create_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = BoundedSite(runner, "127.0.0.1", 0, header_timeout=10, max_connections=16)
        await site.start()
        tenant = new_tenant(runner.app[SERVICES].keys, "tenant-p")
        yield runner.addresses[0][1], tenant
    finally:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> tuple[bytes, bytes]:
    """Send ``raw`` on a fresh connection and read to EOF: (head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_regression_malformed_http_is_answered_in_problem_json_without_echoing_it(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp answered text/plain quoting the bytes back, and logged a traceback each.
    post = "POST /v1/agents HTTP/1.1\r\nHost: x\r\n"
    cases = [
        (b"GARBAGE-XYZZY\r\n\r\n", 400, "malformed-request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad XYZZY: y\r\n\r\n", 400, "malformed-request"),
        (f"{post}Content-Length: XYZZY\r\n\r\n".encode(), 400, "malformed-request"),
        (f"{post}Transfer-Encoding: chunked\r\n\r\nXYZZY\r\n".encode(), 400, "malformed-request"),
        (
            b"GET /healthz?XYZZY HTTP/1.1\r\nHost: x\r\nX-Big: " + b"z" * 100_000 + b"\r\n\r\n",
            431,
            "request-header-fields-too-large",
        ),
        (
            b"GET /XYZZY" + b"z" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431,
            "request-header-fields-too-large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-XYZZY: y\r\n" * 500 + b"\r\n",
            431,
            "request-header-fields-too-large",
        ),
    ]
    body = zlib.compress(b'{"name": "XYZZY"}')[:-8]  # cut short: fails at its end
    cut = f"{post}Content-Type: application/json\r\nContent-Encoding: deflate\r\n"
    cases.append(
        (f"{cut}Content-Length: {len(body)}\r\n\r\n".encode() + body, 400, "malformed-body")
    )
    async with _bounded_server(config) as (port, _):
        with caplog.at_level(logging.ERROR, logger="aiohttp"):
            for raw, status, slug in cases:
                head, body = await _exchange(port, raw)
                status_line = head.split(b"\r\n", 1)[0]
                assert status_line.split(b" ")[1] == str(status).encode(), (raw[:60], head)
                assert b"content-type: application/problem+json" in head.lower(), head
                assert b"XYZZY" not in head + body, (raw[:60], body)
                problem = json.loads(body)
                assert (problem["status"], problem["type"].rsplit("/", 1)[1]) == (status, slug)
        assert not caplog.records, [r.getMessage() for r in caplog.records]


async def test_regression_a_body_in_br_or_zstd_is_415_naming_accept_encoding(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp's parser refuses a coding it has no decoder for before any handler runs,
    # and that refusal was answered 400 as if the body were corrupt (RFC 9110 §15.5.16).
    async with _bounded_server(config) as (port, tenant):
        headers = "".join(f"{k}: {v}\r\n" for k, v in tenant.headers.items())
        for coding in ("br", "zstd", "BR"):
            raw = (
                f"POST /v1/agents HTTP/1.1\r\nHost: x\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Encoding: {coding}\r\n"
                f"Content-Length: 5\r\n\r\nXYZZY"
            ).encode()
            with caplog.at_level(logging.ERROR, logger="aiohttp"):
                head, body = await _exchange(port, raw)
            lines = head.decode("latin-1").split("\r\n")
            assert lines[0].split(" ")[1] == "415", (coding, head)
            fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            assert fields["content-type"] == "application/problem+json", head
            assert fields["accept-encoding"] == "gzip, deflate", head
            problem = json.loads(body)
            assert problem["status"] == 415
            assert problem["type"].endswith("/unsupported-media-type")
            assert "Content-Encoding" in problem["detail"]
            assert b"XYZZY" not in head + body
        assert not caplog.records, [r.getMessage() for r in caplog.records]


async def test_regression_a_body_that_does_not_decompress_logs_no_traceback(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp drains an unread body after the answer; that read failed too, and logged
    # an "Unhandled exception" traceback per request.
    async with _bounded_server(config) as (port, tenant):
        headers = "".join(f"{k}: {v}\r\n" for k, v in tenant.headers.items())
        data = b"definitely not gzip"
        raw = (
            f"POST /v1/agents HTTP/1.1\r\nHost: x\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        with caplog.at_level(logging.ERROR, logger="aiohttp"):
            head, body = await _exchange(port, raw)
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert json.loads(body)["type"].endswith("/malformed-body")
        assert not caplog.records, [r.getMessage() for r in caplog.records]


async def _field(client: TestClient, tenant: Tenant, path: str, body: object) -> str:
    resp = await client.post(path, json=body, headers=tenant.headers)
    assert resp.status == 422, (resp.status, await resp.text())
    return str((await resp.json())["errors"][0]["field"])


async def test_regression_workflow_definition_errors_are_placed_under_definition(
    client: TestClient, tenant_a: Tenant
) -> None:
    # The engine names a definition's fields relative to the definition: "$.steps".
    step = {"id": "a", "action": "llm", "prompt": "x"}
    for definition, field in (
        ({}, "$.definition.steps"),
        ({"steps": [step], "colour": 1}, "$.definition.colour"),
        ({"steps": [step], "output": "{{ steps.nope.output }}"}, "$.definition.output"),
        ({"steps": [{"id": "a", "prompt": "x"}]}, "$.definition.steps[a].action"),
        ({"steps": [{**step, "colour": 1}]}, "$.definition.steps[a].colour"),
        ({"steps": [{**step, "max_attempts": 0}]}, "$.definition.steps[a].max_attempts"),
        ({"steps": [1]}, "$.definition.steps[#0]"),
    ):
        got = await _field(
            client, tenant_a, "/v1/workflows", {"name": "w", "definition": definition}
        )
        assert got == field, (definition, got)
    # The request's own fields stay where they are.
    got = await _field(
        client, tenant_a, "/v1/workflows", {"name": " ", "definition": {"steps": [step]}}
    )
    assert got == "$.name"


async def test_regression_a_missing_required_field_is_named_in_its_path(
    client: TestClient, tenant_a: Tenant
) -> None:
    # msgspec reports "Object missing required field `x`" at the object, "$".
    assert await _field(client, tenant_a, EXECUTE, {"input": 1}) == "$.agent_id"
    assert await _field(client, tenant_a, "/v1/workflows", {"name": "w"}) == "$.definition"
    oid = await external_orchestration(client, tenant_a)
    steps = f"/v1/orchestrations/{oid}/steps"
    assert (
        await _field(client, tenant_a, steps, {"events": [{"type": "x"}]}) == "$.events[0].payload"
    )


async def test_regression_a_cursor_ending_in_a_newline_is_400(
    client: TestClient, tenant_a: Tenant
) -> None:
    """The cursor pattern ended in ``$``, which also matches before a final newline."""
    cursor = "3c90c3cc-0d44-4b50-8888-8dd25736052a%0A"
    resp = await client.get(f"/v1/orchestrations?cursor={cursor}", headers=tenant_a.headers)
    assert resp.status == 400, await resp.text()
    assert (await resp.json(content_type=None))["errors"][0]["field"] == "cursor"


async def test_regression_steps_errors_name_the_offending_event(
    client: TestClient, tenant_a: Tenant
) -> None:
    """The engine's refusal of a recorded event (a type that cannot be recorded, or a
    payload of the wrong shape) was reported at "$", not at the event it is about."""
    oid = await external_orchestration(client, tenant_a)
    steps = f"/v1/orchestrations/{oid}/steps"
    payload = {"step_id": "a", "agent_id": None, "action": "llm", "attempt": 1, "inputs": {}}
    ok = {"type": "step.started", "payload": payload}
    for event, field in (
        ({"type": "bogus.type", "payload": {}}, "$.events[0].type"),
        ({"type": "step.started", "payload": {"step_id": "a"}}, "$.events[0].payload.agent_id"),
        ({**ok, "payload": {**payload, "attempt": "1"}}, "$.events[0].payload.attempt"),
        ({**ok, "payload": {**payload, "colour": 1}}, "$.events[0].payload.colour"),
    ):
        assert await _field(client, tenant_a, steps, {"events": [event]}) == field
        assert await _field(client, tenant_a, steps, {"events": [ok, event]}) == field.replace(
            "[0]", "[1]"
        )


async def test_external_steps_record_kind_and_attempt_and_name_bad_ones(
    client: TestClient, tenant_a: Tenant
) -> None:
    """An external executor records ``step.failed``'s ``kind`` and ``decision.made``'s
    ``attempt`` (§7.2), or leaves them out (recorded as ``null``); a value of the wrong
    type is refused at its field, and nothing of the request is recorded."""
    oid = await external_orchestration(client, tenant_a)
    steps = f"/v1/orchestrations/{oid}/steps"
    started = {"step_id": "a", "agent_id": None, "action": "decision", "attempt": 1, "inputs": {}}
    decided = {
        "step_id": "a",
        "condition": {"exists": "input"},
        "values": {},
        "branch": "then",
        "skipped": [],
    }
    failed = {"step_id": "a", "attempt": 1, "error": "no", "retrying": True}
    for event, field in (
        ({"type": "step.failed", "payload": {**failed, "kind": "oops"}}, "kind"),
        ({"type": "step.failed", "payload": {**failed, "kind": 1}}, "kind"),
        ({"type": "decision.made", "payload": {**decided, "attempt": "1"}}, "attempt"),
    ):
        body = {"events": [{"type": "step.started", "payload": started}, event]}
        assert await _field(client, tenant_a, steps, body) == f"$.events[1].payload.{field}"
    events = [
        {"type": "step.started", "payload": started},
        {"type": "decision.made", "payload": decided},
        {"type": "step.failed", "payload": failed},
        {"type": "step.started", "payload": {**started, "attempt": 2}},
        {"type": "decision.made", "payload": {**decided, "attempt": 2}},
        {"type": "step.failed", "payload": {**failed, "attempt": 2, "kind": "step_failed"}},
    ]
    resp = await client.post(steps, json={"events": events}, headers=tenant_a.headers)
    assert resp.status == 201, await resp.text()
    listed = await client.get(f"/v1/orchestrations/{oid}/events", headers=tenant_a.headers)
    assert listed.status == 200
    recorded = [e["payload"] for e in (await listed.json())["events"][2:]]
    assert [(p.get("attempt"), p.get("kind", "-")) for p in recorded] == [
        (1, "-"),
        (None, "-"),
        (1, None),
        (2, "-"),
        (2, "-"),
        (2, "step_failed"),
    ]


async def test_regression_a_workflow_run_without_agents_names_the_agents_field(
    client: TestClient, tenant_a: Tenant
) -> None:
    """An llm step left without an agent was reported at
    $.definition.steps[classify].agent, a field the request does not have."""
    _, wf = await setup_workflow(client, tenant_a)
    for path, body in (
        (EXECUTE, {"workflow_id": wf, "agents": []}),
        ("/v1/orchestrations", {"executor": "engine", "workflow_id": wf}),
        ("/v1/orchestrations", {"executor": "external", "workflow_id": wf}),
    ):
        resp = await client.post(path, json=body, headers=tenant_a.headers)
        assert resp.status == 422, (path, body, await resp.text())
        problem = await resp.json()
        assert problem["errors"][0]["field"] == "$.agents", (path, body, problem)
        assert "classify" in problem["detail"]


async def test_regression_a_workflow_step_naming_an_unknown_agent_names_the_workflow_id(
    client: TestClient, tenant_a: Tenant
) -> None:
    """A stored workflow whose step names an agent nobody registered was reported at
    $.definition.steps[classify].agent, a field an execute request does not have: what
    the caller can change is which workflow it runs (or register that agent)."""
    definition = {"steps": [{"id": "classify", "action": "llm", "agent": "ghost", "prompt": "hi"}]}
    resp = await client.post(
        "/v1/workflows",
        json={"name": "haunted", "definition": definition},
        headers=tenant_a.headers,
    )
    if resp.status == 422:  # refused at registration: then no run can meet it
        assert (await resp.json())["errors"][0]["field"] == "$.definition.steps[classify].agent"
        pytest.skip("the registry refuses unknown agents at registration")
    assert resp.status == 201, await resp.text()
    wf = (await resp.json())["workflow_id"]
    for path, body in (
        (EXECUTE, {"workflow_id": wf, "agents": []}),
        ("/v1/orchestrations", {"executor": "engine", "workflow_id": wf}),
    ):
        resp = await client.post(path, json=body, headers=tenant_a.headers)
        assert resp.status == 422, (path, body, await resp.text())
        problem = await resp.json()
        assert problem["errors"][0]["field"] == "$.workflow_id", (path, problem)
        assert "classify" in problem["detail"]
        assert "ghost" in problem["detail"]


async def test_regression_an_unknown_step_field_is_not_described_as_field_empty(
    client: TestClient, tenant_a: Tenant
) -> None:
    """The problem's ``detail`` for an unknown field of a step read "step 'a', field '':"
    while ``errors[0].field`` named the field."""
    definition = {"steps": [{"id": "a", "action": "llm", "prompt": "hi", "bogus": 1}]}
    resp = await client.post(
        "/v1/workflows", json={"name": "w", "definition": definition}, headers=tenant_a.headers
    )
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "$.definition.steps[a].bogus"
    assert "field ''" not in problem["detail"]
    assert "bogus" in problem["detail"]


async def test_regression_nothing_is_recorded_after_the_end_within_one_steps_request(
    client: TestClient, tenant_a: Tenant
) -> None:
    """A later /steps request is refused once the orchestration has ended, but one
    request could hold its end and more events after it, and they were all recorded."""
    oid = await external_orchestration(client, tenant_a)
    steps = f"/v1/orchestrations/{oid}/steps"
    payload = {"step_id": "a", "agent_id": None, "action": "llm", "attempt": 1, "inputs": {}}
    events = [
        {"type": "orchestration.completed", "payload": {"results": {"ok": True}}},
        {"type": "step.started", "payload": payload},
    ]
    assert await _field(client, tenant_a, steps, {"events": events}) == "$.events[1].type"
    state = await client.get(f"/v1/orchestrations/{oid}", headers=tenant_a.headers)
    assert (await state.json())["status"] != "completed"  # nothing of the request was written
    ended = await client.post(steps, json={"events": events[:1]}, headers=tenant_a.headers)
    assert ended.status == 201, await ended.text()
