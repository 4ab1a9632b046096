"""Every bad input over HTTP, route by route: an RFC 9457 problem (never a 500) that
names the offending field, and nothing another tenant owns shows through.

The rules are asserted by :func:`problem` for every case; the cases are tables (one row
per input), run against the real app on a loopback server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from api_helpers import Tenant, external_orchestration, setup_workflow
from multidict import CIMultiDict
from yarl import URL

PROBLEM = "application/problem+json"


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
