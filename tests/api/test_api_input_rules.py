"""Every bad input over HTTP, route by route: an RFC 9457 problem (never a 500) that
names the offending field, and nothing another tenant owns shows through.

The rules are asserted by :func:`problem` for every case; the cases are tables (one row
per input), run against the real app on a loopback server.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from api_helpers import Tenant, external_orchestration, scripted, setup_workflow, write_signing_key
from api_server import Server, admin_key_headers
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from api.services import SERVICES

PROBLEM = "application/problem+json"
JSON = "application/json"


def raw_url(client: TestClient, path_and_query: str) -> URL:
    """``path_and_query`` on the test server, sent as written (not re-quoted)."""
    return URL(f"http://{client.host}:{client.port}{path_and_query}", encoded=True)


async def problem(resp: ClientResponse, status: int, field: str | None = None) -> dict[str, Any]:
    """The problem ``resp`` carries: of ``status``, and naming ``field`` if given."""
    text = await resp.text()
    assert resp.status == status, (resp.method, str(resp.url), resp.status, text[:300])
    assert resp.content_type == PROBLEM, (str(resp.url), resp.content_type, text[:300])
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    if field is not None:
        assert body.get("errors"), (str(resp.url), body)
        assert body["errors"][0]["field"] == field, (str(resp.url), body)
    return body


async def test_regression_a_proof_the_log_cannot_give_names_the_parameter(
    client: TestClient, tenant_a: Tenant
) -> None:
    """A proof out of the log's range was a 422 with no ``errors``: the caller could not
    tell which of the two numbers to change."""
    await external_orchestration(client, tenant_a)  # a few leaves in the log
    for query, field in (
        ("index=5&tree_size=1", "index"),
        ("index=0&tree_size=99999", "tree_size"),
        ("index=99999&tree_size=99999", "tree_size"),
        (f"index=0&tree_size={2**62}", "tree_size"),
    ):
        resp = await client.get(f"/v1/log/proof/inclusion?{query}")
        await problem(resp, 422, field)
    for query, field in (
        ("first=5&second=1", "first"),
        ("first=0&second=99999", "second"),
        ("first=1&second=99999", "second"),
        ("first=99999&second=99999", "second"),
    ):
        resp = await client.get(f"/v1/log/proof/consistency?{query}")
        await problem(resp, 422, field)


async def test_regression_a_bad_provider_config_names_the_field_inside_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    """Every error in an agent's ``provider`` was reported at ``$.provider``, with the
    field inside it only in the message, relative to the provider ("at `$.kind`")."""
    scripted = {"kind": "scripted", "responses": [{"content": "x"}]}
    for provider, field in (
        ({}, "$.provider.kind"),
        ({"kind": "nope"}, "$.provider.kind"),
        ({"kind": "openai"}, "$.provider.base_url"),
        ({"kind": "openai", "base_url": 5}, "$.provider.base_url"),
        ({"kind": "openai", "base_url": "https://x.example", "colour": 1}, "$.provider.colour"),
        ({**scripted, "responses": [{"content": 5}]}, "$.provider.responses[0].content"),
        (
            {**scripted, "responses": [{"content": "x", "bogus": 1}]},
            "$.provider.responses[0].bogus",
        ),
    ):
        resp = await client.post(
            "/v1/agents", json={"name": "a", "provider": provider}, headers=tenant_a.headers
        )
        body = await problem(resp, 422, field)
        assert "$." not in body["errors"][0]["message"], body


def _aliases(uuid_text: str) -> list[str]:
    """Other spellings of ``uuid_text`` that Python's ``uuid.UUID`` takes for it, each
    as it goes in a URL."""
    digits = uuid_text.replace("-", "")
    arabic = uuid_text.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    return [
        quote(arabic),  # int(..., 16) takes any Unicode decimal digit
        quote("+" + digits[1:]) if digits[0] == "0" else quote("+" + digits[:-1]),
        quote("0_" + digits[2:]) if digits[:2] == "00" else quote(digits[:1] + "_" + digits[2:]),
        quote(" " + digits[1:]) if digits[0] == "0" else quote(digits + " "),
        digits,
        "urn:uuid:" + uuid_text,
        quote("{" + uuid_text + "}"),
    ]


async def test_regression_an_id_is_a_hyphenated_ascii_uuid_not_any_spelling_int_takes(
    client: TestClient, tenant_a: Tenant
) -> None:
    """Ids in paths and filters were read with ``uuid.UUID``, which drops hyphens, braces
    and "urn:uuid:", and reads the digits with ``int(..., 16)``: Arabic-Indic digits, a
    sign, "_" and spaces named the same orchestration, agent, workflow or receipt."""
    agent, workflow = await setup_workflow(client, tenant_a)
    oid = await external_orchestration(client, tenant_a)
    state = await client.get(f"/v1/orchestrations/{oid}", headers=tenant_a.headers)
    receipt = (await state.json())["receipts"][0]
    for template, real in (
        ("/v1/orchestrations/{}", oid),
        ("/v1/orchestrations/{}/events", oid),
        ("/v1/agents/{}", agent),
        ("/v1/workflows/{}", workflow),
        ("/v1/receipts/{}", receipt),
    ):
        for spelling in (real, real.upper()):
            resp = await client.get(template.format(spelling), headers=tenant_a.headers)
            assert resp.status == 200, (template, spelling, await resp.text())
        for alias in _aliases(real):
            resp = await client.session.get(
                raw_url(client, template.format(alias)), headers=tenant_a.headers
            )
            await problem(resp, 404)
    for name, real in (("agent_id", agent), ("workflow_id", workflow)):
        for alias in _aliases(real):
            url = raw_url(client, f"/v1/orchestrations?{name}={alias}")
            resp = await client.session.get(url, headers=tenant_a.headers)
            await problem(resp, 400, name)


async def test_regression_a_query_parameter_given_twice_is_400_naming_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    """The first of two values was used and the other ignored: a proxy or a check in
    front that reads the last one would see another request than the one served."""
    _, workflow = await setup_workflow(client, tenant_a)
    oid = await external_orchestration(client, tenant_a)
    other = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
    for path, name in (
        ("/v1/orchestrations?limit=1&limit=2", "limit"),
        ("/v1/orchestrations?status=running&status=failed", "status"),
        (f"/v1/orchestrations?cursor={other}&cursor={other}", "cursor"),
        (f"/v1/orchestrations?agent_id={other}&agent_id={other}", "agent_id"),
        (f"/v1/orchestrations?workflow_id={workflow}&workflow_id={other}", "workflow_id"),
        (f"/v1/orchestrations/{oid}?wait=0&wait=1", "wait"),
        (
            f"/v1/orchestrations/{oid}/events/stream?last_event_id=9&last_event_id=0",
            "last_event_id",
        ),
        (f"/v1/workflows/{workflow}?version=1&version=2", "version"),
        ("/v1/log/proof/inclusion?index=0&tree_size=1&tree_size=x", "tree_size"),
        ("/v1/log/proof/consistency?first=0&first=1&second=1", "first"),
    ):
        resp = await client.get(path, headers=tenant_a.headers)
        await problem(resp, 400, name)


async def test_regression_a_header_given_twice_is_refused_not_read_as_its_first(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    """With two X-Tenant-ID (or Idempotency-Key, Last-Event-ID, X-API-Key) headers the
    first was used and the other ignored, as a gateway that adds its own would not expect."""
    oid = await external_orchestration(client, tenant_a)
    key, tenant = ("X-API-Key", tenant_a.api_key), ("X-Tenant-ID", tenant_a.tenant_id)
    body = {"executor": "external", "agent_id": None}
    for method, path, headers, status, field in (
        ("GET", "/v1/orchestrations", [key, tenant, ("X-Tenant-ID", "tenant-b")], 400, None),
        ("GET", "/v1/orchestrations", [key, ("X-API-Key", tenant_b.api_key), tenant], 401, None),
        ("GET", "/v1/orchestrations", [key, ("X-API-Key", "mlk_x"), tenant], 401, None),
        (
            "GET",
            "/v1/orchestrations",
            [("Authorization", "Bearer x"), ("Authorization", "Bearer y"), tenant],
            401,
            None,
        ),
        (
            "POST",
            "/v1/orchestrations",
            [key, tenant, ("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")],
            400,
            "Idempotency-Key",
        ),
        (
            "GET",
            f"/v1/orchestrations/{oid}/events/stream",
            [key, tenant, ("Last-Event-ID", "0"), ("Last-Event-ID", "99")],
            400,
            "Last-Event-ID",
        ),
    ):
        resp = await client.request(method, path, json=body, headers=CIMultiDict(headers))
        got = await problem(resp, status, field)
        if status == 400 and field is None:
            assert got["errors"][0]["field"] == "X-Tenant-ID"


async def test_regression_a_bad_last_event_id_query_parameter_is_named_as_given(
    client: TestClient, tenant_a: Tenant
) -> None:
    """A stream resumed with ``?last_event_id=x`` was told its Last-Event-ID header (which
    it did not send) was wrong."""
    oid = await external_orchestration(client, tenant_a)
    stream = f"/v1/orchestrations/{oid}/events/stream"
    resp = await client.get(f"{stream}?last_event_id=x", headers=tenant_a.headers)
    await problem(resp, 400, "last_event_id")
    resp = await client.get(stream, headers={**tenant_a.headers, "Last-Event-ID": "x"})
    await problem(resp, 400, "Last-Event-ID")


# -- the tables: every route in the spec, with hostile input in each place -------------

#: Values no field of any request body takes as they are.
_WRONG = [None, True, -1, 1.5, 10**30, "", "x" * 300, "\ud800", [], {}, [None], {"a": {}}]
#: Path ids that name nothing (or are not ids at all).
_BAD_IDS = [
    "x",
    "%00",
    "%FF",
    "%ED%A0%80",
    "a" * 2000,
    "..%2F..%2Fkeys.db",
    "maip-orch:" + "Z" * 26,
    "maip-orch:8" + "0" * 25,  # one bit past 128
    "maip-orch:",
    "-1",
    "99999999999999999999999",
]
#: Query values no integer, UUID or enum parameter takes.
_BAD_QUERY = ["", "-1", "1e3", "0x10", "%FF", "%00", "%EF%BC%95", "x" * 3000, "1.0"]


def _cases(ids: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each POST route with a body it accepts: route → (path, body)."""
    oid, agent, workflow = ids["orch"], ids["agent"], ids["workflow"]
    step = {"step_id": "a", "agent_id": None, "action": "llm", "attempt": 1, "inputs": {}}
    return {
        "execute-workflow": (
            "/v1/orchestrations/execute",
            {"workflow_id": workflow, "agents": [agent], "parameters": {}},
        ),
        "execute-agent": (
            "/v1/orchestrations/execute",
            {"agent_id": agent, "input": "x", "workflow_id": None, "model": None, "max_steps": 2},
        ),
        "create": (
            "/v1/orchestrations",
            {"executor": "external", "agent_id": agent, "agents": [], "parameters": {}},
        ),
        "agents": ("/v1/agents", {"name": "n", "provider": {"kind": "scripted", "responses": []}}),
        "workflows": (
            "/v1/workflows",
            {"name": "n", "definition": {"steps": [{"id": "a", "action": "llm", "prompt": "x"}]}},
        ),
        "cancel": (f"/v1/orchestrations/{oid}/cancel", {"reason": "r"}),
        "steps": (
            f"/v1/orchestrations/{oid}/steps",
            {"events": [{"type": "step.started", "payload": step}]},
        ),
    }


