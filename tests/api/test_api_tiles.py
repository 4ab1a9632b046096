"""The log's C2SP tlog-tiles endpoints, read over HTTP.

Go's ``golang.org/x/mod/sumdb/tlog`` (a second implementation) proves inclusion and
consistency from our tiles alone, checking each tile against the signed checkpoint.
It runs where Go and Debian's golang-golang-x-mod-dev are installed (.ci/run installs
them); the endpoint's own behaviour is tested everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yarl
from aiohttp.test_utils import TestClient
from api_helpers import Tenant, json_ok, setup_workflow

from ledger import merkle

GOPATH = Path("/usr/share/gocode")
PROGRAM = Path(__file__).with_name("go") / "readtiles.go"
_HAVE_GO = shutil.which("go") is not None and (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir()


async def _run(client: TestClient, tenant: Tenant, wf: str, agent: str) -> list[str]:
    state = await json_ok(
        client,
        "POST",
        "/v1/orchestrations/execute",
        200,
        json={"workflow_id": wf, "agents": [agent], "parameters": {"text": "t"}},
        headers={**tenant.headers, "Prefer": "wait=10"},
    )
    receipts: list[str] = state["receipts"]
    return receipts


async def _receipt(client: TestClient, tenant: Tenant, receipt_id: str) -> Any:
    return await json_ok(client, "GET", f"/v1/receipts/{receipt_id}", 200, headers=tenant.headers)


async def test_a_tile_is_the_trees_hashes_and_is_immutable(
    client: TestClient, tenant_a: Tenant
) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    receipts = [
        await _receipt(client, tenant_a, r) for r in await _run(client, tenant_a, wf, agent)
    ]
    note = await (await client.get("/v1/log/checkpoint")).text()
    _, size, root = note.split("\n")[:3]
    assert int(size) < 256
    resp = await client.get(f"/v1/log/tile/0/000.p/{size}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    body = await resp.read()
    hashes = [body[i : i + 32] for i in range(0, len(body), 32)]
    assert len(hashes) == int(size)
    # The leaf hashes of the whole tree: they make the signed root, and each receipt's.
    assert base64.b64encode(merkle.root_hash(hashes)).decode() == root
    for r in receipts:
        assert base64.b64encode(hashes[r["leaf_index"]]).decode() == r["leaf_hash"]
    # A narrower partial tile is the same tile's first hashes.
    narrower = await client.get("/v1/log/tile/0/000.p/2")
    assert await narrower.read() == body[:64]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/log/tile/0/000",  # not full yet
        "/v1/log/tile/0/000.p/255",  # wider than the tree
        "/v1/log/tile/1/000.p/1",  # no complete 256-leaf subtree yet
        "/v1/log/tile/0/x000/000",  # not the tile's one spelling
        "/v1/log/tile/8/000",
        "/v1/log/tile/entries/000",  # leaves are tenants' events: never public
        "/v1/log/tile/0%2F000.p%2F1",  # the tile 0/000.p/1, but not its one spelling
        "/v1/log/tile/0/000%2Ep/1",
    ],
)
async def test_a_path_that_names_no_tile_of_the_tree_is_404_problem(
    client: TestClient, tenant_a: Tenant, path: str
) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    await _run(client, tenant_a, wf, agent)
    resp = await client.get(yarl.URL(path, encoded=True))
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/problem+json"
    # A tile the tree lacks now it will hold later: no cache may keep the 404.
    assert resp.headers["Cache-Control"] == "no-cache"
    assert (await client.get("/v1/log/tile/0/000.p/1")).status == 200


@pytest.mark.interop
@pytest.mark.skipif(not _HAVE_GO, reason="Go and golang-golang-x-mod-dev are not installed")
async def test_go_proves_inclusion_and_consistency_from_our_tiles(
    client: TestClient, tenant_a: Tenant, tmp_path: Path
) -> None:
    agent, wf = await setup_workflow(client, tenant_a)
    runs = [await _run(client, tenant_a, wf, agent)]
    old = await (await client.get("/v1/log/checkpoint")).text()
    # Past 512 leaves: two full level-0 tiles, a partial one, and a level-1 tile.
    while (await _receipt(client, tenant_a, runs[-1][-1]))["leaf_index"] < 600:
        runs.append(await _run(client, tenant_a, wf, agent))
    # A leaf in each level-0 tile: the first run's, a middle one's, the last one's.
    picked = [runs[0][3], runs[len(runs) // 2][0], runs[-1][-1]]
    leaves = [await _receipt(client, tenant_a, r) for r in picked]
    assert [r["leaf_index"] // 256 for r in leaves] == [0, 1, 2]
    key = await json_ok(client, "GET", "/v1/log/key", 200)
    case = {
        "base": f"http://{client.server.host}:{client.server.port}/v1/log",
        "vkey": key["vkey"],
        "old_note": old,
        "leaves": [{"index": r["leaf_index"], "hash": r["leaf_hash"]} for r in leaves],
    }
    env = {
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOCACHE": str(tmp_path / "gocache"),
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    # Awaited, not run: the server answering Go lives on this event loop.
    proc = await asyncio.create_subprocess_exec(
        "go",
        "run",
        str(PROGRAM),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(case).encode()), 240)
    assert out.decode().strip() == "ok", out.decode() + err.decode()


async def test_regression_the_checkpoint_is_not_cached_beyond_a_few_seconds(
    client: TestClient, tenant_a: Tenant
) -> None:
    # C2SP tlog-tiles: <prefix>/checkpoint is mutable, so its headers SHOULD prevent
    # caching beyond a few seconds. Without Cache-Control a 200 is heuristically
    # cacheable (RFC 9111 §4.2.2): a cache in front could serve an old tree for long.
    agent, wf = await setup_workflow(client, tenant_a)
    await _run(client, tenant_a, wf, agent)
    resp = await client.get("/v1/log/checkpoint")
    assert resp.status == 200
    directives = {d.strip() for d in resp.headers.get("Cache-Control", "").split(",")}
    assert "no-cache" in directives or "no-store" in directives, resp.headers
