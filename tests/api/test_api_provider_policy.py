"""A tenant's ``openai`` agents reach only what the operator allows, and send only the
keys the operator named, to the hosts named for them (``MAIP_PROVIDER_*``)."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from api_helpers import Tenant, new_tenant

from api.app import create_app
from api.config import Config
from api.errors import ConfigError
from api.services import SERVICES

SECRET = "server-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


class Provider:
    """An OpenAI-compatible endpoint on loopback that notes each Authorization header."""

    def __init__(self) -> None:
        self.authorization: list[str | None] = []

    async def complete(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})


@contextlib.asynccontextmanager
async def _upstream_and_api(
    config: Config, complete: Any
) -> AsyncIterator[tuple[TestServer, TestClient]]:
    """An OpenAI-compatible server on loopback answering with ``complete``, and a client
    of the API configured by ``config``."""
    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", complete)
    async with TestServer(upstream_app, host="127.0.0.1") as upstream:
        server = TestServer(create_app(config), host="127.0.0.1")
        async with TestClient(server) as client:
            yield upstream, client


async def _agent(client: TestClient, tenant: Tenant, **provider: Any) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/agents",
        json={"name": "a", "provider": {"kind": "openai", **provider}},
        headers=tenant.headers,
    )
    return resp.status, await resp.json(content_type=None)


async def _runs_to_completion(client: TestClient, tenant: Tenant, **provider: Any) -> None:
    """Register an openai agent with ``provider`` settings and execute it once: it must
    complete."""
    status, body = await _agent(client, tenant, **provider)
    assert status == 201, body
    resp = await client.post(
        "/v1/orchestrations/execute",
        json={"agent_id": body["agent_id"], "input": "hi"},
        headers={**tenant.headers, "Prefer": "wait=10"},
    )
    assert (await resp.json())["status"] == "completed"


async def _serve(config: Config, env: dict[str, str], check: Any) -> Provider:
    provider = Provider()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider.complete)
    async with TestServer(app, host="127.0.0.1") as upstream:
        base = str(upstream.make_url("/v1"))
        # Settings may name the upstream's origin, known only now.
        config = dataclasses.replace(
            config, provider_keys=config.provider_keys.format(origin=base.removesuffix("/v1"))
        )
        server = TestServer(create_app(config, env=env), host="127.0.0.1")
        async with TestClient(server) as client:
            tenant = new_tenant(client.app[SERVICES].keys, "mallory")
            await check(client, tenant, base)
    return provider


async def test_regression_a_tenant_cannot_send_a_server_secret_to_its_own_host(
    config: Config,
) -> None:
    """Any variable of the server's environment could be named as an agent's key, and
    was sent as a bearer token to the agent's base_url: the tenant's own host."""
    env = {"MAIP_JWT_HS256_SECRET": SECRET}
    config = dataclasses.replace(config, provider_private_hosts="127.0.0.1")

    async def check(client: TestClient, tenant: Tenant, base: str) -> None:
        status, body = await _agent(
            client, tenant, base_url=base, api_key_env="MAIP_JWT_HS256_SECRET"
        )
        assert status == 422, body
        assert body["errors"][0]["field"] == "$.provider.api_key_env"

    provider = await _serve(config, env, check)
    assert provider.authorization == []


async def test_private_provider_hosts_need_the_operators_leave(config: Config) -> None:
    async def check(client: TestClient, tenant: Tenant, base: str) -> None:
        status, body = await _agent(client, tenant, base_url=base)
        assert status == 422, body
        assert body["errors"][0]["field"] == "$.provider.base_url"

    await _serve(config, {}, check)


async def test_a_named_key_reaches_its_named_host(config: Config) -> None:
    config = dataclasses.replace(
        config, provider_private_hosts="127.0.0.1", provider_keys="LLM_KEY={origin}"
    )

    async def check(client: TestClient, tenant: Tenant, base: str) -> None:
        await _runs_to_completion(client, tenant, base_url=base, api_key_env="LLM_KEY")

    provider = await _serve(config, {"LLM_KEY": "sk-llm"}, check)
    assert provider.authorization == ["Bearer sk-llm"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("LLM_KEY", "is not NAME=origin"),
        ("LLM_KEY=", "is not NAME=origin"),
        ("1BAD=host", "is not NAME=origin"),
        ("LLM_KEY=ftp://host", "not an origin"),
        ("MAIP_JWT_HS256_SECRET=api.example.com", "is a server setting"),
    ],
)
def test_provider_key_settings_are_checked(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load({"MAIP_PROVIDER_KEYS": keys})


def test_provider_settings_become_the_engines_policy() -> None:
    config = Config.load(
        {
            "MAIP_PROVIDER_HOSTS": "api.example.com, Local.Host.",
            "MAIP_PROVIDER_PRIVATE_HOSTS": "local.host",
            "MAIP_PROVIDER_KEYS": "A=api.example.com; B=http://local.host:8000,api.example.com",
        }
    )
    policy = config.provider_policy()
    assert policy.allow_hosts == {"api.example.com", "local.host"}
    assert policy.allow_private_hosts == {"local.host"}
    assert policy.keys == {
        "A": {"https://api.example.com:443"},
        "B": {"http://local.host:8000", "https://api.example.com:443"},
    }


@pytest.mark.parametrize(
    "host",
    ["127\u30020\u30020\u30021", "127\uff0e0\uff0e0\uff0e1", "\uff11\uff12\uff17.0.0.1"],
)
async def test_regression_a_loopback_address_in_unicode_dots_or_digits_is_refused(
    config: Config, host: str
) -> None:
    """The address check read the host as written ("127。0。0。1" is no IP address, so a
    name, left to the resolver), but the client normalizes it (IDNA) to 127.0.0.1 and,
    that being a literal address, connects without asking the resolver: a tenant's agent
    reached the server's loopback."""

    async def check(client: TestClient, tenant: Tenant, base: str) -> None:
        port = base.split(":")[2].split("/", maxsplit=1)[0]
        status, body = await _agent(client, tenant, base_url=f"http://{host}:{port}/v1")
        if status == 201:
            resp = await client.post(
                "/v1/orchestrations/execute",
                json={"agent_id": body["agent_id"], "input": "hi"},
                headers={**tenant.headers, "Prefer": "wait=10"},
            )
            assert (await resp.json())["status"] == "failed"
        else:
            assert status == 422, body
            assert body["errors"][0]["field"] == "$.provider.base_url"

    provider = await _serve(config, {}, check)
    assert provider.authorization == []