def _valid(route: str, field: str, value: Any) -> bool:
    """Whether ``value`` of :data:`_WRONG` is one ``field`` takes after all."""
    if field == "input" or (field == "parameters" and isinstance(value, dict)):
        return True  # any JSON value; any object
    if value is None and field in ("workflow_id", "model", "agent_id"):
        return route != "execute-agent" or field != "agent_id"  # optional
    if route == "create" and field == "agents" and value == []:
        return True
    return (field, value) in (("model", ""), ("reason", "x" * 300))


async def _world(client: TestClient, tenant: Tenant) -> dict[str, str]:
    agent, workflow = await setup_workflow(client, tenant)
    oid = await external_orchestration(client, tenant)
    state = await client.get(f"/v1/orchestrations/{oid}", headers=tenant.headers)
    return {
        "agent": agent,
        "workflow": workflow,
        "orch": oid,
        "receipt": (await state.json())["receipts"][0],
    }


async def test_every_field_of_every_body_refuses_a_wrong_value_naming_it(
    client: TestClient, tenant_a: Tenant
) -> None:
    ids = await _world(client, tenant_a)
    size = client.app[SERVICES].log.size
    for route, (path, good) in _cases(ids).items():
        for field in good:
            for value in _WRONG:
                if _valid(route, field, value):
                    continue
                body = {**good, field: value}
                data = json.dumps(body).encode("utf-8", "surrogatepass")
                resp = await client.post(
                    path, data=data, headers={**tenant_a.headers, "Content-Type": JSON}
                )
                if value == "\ud800":
                    await problem(resp, 400)  # not UTF-8: not JSON, no field to name
                    continue
                got = await problem(resp, 422)
                where = got["errors"][0]["field"]
                assert where.startswith(f"$.{field}"), (route, field, value, got)
    assert client.app[SERVICES].log.size == size, "a refused request wrote to the log"


