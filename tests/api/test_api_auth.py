"""Authentication and authorization failures, against a real loopback server."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from api_helpers import Tenant, eddsa_token, external_orchestration, hs256_token, new_tenant
from api_server import cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.auth import Authenticator
from api.config import Config
from api.errors import ConfigError, KeyStoreError
from api.keys import KeyStore
from api.problems import ProblemError
from api.routes import orchestrations as orchestration_routes
from api.services import SERVICES

PATH = "/v1/orchestrations"


async def problem(client: TestClient, headers: dict[str, str], status: int) -> dict[str, object]:
    resp = await client.get(PATH, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body  # type: ignore[no-any-return]


async def test_valid_key_lists(client: TestClient, tenant_a: Tenant) -> None:
    resp = await client.get(PATH, headers=tenant_a.headers)
    assert resp.status == 200
    assert await resp.json() == {"items": [], "next_cursor": None}


async def test_no_credentials_is_401(client: TestClient) -> None:
    await problem(client, {"X-Tenant-ID": "tenant-a"}, 401)


@pytest.mark.parametrize(
    "bad",
    ["nonsense", "mlk_0000000000000000_" + "A" * 43, ""],
)
async def test_bad_key_is_401(client: TestClient, tenant_a: Tenant, bad: str) -> None:
    await problem(client, {"X-API-Key": bad, "X-Tenant-ID": "tenant-a"}, 401)


async def test_right_id_wrong_secret_is_401(client: TestClient, tenant_a: Tenant) -> None:
    forged = tenant_a.api_key[:-4] + ("AAAA" if not tenant_a.api_key.endswith("AAAA") else "BBBB")
    await problem(client, {"X-API-Key": forged, "X-Tenant-ID": "tenant-a"}, 401)


async def test_revoked_key_is_401_at_once(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    assert (await client.get(PATH, headers=tenant_a.headers)).status == 200
    # Revoked through a second connection to keys.db, as the CLI does while serving.
    other = KeyStore(keys._path)
    try:
        other.revoke(tenant_a.key_id)
    finally:
        other.close()
    await problem(client, tenant_a.headers, 401)


async def _warm(client: TestClient, tenant: Tenant) -> None:
    """Authenticate a few times, so the server holds the key's row in memory."""
    for _ in range(3):
        assert (await client.get(PATH, headers=tenant.headers)).status == 200