async def test_regression_an_agent_cannot_raise_its_response_cap_without_bound(
    config: Config,
) -> None:
    """``max_response_bytes`` is the tenant's to choose, and was used as given: an agent
    with a cap of 1 TiB, on a host that answers with an endless body, had the server
    hold all of it in memory. The cap is now at most 16 MiB whatever the agent says."""
    config = dataclasses.replace(config, provider_private_hosts="127.0.0.1")
    chunk = b" " * (1 << 20)

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(128):
                await resp.write(chunk)
            await resp.write(b'{"choices": [{"message": {"content": "ok"}}]}')
        return resp

    async with _upstream_and_api(config, flood) as (upstream, client):
        tenant = new_tenant(client.app[SERVICES].keys, "mallory")
        status, body = await _agent(
            client,
            tenant,
            base_url=str(upstream.make_url("/v1")),
            max_response_bytes=1 << 40,
        )
        assert status == 201, body
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        resp = await client.post(
            "/v1/orchestrations/execute",
            json={"agent_id": body["agent_id"], "input": "hi"},
            headers={**tenant.headers, "Prefer": "wait=30"},
        )
        state = await resp.json()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert state["status"] == "failed", state
    assert "too large" in state["steps"][0]["result"]["error"]
    assert grown < 64 * 1024, f"peak memory grew by {grown} KiB"


async def test_regression_a_cookie_one_tenants_provider_set_never_reaches_anothers(
    config: Config,
) -> None:
    """All agents' providers share one HTTP session, and its cookie jar kept what an
    answer to one tenant's call set (a session, say) and sent it with every later call
    to that host, whichever tenant made it."""
    config = dataclasses.replace(config, provider_private_hosts="localhost")
    cookies: list[str | None] = []

    async def complete(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        resp = web.json_response({"choices": [{"message": {"content": "ok"}}]})
        resp.set_cookie("session", "alice-session")
        return resp

    async with _upstream_and_api(config, complete) as (upstream, client):
        for name in ("alice", "mallory"):
            tenant = new_tenant(client.app[SERVICES].keys, name)
            await _runs_to_completion(
                client, tenant, base_url=f"http://localhost:{upstream.port}/v1"
            )
    assert cookies == [None, None]
