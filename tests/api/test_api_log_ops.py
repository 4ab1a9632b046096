"""Public log endpoints (spec §5) and operations routes (health, readiness, metrics,
OpenAPI)."""

from __future__ import annotations

import base64
from pathlib import Path

import structlog
import yaml
from aiohttp.test_utils import TestClient
from api_helpers import Tenant, hs256_token, json_ok, setup_workflow

import verifier
from api.services import Services

ROOT = Path(__file__).resolve().parents[2]


async def test_log_endpoints_verify(client: TestClient, tenant_a: Tenant) -> None:
    empty = await client.get("/v1/log/checkpoint")
    assert empty.status == 404
    assert empty.headers["Cache-Control"] == "no-cache"  # the first batch will sign one
    agent, wf = await setup_workflow(client, tenant_a)
    resp = await client.post(
        "/v1/orchestrations/execute",
        json={"workflow_id": wf, "agents": [agent]},
        headers={**tenant_a.headers, "Prefer": "wait=10"},
    )
    assert resp.status == 200
    key = await json_ok(client, "GET", "/v1/log/key", 200)
    assert key["origin"] == "maip-ledger.local/log"
    note_resp = await client.get("/v1/log/checkpoint")
    assert note_resp.content_type == "text/plain"
    assert note_resp.charset == "utf-8"
    latest = verifier.verify_checkpoint(await note_resp.text(), key["vkey"])
    n = latest.size
    at = await client.get(f"/v1/log/checkpoints/{n}")
    assert at.status == 200
    assert verifier.verify_checkpoint(await at.text(), key["vkey"]).root == latest.root
    assert (await client.get(f"/v1/log/checkpoints/{n + 100}")).status == 404
    events = (await json_ok(client, "GET", "/v1/orchestrations", 200, headers=tenant_a.headers))[
        "items"
    ]
    oid = events[0]["orchestration_id"]
    leaves = (
        await json_ok(
            client, "GET", f"/v1/orchestrations/{oid}/events", 200, headers=tenant_a.headers
        )
    )["events"]
    leaf = leaves[0]
    inc = await json_ok(
        client, "GET", f"/v1/log/proof/inclusion?index={leaf['leaf_index']}&tree_size={n}", 200
    )
    assert inc["leaf_index"] == leaf["leaf_index"]
    assert inc["tree_size"] == n
    leaf_hash = verifier._merkle.leaf_hash(base64.b64decode(leaf["leaf"]))
    verifier.verify_inclusion(
        leaf_hash, leaf["leaf_index"], n, [base64.b64decode(p) for p in inc["proof"]], latest.root
    )
    old = verifier.verify_checkpoint(
        await (await client.get(f"/v1/log/checkpoints/{leaves[0]['tree_size']}")).text(),
        key["vkey"],
    )
    first = old.size
    cons = await json_ok(client, "GET", f"/v1/log/proof/consistency?first={first}&second={n}", 200)
    assert (cons["first"], cons["second"]) == (first, n)
    verifier.verify_consistency(
        first, old.root, n, latest.root, [base64.b64decode(p) for p in cons["proof"]]
    )
    for bad in (
        "/v1/log/proof/inclusion?index=x&tree_size=1",
        "/v1/log/proof/inclusion?tree_size=1",
        "/v1/log/proof/consistency?first=-1&second=2",
    ):
        assert (await client.get(bad)).status == 400, bad
    out_of_range = await client.get(f"/v1/log/proof/inclusion?index={n}&tree_size={n}")
    assert out_of_range.status == 422


async def test_health_readiness_and_metrics(
    client: TestClient, tenant_a: Tenant, services: Services
) -> None:
    assert (await json_ok(client, "GET", "/healthz", 200))["status"] == "ok"
    ready = await json_ok(client, "GET", "/readyz", 200)
    assert ready["ready"] is True
    agent, wf = await setup_workflow(client, tenant_a)
    await client.post(
        "/v1/orchestrations/execute",
        json={"workflow_id": wf, "agents": [agent]},
        headers={**tenant_a.headers, "Prefer": "wait=10"},
    )
    text = await (await client.get("/metrics")).text()
    assert 'maip_http_requests_total{method="POST",route="/v1/orchestrations/execute"' in text
    assert "maip_log_append_duration_seconds_count" in text
    assert "maip_log_batch_events_bucket" in text
    assert f"maip_log_tree_size {float(services.log.size)}" in text
    assert 'maip_orchestrations{status="completed"} 1.0' in text
    for line in ("maip_summaries_pending", "maip_summaries_held", "maip_summaries_write_failures"):
        assert f"\n{line}" in text, line
    assert "maip_engine_stalled_runs 0.0" in text
    assert "maip_engine_unresumable_runs 0.0" in text
    # Readiness follows the log's health (e.g. a full disk).
    services.log._health.healthy = False
    try:
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503
        assert (await not_ready.json())["ready"] is False
    finally:
        services.log._health.healthy = True