async def test_every_path_id_and_query_parameter_refuses_hostile_values(
    client: TestClient, tenant_a: Tenant
) -> None:
    ids = await _world(client, tenant_a)
    oid, workflow = ids["orch"], ids["workflow"]
    for template in (
        "/v1/orchestrations/{}",
        "/v1/orchestrations/{}/events",
        "/v1/orchestrations/{}/events/stream",
        "/v1/orchestrations/{}/bundle",
        "/v1/agents/{}",
        "/v1/workflows/{}",
        "/v1/receipts/{}",
        "/v1/log/checkpoints/{}",
    ):
        for bad in _BAD_IDS:
            url = raw_url(client, template.format(bad))
            await problem(await client.session.get(url, headers=tenant_a.headers), 404)
        for bad in _BAD_IDS[:4]:
            for method, sub in (("POST", "/cancel"), ("POST", "/steps")):
                url = raw_url(client, f"/v1/orchestrations/{bad}{sub}")
                resp = await client.session.request(
                    method,
                    url,
                    json={"events": [{"type": "x", "payload": {}}]},
                    headers=tenant_a.headers,
                )
                await problem(resp, 404)
    stream = f"/v1/orchestrations/{oid}/events/stream"
    for path, names in (
        ("/v1/orchestrations", ("limit", "status", "cursor", "agent_id", "workflow_id")),
        (f"/v1/orchestrations/{oid}", ("wait",)),
        (stream, ("last_event_id",)),
        (f"/v1/workflows/{workflow}", ("version",)),
        ("/v1/log/proof/inclusion?tree_size=1", ("index",)),
        ("/v1/log/proof/inclusion?index=0", ("tree_size",)),
        ("/v1/log/proof/consistency?second=1", ("first",)),
        ("/v1/log/proof/consistency?first=1", ("second",)),
    ):
        for name in names:
            for bad in _BAD_QUERY:
                if bad == "" and name in ("agent_id", "workflow_id", "last_event_id"):
                    continue  # an empty filter is no filter, an empty position the start
                sep = "&" if "?" in path else "?"
                url = raw_url(client, f"{path}{sep}{name}={bad}")
                await problem(await client.session.get(url, headers=tenant_a.headers), 400, name)
    for bad in ("-1", "x", "1.0", "\u0665", "9" * 20):
        resp = await client.get(stream, headers={**tenant_a.headers, "Last-Event-ID": bad})
        await problem(resp, 400, "Last-Event-ID")
    for bad in ("", " ", "a" * 256, "\u00e9", "a b"):
        resp = await client.post(
            "/v1/orchestrations",
            json={"executor": "external", "agent_id": ids["agent"]},
            headers={**tenant_a.headers, "Idempotency-Key": bad},
        )
        await problem(resp, 400, "Idempotency-Key")