async def test_key_cache_key_revoked_by_the_cli_is_refused_on_the_next_request(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    await _warm(client, tenant_a)
    data_dir = Path(keys._path).parent
    revoked = cli("keys", "revoke", tenant_a.key_id, "--data-dir", str(data_dir))
    assert revoked.returncode == 0, revoked.stderr
    await problem(client, tenant_a.headers, 401)


async def test_key_cache_key_revoked_by_the_servers_own_store_is_refused_at_once(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    # SQLite's data_version ignores a connection's own commits: the store must drop its
    # rows itself when it writes.
    await _warm(client, tenant_a)
    keys.revoke(tenant_a.key_id)
    await problem(client, tenant_a.headers, 401)


async def test_key_cache_row_changed_by_another_connection_is_reread(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    await _warm(client, tenant_a)
    # No command narrows a key's scopes; a direct write stands for any other writer.
    with sqlite3.connect(keys._path) as db:
        db.execute(
            "UPDATE api_keys SET scopes = 'agents:write' WHERE key_id = ?", (tenant_a.key_id,)
        )
    await problem(client, tenant_a.headers, 403)
    with sqlite3.connect(keys._path) as db:
        db.execute(
            "UPDATE api_keys SET secret_hash = zeroblob(32) WHERE key_id = ?", (tenant_a.key_id,)
        )
    await problem(client, tenant_a.headers, 401)


async def test_key_cache_key_created_by_another_connection_works_at_once(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    await _warm(client, tenant_a)
    other = KeyStore(keys._path)
    try:
        late = new_tenant(other, "tenant-a")
    finally:
        other.close()
    assert (await client.get(PATH, headers=late.headers)).status == 200


async def test_key_cache_still_checks_the_secret(client: TestClient, tenant_a: Tenant) -> None:
    await _warm(client, tenant_a)
    forged = tenant_a.api_key[:-4] + ("AAAA" if not tenant_a.api_key.endswith("AAAA") else "BBBB")
    await problem(client, {"X-API-Key": forged, "X-Tenant-ID": "tenant-a"}, 401)
    assert (await client.get(PATH, headers=tenant_a.headers)).status == 200


def test_key_store_sees_a_revocation_from_another_connection(tmp_path: Path) -> None:
    first, second = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    try:
        key = first.create("t", ["orchestrations:read"])
        assert second.authenticate(key.api_key) is not None
        assert second.authenticate(key.api_key) is not None
        first.revoke(key.key_id)
        assert second.authenticate(key.api_key) is None
    finally:
        first.close()
        second.close()


async def test_missing_scope_is_403(client: TestClient, keys: KeyStore) -> None:
    writer = new_tenant(keys, "tenant-a", ("agents:write",))
    body = await problem(client, writer.headers, 403)
    assert "orchestrations:read" in str(body["detail"])


async def test_wrong_tenant_header_is_403(client: TestClient, tenant_a: Tenant) -> None:
    await problem(client, {"X-API-Key": tenant_a.api_key, "X-Tenant-ID": "tenant-b"}, 403)


async def test_missing_tenant_header_is_400(client: TestClient, tenant_a: Tenant) -> None:
    await problem(client, {"X-API-Key": tenant_a.api_key}, 400)


async def test_regression_an_empty_tenant_header_is_400_missing_not_403(
    client: TestClient, tenant_a: Tenant
) -> None:
    # An empty X-Tenant-ID names no tenant: it was answered as a wrong tenant (403).
    body = await problem(client, {"X-API-Key": tenant_a.api_key, "X-Tenant-ID": ""}, 400)
    assert body["errors"][0]["field"] == "X-Tenant-ID"


async def test_bad_credentials_checked_before_tenant(client: TestClient) -> None:
    await problem(client, {"X-API-Key": "nope"}, 401)


async def test_hs256_and_eddsa_jwts_work(client: TestClient) -> None:
    for token in (
        hs256_token("tenant-j", "orchestrations:read"),
        eddsa_token("tenant-j", "orchestrations:read orchestrations:write"),
    ):
        headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}
        resp = await client.get(PATH, headers=headers)
        assert resp.status == 200, await resp.text()


async def test_expired_jwt_is_401(client: TestClient) -> None:
    token = hs256_token("tenant-j", "orchestrations:read", exp_in=-600)
    body = await problem(
        client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}, 401
    )
    assert "expired" in str(body["detail"])


async def test_jwt_without_exp_is_401(client: TestClient) -> None:
    from api_helpers import HS256_SECRET

    token = jwt.encode({"tenant": "tenant-j", "scope": "admin"}, HS256_SECRET, algorithm="HS256")
    await problem(client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}, 401)


async def test_alg_none_jwt_is_401(client: TestClient) -> None:
    token = jwt.encode(
        {"tenant": "tenant-j", "scope": "admin", "exp": int(time.time()) + 300},
        key=None,
        algorithm="none",
    )
    await problem(client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}, 401)


async def test_jwt_signed_with_another_key_is_401(client: TestClient) -> None:
    for token in (
        eddsa_token("tenant-j", "admin", key=Ed25519PrivateKey.generate()),
        hs256_token("tenant-j", "admin", secret="another-secret-0123456789-abcdefghij"),
    ):
        await problem(client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}, 401)