async def test_readiness_reports_a_key_store_that_no_longer_opens(
    client: TestClient, services: Services
) -> None:
    """The key store's files moved away under the running server: its open connection
    still answers from the files it holds, but nothing else (the CLI, the next start)
    can open the store, and readiness says so now."""
    path = services.config.keys_path
    files = [f for f in path.parent.iterdir() if f.name.startswith(path.name)]
    aside = path.parent / "aside"
    aside.mkdir()
    for f in files:
        f.rename(aside / f.name)
    try:
        not_ready = await client.get("/readyz")
        body = await not_ready.json()
        assert not_ready.status == 503
        assert (body["ready"], body["keys_readable"], body["log_healthy"]) == (False, False, True)
    finally:
        for f in files:
            (aside / f.name).rename(f)
    body = await json_ok(client, "GET", "/readyz", 200)
    assert (body["ready"], body["keys_readable"]) == (True, True)


async def test_regression_a_key_store_that_cannot_be_read_is_a_503_not_a_500(
    client: TestClient, tenant_a: Tenant, services: Services
) -> None:
    """A key check that failed in SQLite reached the catch-all and answered 500."""
    assert (await client.get("/v1/orchestrations", headers=tenant_a.headers)).status == 200
    services.keys.close()
    response = await client.get("/v1/orchestrations", headers=tenant_a.headers)
    assert response.status == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert (await response.json())["type"].endswith("/unavailable")


async def test_openapi_served_and_packaged_copy_identical(client: TestClient) -> None:
    spec = ROOT / "specs" / "openapi.yaml"
    packaged = ROOT / "api" / "openapi.yaml"
    assert spec.read_bytes() == packaged.read_bytes()
    served = await json_ok(client, "GET", "/openapi.json", 200)
    assert served == yaml.safe_load(spec.read_text())
    assert served["openapi"].startswith("3.1")


def test_every_route_is_documented() -> None:
    from api.app import create_app
    from api.config import Config

    app = create_app(Config())
    documented = yaml.safe_load((ROOT / "specs" / "openapi.yaml").read_text())["paths"]
    for route in app.router.routes():
        # "*" only refuses, with a 405 naming the documented methods in Allow.
        if route.method in ("HEAD", "*"):
            continue
        path = route.resource.canonical if route.resource else ""
        assert path in documented, path
        assert route.method.lower() in documented[path], (route.method, path)


def _sample(text: str, name: str) -> float:
    """The value of one sample line ``name value`` in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} in the metrics")


async def test_request_metrics_count_every_request(client: TestClient) -> None:
    ok = 'maip_http_requests_total{method="GET",route="/healthz",status="200"}'
    missing = 'maip_http_requests_total{method="GET",route="unmatched",status="404"}'
    took = 'maip_http_request_duration_seconds_count{route="/healthz"}'
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    assert (await client.get("/no/such/route")).status == 404
    text = await (await client.get("/metrics")).text()
    assert (_sample(text, ok), _sample(text, missing), _sample(text, took)) == (3.0, 1.0, 3.0)
    for _ in range(2):
        assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert (_sample(text, ok), _sample(text, took)) == (5.0, 5.0)


async def test_request_ids_are_echoed_or_made_unique(client: TestClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["X-Request-ID"] == "trace-42.a:b"
    made = set()
    for headers in ({}, {"X-Request-ID": "bad id with spaces"}, {"X-Request-ID": ""}, {}):
        resp = await client.get("/healthz", headers=headers)
        made.add(resp.headers["X-Request-ID"])
    assert len(made) == 4
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)


async def test_log_lines_carry_only_their_own_requests_context(
    client: TestClient, tenant_a: Tenant
) -> None:
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        headers = {**tenant_a.headers, "X-Request-ID": "first-request"}
        assert (await client.get("/v1/orchestrations", headers=headers)).status == 200
        anonymous = await client.get("/v1/orchestrations", headers={"X-Request-ID": "second"})
        assert anonymous.status == 401
    finally:
        structlog.configure(**saved)
    lines = {e["request_id"]: e for e in capture.entries if e["event"] == "request"}
    assert lines["first-request"]["tenant_id"] == "tenant-a"
    assert lines["first-request"]["status"] == 200
    assert "tenant_id" not in lines["second"]
    assert lines["second"]["status"] == 401


async def test_regression_made_up_methods_share_one_metrics_series(client: TestClient) -> None:
    """The method label took whatever method reached the app: aiohttp's parser admits
    some thirty (WebDAV's, RTSP's, ...), each a time series kept for the process's life."""
    for method in ("PROPFIND", "MKCOL", "LOCK", "PURGE"):
        resp = await client.request(method, "/v1/log/checkpoint")
        assert resp.status == 405
    text = await (await client.get("/metrics")).text()
    assert "PROPFIND" not in text
    assert 'maip_http_requests_total{method="other",route="unmatched",status="405"} 4.0' in text


async def test_regression_an_idempotency_record_that_cannot_be_read_is_a_503(
    client: TestClient, services: Services
) -> None:
    """With the key store unreadable, a JWT caller still authenticates, and the
    Idempotency-Key lookup used to reach the catch-all and answer 500."""
    tenant = "tenant-j"
    token = hs256_token(tenant, "orchestrations:write")
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant}
    services.keys.close()
    response = await client.post(
        "/v1/orchestrations/execute",
        json={"agent_id": "00000000-0000-4000-8000-000000000000", "input": "x"},
        headers={**headers, "Idempotency-Key": "k-1"},
    )
    assert response.status == 503, await response.text()
    assert response.headers["Content-Type"] == "application/problem+json"