async def test_another_tenants_ids_answer_exactly_as_ids_that_never_existed(
    client: TestClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    theirs = await _world(client, tenant_b)
    await _world(client, tenant_a)
    never = {k: str(uuid.uuid4()) for k in theirs}
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/orchestrations/{orch}", None),
        ("GET", "/v1/orchestrations/{orch}?wait=1", None),
        ("GET", "/v1/orchestrations/{orch}/events", None),
        ("GET", "/v1/orchestrations/{orch}/events/stream?last_event_id=1", None),
        ("HEAD", "/v1/orchestrations/{orch}/events/stream", None),
        ("GET", "/v1/orchestrations/{orch}/bundle", None),
        ("HEAD", "/v1/orchestrations/{orch}/bundle", None),
        ("POST", "/v1/orchestrations/{orch}/cancel", {"reason": "x"}),
        ("POST", "/v1/orchestrations/{orch}/steps", {"events": [{"type": "x", "payload": {}}]}),
        ("GET", "/v1/receipts/{receipt}", None),
        ("GET", "/v1/agents/{agent}", None),
        ("GET", "/v1/workflows/{workflow}", None),
        ("GET", "/v1/workflows/{workflow}?version=1", None),
        ("POST", "/v1/orchestrations/execute", {"workflow_id": "{workflow}", "agents": []}),
        ("POST", "/v1/orchestrations/execute", {"agent_id": "{agent}", "input": 1}),
        (
            "POST",
            "/v1/orchestrations/execute",
            {"agent_id": "{agent}", "input": 1, "workflow_id": "{workflow}"},
        ),
        ("POST", "/v1/orchestrations", {"executor": "external", "agent_id": "{agent}"}),
        ("POST", "/v1/orchestrations", {"executor": "engine", "workflow_id": "{workflow}"}),
    ]
    for method, path, body in routes:
        answers = []
        for ids in (theirs, never):
            data = None if body is None else _fill(body, ids)
            resp = await client.request(
                method, path.format(**ids), json=data, headers=tenant_a.headers
            )
            text = await resp.text()
            for value in ids.values():
                text = text.replace(value, "ID")
            answers.append((resp.status, resp.content_type, text))
        assert answers[0] == answers[1], (method, path, answers)
        assert answers[0][0] == 404, (method, path, answers[0])