async def test_jwt_scope_and_tenant_enforced(client: TestClient) -> None:
    token = hs256_token("tenant-j", "agents:write")
    await problem(client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}, 403)
    token = hs256_token("tenant-j", "orchestrations:read")
    await problem(client, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-k"}, 403)


async def test_non_bearer_authorization_is_401(client: TestClient) -> None:
    await problem(client, {"Authorization": "Basic dXNlcjpwYXNz", "X-Tenant-ID": "t"}, 401)


async def test_key_store_keeps_only_a_hash(keys: KeyStore, tenant_a: Tenant) -> None:
    secret = tenant_a.api_key.split("_", 2)[2]
    raw = b"".join(p.read_bytes() for p in keys._path.parent.glob("keys.db*"))
    assert secret.encode() not in raw
    assert tenant_a.api_key.encode() not in raw


@pytest.mark.parametrize(
    ("scopes", "read", "write"),
    [
        (("admin",), 200, 422),
        (("orchestrations:read",), 200, 403),
        (("orchestrations:write",), 403, 422),
        (("orchestrations:read", "orchestrations:write"), 200, 422),
        (("agents:write", "workflows:write"), 403, 403),
    ],
)
async def test_scopes_decide_reads_and_writes(
    client: TestClient, keys: KeyStore, scopes: tuple[str, ...], read: int, write: int
) -> None:
    caller = new_tenant(keys, "tenant-a", scopes)
    assert (await client.get(PATH, headers=caller.headers)).status == read
    # An empty body passes authorization and then fails validation (422).
    resp = await client.post(f"{PATH}/execute", json={}, headers=caller.headers)
    assert resp.status == write, await resp.text()


async def test_key_changes_by_another_process_count_from_the_next_loop_turn(
    tmp_path: Path,
) -> None:
    """The key store is checked for changes once per event-loop turn, so a change made
    by another process counts from the next turn on."""
    keys, other = KeyStore(tmp_path / "keys.db"), KeyStore(tmp_path / "keys.db")
    try:
        key = other.create("t", ["orchestrations:read"])
        auth = Authenticator(Config(data_dir=tmp_path), keys)
        request = make_mocked_request(
            "GET", "/v1/orchestrations", headers={"X-API-Key": key.api_key}
        )
        assert auth.authenticate(request).tenant_id == "t"  # this turn's check
        other.revoke(key.key_id)
        assert auth.authenticate(request).tenant_id == "t"  # same turn: not read again
        await asyncio.sleep(0)
        with pytest.raises(ProblemError) as refused:
            auth.authenticate(request)
        assert refused.value.status == 401
        # A key made in the meantime works from the next turn on, too.
        late = other.create("t", ["orchestrations:read"])
        await asyncio.sleep(0)
        late_request = make_mocked_request(
            "GET", "/v1/orchestrations", headers={"X-API-Key": late.api_key}
        )
        assert auth.authenticate(late_request).subject == f"key:{late.key_id}"
    finally:
        keys.close()
        other.close()


async def test_with_an_audience_configured_tokens_for_other_services_are_401(
    config: Config, make_client: Callable[[Config], TestClient]
) -> None:
    """RFC 8725 §3.9: a token the shared key signed for another service must not work."""
    from api_helpers import HS256_SECRET

    config = dataclasses.replace(config, jwt_audience="maip-ledger", jwt_issuer="idp.example")

    def token(**claims: Any) -> dict[str, str]:
        body = {"tenant": "tenant-j", "scope": "admin", "exp": int(time.time()) + 300, **claims}
        encoded = jwt.encode(body, HS256_SECRET, algorithm="HS256")
        return {"Authorization": f"Bearer {encoded}", "X-Tenant-ID": "tenant-j"}

    async with make_client(config) as client:
        good = token(aud="maip-ledger", iss="idp.example")
        assert (await client.get(PATH, headers=good)).status == 200
        for claims in (
            {},
            {"iss": "idp.example"},
            {"aud": "billing", "iss": "idp.example"},
            {"aud": "maip-ledger"},
            {"aud": "maip-ledger", "iss": "elsewhere"},
        ):
            await problem(client, token(**claims), 401)


def test_regression_an_eddsa_key_file_that_is_not_ascii_is_a_config_error(tmp_path: Path) -> None:
    # The file was read as ASCII and the UnicodeDecodeError escaped: a traceback, exit 1.
    pem = tmp_path / "key.pem"
    pem.write_bytes(b"\xff\xfe not a key")
    keys = KeyStore(tmp_path / "keys.db")
    try:
        with pytest.raises(ConfigError, match="not ASCII"):
            Authenticator(Config(jwt_eddsa_public_key=str(pem)), keys)
    finally:
        keys.close()
    r = cli(
        "serve",
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        "0",
        "--jwt-eddsa-public-key",
        str(pem),
    )
    assert r.returncode == 2, r.stderr[-400:]
    assert r.stderr.count("\n") == 1, r.stderr[-400:]
    assert "not ASCII" in r.stderr


def test_regression_key_store_reads_and_revokes_that_fail_in_sqlite_are_key_store_errors(
    tmp_path: Path,
) -> None:
    # list_keys, tenants and revoke let sqlite3 errors out: a traceback from the CLI.
    store = KeyStore(tmp_path / "keys.db")
    key = store.create("t", ["orchestrations:read"])
    store.close()  # every call now fails inside sqlite3
    for call in (store.list_keys, store.tenants, lambda: store.revoke(key.key_id)):
        with pytest.raises(KeyStoreError):
            call()


async def _open_stream(client: TestClient, oid: str, headers: dict[str, str]) -> Any:
    """An event stream of ``oid``, read past its backlog (created, started)."""
    resp = await client.get(f"/v1/orchestrations/{oid}/events/stream", headers=headers)
    assert resp.status == 200
    for _ in range(2):
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    return resp


async def _complete(client: TestClient, oid: str, writer: Tenant) -> None:
    resp = await client.post(
        f"/v1/orchestrations/{oid}/steps",
        json={"events": [{"type": "orchestration.completed", "payload": {"results": {}}}]},
        headers=writer.headers,
    )
    assert resp.status == 201, await resp.text()


async def test_regression_a_revoked_key_stops_receiving_an_open_event_stream(
    client: TestClient, tenant_a: Tenant, keys: KeyStore
) -> None:
    """The credential was checked only when the stream connected: a key revoked while
    its stream was open went on receiving the orchestration's events."""
    oid = await external_orchestration(client, tenant_a)
    writer = new_tenant(keys, "tenant-a")
    resp = await _open_stream(client, oid, tenant_a.headers)
    keys.revoke(tenant_a.key_id)
    await _complete(client, oid, writer)
    rest = await asyncio.wait_for(resp.read(), 5)
    assert b"orchestration.completed" not in rest


async def test_regression_a_revoked_keys_idle_event_stream_ends_at_its_next_keep_alive(
    client: TestClient, tenant_a: Tenant, keys: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no event to come, the stream went on sending keep-alives to a revoked key."""
    monkeypatch.setattr(orchestration_routes, "_SSE_HEARTBEAT_SECONDS", 0.01)
    oid = await external_orchestration(client, tenant_a)
    resp = await _open_stream(client, oid, tenant_a.headers)
    await asyncio.wait_for(resp.content.readuntil(b": keep-alive\n\n"), 5)
    keys.revoke(tenant_a.key_id)
    await asyncio.wait_for(resp.read(), 5)  # ends, rather than keep-alives for ever


async def test_regression_an_event_stream_ends_when_its_jwt_expires(
    client: TestClient, keys: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JWT that expired while its stream was open went on receiving its events."""
    writer = new_tenant(keys, "tenant-j")
    oid = await external_orchestration(client, writer)
    token = hs256_token("tenant-j", "orchestrations:read", exp_in=300)
    resp = await _open_stream(
        client, oid, {"Authorization": f"Bearer {token}", "X-Tenant-ID": "tenant-j"}
    )
    monkeypatch.setattr(client.app[SERVICES].auth, "_clock", lambda: time.time() + 3600)
    await _complete(client, oid, writer)
    rest = await asyncio.wait_for(resp.read(), 5)
    assert b"orchestration.completed" not in rest
