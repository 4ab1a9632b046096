"""Bodies nest at most 128 levels (api/routes/_common.py MAX_BODY_NESTING): whatever is
accepted can be written to the log and read back, wherever in the call stack."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from api.routes._common import MAX_BODY_NESTING
from api.services import SERVICES

Ctx = tuple[TestClient, dict[str, str], dict[str, str]]


def _bodies(ids: dict[str, str], depth: int) -> list[tuple[str, str]]:
    """A body per route, each holding a value whose own nesting makes the body's
    ``depth`` (written out by hand: the client's own encoder has limits of its own)."""

    def deep(outer: int) -> str:
        levels = depth - outer
        return "[" * levels + "1" + "]" * levels

    step = f'{{"id": "a", "action": "tool", "tool": "echo", "inputs": {{"x": {deep(5)}}}}}'
    return [
        ("/v1/workflows", f'{{"name": "deep", "definition": {{"steps": [{step}]}}}}'),
        ("/v1/orchestrations/execute", f'{{"agent_id": "{ids["agent_id"]}", "input": {deep(1)}}}'),
        (
            "/v1/orchestrations",
            f'{{"executor": "external", "agent_id": "{ids["agent_id"]}", "input": {deep(1)}}}',
        ),
    ]


@pytest.mark.parametrize("depth", [MAX_BODY_NESTING + 1, 500, 940, 5000])
async def test_regression_a_body_nested_past_the_limit_is_400_and_writes_nothing(
    hostile: Ctx, depth: int
) -> None:
    """Under ~1,000 levels a body decoded, then its leaf failed to encode deeper in the
    call stack (500), or encoded and then failed to decode when read (a 202, then 500s)."""
    client, headers, ids = hostile
    for path, body in _bodies(ids, depth):
        before = client.app[SERVICES].log.size
        resp = await client.post(
            path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert resp.status == 400, (path, resp.status, (await resp.text())[:300])
        assert resp.content_type == "application/problem+json"
        assert "nests more than 128 levels" in (await resp.json())["detail"]
        assert client.app[SERVICES].log.size == before


async def test_a_body_nested_to_the_limit_is_accepted_and_readable(hostile: Ctx) -> None:
    client, headers, ids = hostile
    _, execute, create = _bodies(ids, MAX_BODY_NESTING)
    for path, body in (execute, create):
        resp = await client.post(
            path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert resp.status == 202, (path, (await resp.text())[:300])
        oid = (await resp.json())["orchestration_id"]
        for sub in ("", "/events", "/bundle"):
            got = await client.get(f"/v1/orchestrations/{oid}{sub}", headers=headers)
            assert got.status == 200, (path, sub, (await got.text())[:300])