def _fill(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: _fill(v, ids) for k, v in body.items()}
    if isinstance(body, str):
        return body.format(**ids)
    return body


async def test_every_route_answers_other_methods_405_in_problem_json(client: TestClient) -> None:
    oid = str(uuid.uuid4())
    allowed = {
        "/v1/orchestrations/execute": {"POST"},
        "/v1/orchestrations": {"GET", "HEAD", "POST"},
        f"/v1/orchestrations/{oid}": {"GET", "HEAD"},
        f"/v1/orchestrations/{oid}/events": {"GET", "HEAD"},
        f"/v1/orchestrations/{oid}/events/stream": {"GET", "HEAD"},
        f"/v1/orchestrations/{oid}/bundle": {"GET", "HEAD"},
        f"/v1/orchestrations/{oid}/cancel": {"POST"},
        f"/v1/orchestrations/{oid}/steps": {"POST"},
        f"/v1/receipts/{oid}": {"GET", "HEAD"},
        "/v1/agents": {"GET", "HEAD", "POST"},
        f"/v1/agents/{oid}": {"GET", "HEAD"},
        "/v1/workflows": {"GET", "HEAD", "POST"},
        f"/v1/workflows/{oid}": {"GET", "HEAD"},
        "/v1/log/checkpoint": {"GET", "HEAD"},
        "/v1/log/checkpoints/1": {"GET", "HEAD"},
        "/v1/log/key": {"GET", "HEAD"},
        "/v1/log/proof/inclusion": {"GET", "HEAD"},
        "/v1/log/proof/consistency": {"GET", "HEAD"},
        "/healthz": {"GET", "HEAD"},
        "/readyz": {"GET", "HEAD"},
        "/metrics": {"GET", "HEAD"},
        "/openapi.json": {"GET", "HEAD"},
    }
    for path, methods in allowed.items():
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            if method in methods:
                continue
            resp = await client.request(method, path, json={})
            await problem(resp, 405)
            assert {m.strip() for m in resp.headers["Allow"].split(",")} <= methods | {"HEAD"}, (
                path,
                method,
            )


# -- a property: any JSON in any body, against a `maip-ledger serve` subprocess ----------

_FIELDS = sorted(
    {
        f
        for _, body in _cases(dict.fromkeys(("orch", "agent", "workflow"), "")).values()
        for f in body
    }
    | {"type", "payload", "kind", "responses", "steps", "id", "action"}
)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.slow
def test_any_json_body_on_any_route_is_answered_by_the_rules(tmp_path: Path) -> None:
    """Whatever JSON arrives, the answer is a 2xx or a problem (never a 5xx) and a 400 or
    422 names the field. Bodies are built mostly from the routes' own field names, so
    they get past the first check."""
    write_signing_key(tmp_path)
    headers = admin_key_headers(tmp_path, "prop")
    server = Server(tmp_path)
    try:
        agent = server.json(
            "POST", "/v1/agents", 201, body={"name": "a", "provider": scripted()}, headers=headers
        )["agent_id"]
        oid = server.json(
            "POST",
            "/v1/orchestrations",
            202,
            body={"executor": "external", "agent_id": agent},
            headers=headers,
        )["orchestration_id"]
        routes = sorted(
            {path for path, _ in _cases({"orch": oid, "agent": agent, "workflow": ""}).values()}
        )

        @hypothesis.settings(
            max_examples=150,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(route=st.sampled_from(routes), body=_json)
        def check(route: str, body: Any) -> None:
            status, got, raw = server.request("POST", route, body=body, headers=headers)
            assert status < 500, (route, body, raw[:300])
            if status >= 400:
                assert got["Content-Type"] == PROBLEM, (route, body, got, raw[:300])
                problem = json.loads(raw)
                assert problem["status"] == status
                if status in (400, 422) and not problem["type"].endswith("/malformed-json"):
                    assert problem["errors"][0]["field"], (route, body, problem)

        check()
    finally:
        server.stop()
