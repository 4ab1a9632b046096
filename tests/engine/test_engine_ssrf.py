"""The http tool's SSRF guard, against a real HTTP server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from engine_helpers import TENANT, send_in_two_writes

from ledger.orchestration import (
    Engine,
    HttpTool,
    OrchestrationState,
    SSRFBlockedError,
    ToolError,
)


class Target:
    def __init__(self) -> None:
        self.hits: list[Any] = []
        self.port = 0

    async def echo(self, request: web.Request) -> web.Response:
        self.hits.append(await request.json())
        return web.json_response({"got": self.hits[-1]})

    async def redirect(self, request: web.Request) -> web.Response:
        self.hits.append("redirect")
        raise web.HTTPFound(f"http://localhost:{self.port}/echo")

    async def redirect_same(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.port}/echo")

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"blob": "x" * 10_000})

    async def deep(self, request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 10_000 + b"]" * 10_000, content_type="application/json")

    async def in_parts(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        return await send_in_two_writes(request, msgspec.json.encode({"blob": "x" * size}))


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    app = web.Application()
    app.router.add_post("/echo", t.echo)
    app.router.add_post("/redirect", t.redirect)
    app.router.add_post("/redirect-same", t.redirect_same)
    app.router.add_post("/big", t.big)
    app.router.add_post("/deep", t.deep)
    app.router.add_post("/in-parts", t.in_parts)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    t.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield t
    await runner.cleanup()


async def _call(tool: HttpTool, args: Any) -> Any:
    try:
        return await tool(args)
    finally:
        await tool.close()


async def test_allowed_private_host_works(target: Target) -> None:
    tool = HttpTool(
        f"http://127.0.0.1:{target.port}/echo",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
    )
    assert await _call(tool, {"a": 1}) == {"got": {"a": 1}}


async def test_regression_a_body_nested_too_deep_for_json_is_returned_as_text(
    target: Target,
) -> None:
    # The decoder's RecursionError was not taken for "not JSON", and escaped the tool.
    tool = HttpTool(
        f"http://127.0.0.1:{target.port}/deep",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
    )
    assert await _call(tool, {}) == "[" * 10_000 + "]" * 10_000


async def test_host_not_in_allow_list_is_blocked(target: Target) -> None:
    tool = HttpTool(f"http://127.0.0.1:{target.port}/echo", allow_hosts=["api.example.com"])
    with pytest.raises(SSRFBlockedError, match="allow-list"):
        await _call(tool, {"a": 1})
    assert target.hits == []


async def test_loopback_literal_blocked_unless_explicitly_private(target: Target) -> None:
    tool = HttpTool(f"http://127.0.0.1:{target.port}/echo", allow_hosts=["127.0.0.1"])
    with pytest.raises(SSRFBlockedError, match="not public"):
        await _call(tool, {"a": 1})
    assert target.hits == []


async def test_name_resolving_to_loopback_is_blocked(target: Target) -> None:
    tool = HttpTool(f"http://localhost:{target.port}/echo", allow_hosts=["localhost"])
    with pytest.raises(SSRFBlockedError, match="non-public address"):
        await _call(tool, {"a": 1})
    assert target.hits == []


async def test_link_local_metadata_address_is_blocked() -> None:
    tool = HttpTool("http://169.254.169.254/latest/meta-data", allow_hosts=["169.254.169.254"])
    with pytest.raises(SSRFBlockedError):
        await _call(tool, {})


async def test_redirect_to_non_allowed_host_is_not_followed(target: Target) -> None:
    tool = HttpTool(
        f"http://127.0.0.1:{target.port}/redirect",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
    )
    with pytest.raises(SSRFBlockedError, match="localhost"):
        await _call(tool, {"a": 1})
    assert target.hits == ["redirect"]  # the redirect target was never requested


async def test_redirect_to_allowed_host_is_followed(target: Target) -> None:
    tool = HttpTool(
        f"http://127.0.0.1:{target.port}/redirect-same",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
    )
    assert await _call(tool, {"b": 2}) == {"got": {"b": 2}}


async def test_response_size_cap(target: Target) -> None:
    tool = HttpTool(
        f"http://127.0.0.1:{target.port}/big",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
        max_response_bytes=1000,
    )
    with pytest.raises(ToolError, match="exceeds"):
        await _call(tool, {})


async def _run_webhook_to_loopback(engine: Engine, target: Target) -> OrchestrationState:
    """A workflow whose one step calls an http tool at a name that resolves to loopback
    (allow-listed as a host, not as a private one); its final state."""
    tool = HttpTool(f"http://localhost:{target.port}/echo", allow_hosts=["localhost"])
    engine.tools.register("webhook", tool)
    try:
        defn = {"steps": [{"id": "call", "action": "tool", "tool": "webhook", "inputs": {"x": 1}}]}
        wf = await engine.register_workflow(TENANT, name="w", definition=defn)
        started = await engine.execute(TENANT, workflow_id=wf.workflow_id)
        return await engine.wait(TENANT, started.orchestration_id)
    finally:
        await tool.close()


async def test_blocked_http_tool_fails_the_step_without_retry(
    engine: Engine, target: Target
) -> None:
    state = await _run_webhook_to_loopback(engine, target)
    assert (state.status, state.reason) == ("failed", "step_failed")
    assert state.steps[0].attempts == 1
    assert "non-public address" in state.steps[0].result["error"]
    assert target.hits == []


async def test_regression_a_refused_name_does_not_tell_the_tenant_its_internal_address(
    engine: Engine, target: Target
) -> None:
    """The refusal named the private address the name resolved to, and the error is
    recorded where the tenant reads it: a tenant could map internal names to internal
    addresses, one refused call at a time."""
    state = await _run_webhook_to_loopback(engine, target)
    error = state.steps[0].result["error"]
    assert "non-public address" in error
    assert "127.0.0.1" not in error
    assert "::1" not in error


def _in_parts(target: Target, size: int, cap: int) -> HttpTool:
    return HttpTool(
        f"http://127.0.0.1:{target.port}/in-parts?size={size}",
        allow_hosts=["127.0.0.1"],
        allow_private_hosts=["127.0.0.1"],
        max_response_bytes=cap,
    )


async def test_regression_a_body_sent_in_parts_is_read_whole(target: Target) -> None:
    """One ``read(n)`` returned only what had arrived: half the JSON, kept as a string."""
    assert await _call(_in_parts(target, 3000, 10_000), {}) == {"blob": "x" * 3000}


async def test_regression_the_size_cap_holds_for_a_body_sent_in_parts(target: Target) -> None:
    """The cap was checked against the first part only, so a larger body got through."""
    with pytest.raises(ToolError, match="exceeds"):
        await _call(_in_parts(target, 20_000, 15_000), {})
