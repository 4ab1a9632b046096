"""The log submits its checkpoints to witnesses and publishes their cosignatures
(specs/log-format.md §9.6): the real server on loopback, a real ``maip-verify witness``
subprocess, real SQLite files, checked with the verifier's public API and CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from api_helpers import json_ok, new_tenant, scripted, setup_workflow
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from witness_process import WITNESS_NAME, Witness, free_port

from api.app import create_app
from api.config import Config
from api.services import SERVICES
from ledger.cosignature_store import SQLiteCosignatureStore
from verifier import (
    QuorumNotMet,
    WitnessSigner,
    monitor_once,
    parse_vkey,
    verify_checkpoint,
    verify_cosignature,
    verify_witnessed,
    witness_policy,
)
from verifier.cli import urllib_fetcher

pytestmark = pytest.mark.slow

BACKOFF = (0.02, 0.2)
#: A witness key name holding "=", as a URL may: the split is still found.
A_WITNESS_VKEY = WitnessSigner(
    "witness.test/w=1", Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
).key.vkey
VERIFY = Path(sys.executable).parent / "maip-verify"


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Wait for ``check`` to return something truthy (a bound on waiting, not a timing
    assertion: nothing here depends on how long it takes)."""
    for _ in range(1200):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[TestClient]:
    app = create_app(config, witness_backoff=BACKOFF)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def with_witnesses(config: Config, *entries: str) -> Config:
    return Config(**{**_fields(config), "witnesses": entries})


def _fields(config: Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def log_vkey(config: Config) -> str:
    from ledger.keys import KEY_FILE, load_signer

    return load_signer(config.data_dir / KEY_FILE).verifier.vkey


async def append(client: TestClient, tenant_headers: dict[str, str], n: int) -> None:
    for i in range(n):
        await json_ok(
            client,
            "POST",
            "/v1/agents",
            201,
            json={"name": f"a{i}", "provider": scripted()},
            headers=tenant_headers,
        )


async def witnessed(client: TestClient, query: str = "") -> tuple[int, str]:
    resp = await client.get("/v1/log/checkpoint/witnessed" + query)
    return resp.status, await resp.text()


def size_of(note: str) -> int:
    return int(note.split("\n")[1])


async def witnessed_at(client: TestClient, size: int) -> str:
    async def check() -> str | None:
        status, body = await witnessed(client)
        return body if status == 200 and size_of(body) == size else None

    note: str = await eventually(check, f"a witnessed checkpoint of size {size}")
    return note


async def failures(client: TestClient, reason: str) -> float:
    """The witness's failed submissions for ``reason``, as /metrics says."""
    text = await (await client.get("/metrics")).text()
    prefix = f'maip_witness_failures_total{{reason="{reason}",witness="{WITNESS_NAME}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VERIFY), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def witness(tmp_path: Path, config: Config) -> Any:
    w = Witness(tmp_path / "witness", log_vkey(config), free_port()).start()
    try:
        yield w
    finally:
        w.stop()


async def test_appends_are_cosigned_published_and_verify(
    config: Config, witness: Witness, tmp_path: Path
) -> None:
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    vkey = log_vkey(config)
    async with serving(config) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
        status, _ = await witnessed(client)
        assert status == 404  # nothing is signed yet, let alone cosigned
        await append(client, tenant.headers, 3)
        log = client.app[SERVICES].log
        first = log.size
        await append(client, tenant.headers, 4)
        size = log.size
        note = await witnessed_at(client, size)

        # The log's signature, then the witness's cosignature, on the latest checkpoint.
        assert verify_checkpoint(note, parse_vkey(vkey)).size == size
        (cosignature,) = verify_witnessed(note, witness_policy([witness.vkey]))
        assert cosignature.witness == witness.vkey
        line = note.rstrip("\n").split("\n")[-1]
        assert line.startswith(f"\u2014 {WITNESS_NAME} ")
        verify_cosignature(note, line, witness.vkey)
        # /v1/log/checkpoint stays the log-signed note the receipts use.
        latest = await (await client.get("/v1/log/checkpoint")).text()
        assert latest == note.removesuffix(line + "\n")
        with pytest.raises(QuorumNotMet):
            verify_witnessed(latest, witness_policy([witness.vkey]))

        # maip-verify consistency --witness: an old checkpoint to the witnessed one.
        old = await (await client.get(f"/v1/log/checkpoints/{first}")).text()
        proof = await json_ok(
            client, "GET", f"/v1/log/proof/consistency?first={first}&second={size}", 200
        )
        (tmp_path / "old.txt").write_text(old)
        (tmp_path / "new.txt").write_text(note)
        (tmp_path / "proof.json").write_text(json.dumps(proof))
        args = ["consistency", str(tmp_path / "old.txt"), str(tmp_path / "new.txt")]
        args += ["--proof", str(tmp_path / "proof.json"), "--vkey", vkey]
        done = verify_cli(*args, "--witness", witness.vkey)
        assert done.returncode == 0, done.stderr
        # The log-signed note alone does not meet the quorum.
        (tmp_path / "new.txt").write_text(latest)
        assert verify_cli(*args, "--witness", witness.vkey).returncode == 1

        # maip-verify receipt --witness: the receipt proven against the witnessed
        # checkpoint, as GET /v1/receipts/{id}/witnessed serves it.
        (event,) = await log.read_log(0, 1)
        issued = await json_ok(
            client, "GET", f"/v1/receipts/{event.receipt_id}", 200, headers=tenant.headers
        )
        assert issued["tree_size"] < size  # issued at once, before the witness saw it
        witnessed_receipt = await json_ok(
            client, "GET", f"/v1/receipts/{event.receipt_id}/witnessed", 200, headers=tenant.headers
        )
        assert witnessed_receipt["tree_size"] == size
        assert witnessed_receipt["checkpoint"] == note
        assert witnessed_receipt["receipt_id"] == issued["receipt_id"]
        (tmp_path / "leaf").write_bytes(event.leaf)
        receipt_args = ["--leaf", str(tmp_path / "leaf"), "--vkey", vkey]
        for body, code in ((witnessed_receipt, 0), (issued, 1)):
            (tmp_path / "receipt.json").write_text(json.dumps(body))
            done = verify_cli(
                "receipt", str(tmp_path / "receipt.json"), *receipt_args, "--witness", witness.vkey
            )
            assert done.returncode == code, done.stderr
        # Another tenant's receipt is not found, witnessed or not.
        other = new_tenant(client.app[SERVICES].keys, "tenant-x")
        await json_ok(
            client, "GET", f"/v1/receipts/{event.receipt_id}/witnessed", 404, headers=other.headers
        )
        # A receipt the witnessed checkpoint does not cover yet: 404, no-cache.
        witness.stop()  # the witnessed checkpoint stays where it is
        await append(client, tenant.headers, 1)
        (newest,) = await log.read_log(log.size - 1, 1)
        answer = await client.get(
            f"/v1/receipts/{newest.receipt_id}/witnessed", headers=tenant.headers
        )
        assert answer.status == 404
        assert answer.headers["Cache-Control"] == "no-cache"
        assert "does not cover leaf" in (await answer.json())["detail"]

        # The metrics say how far the witness has cosigned.
        metrics = await (await client.get("/metrics")).text()
        assert f'maip_witness_cosigned_tree_size{{witness="{WITNESS_NAME}"}} {size}.0' in metrics


async def test_regression_the_monitor_with_witnesses_reads_the_witnessed_checkpoint(
    config: Config, witness: Witness, tmp_path: Path
) -> None:
    """``maip-verify monitor --witness`` read /v1/log/checkpoint, which never carries a
    cosignature, so against this server it failed every round."""
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    policy = witness_policy([witness.vkey])
    state = tmp_path / "monitor.json"
    async with serving(config) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-m")
        await append(client, tenant.headers, 2)
        fetch = urllib_fetcher(str(client.make_url("")))
        log = client.app[SERVICES].log
        for outcome in ("initialized", "extended"):
            size = log.size
            await witnessed_at(client, size)
            # In a thread: the fetcher blocks, and this loop serves its requests.
            result = await asyncio.to_thread(
                monitor_once, fetch, log_vkey(config), state, witnesses=policy
            )
            assert (result.outcome, result.new_size) == (outcome, size)
            await append(client, tenant.headers, 3)


async def test_min_cosignatures_is_checked_and_named(config: Config, witness: Witness) -> None:
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    async with serving(config) as client:
        for query in ("?min_cosignatures=2", "?min_cosignatures=0", "?min_cosignatures=x"):
            resp = await client.get("/v1/log/checkpoint/witnessed" + query)
            assert resp.status == 400, query
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
            assert problem["errors"][0]["field"] == "min_cosignatures"


async def test_without_witnesses_the_witnessed_checkpoint_is_404(config: Config) -> None:
    async with serving(config) as client:
        resp = await client.get("/v1/log/checkpoint/witnessed")
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_a_witness_restarted_with_stale_state_is_caught_up(
    config: Config, witness: Witness, tmp_path: Path
) -> None:
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    async with serving(config) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
        log = client.app[SERVICES].log
        await append(client, tenant.headers, 2)
        stale = log.size
        await witnessed_at(client, stale)
        witness.stop()
        witness.snapshot(tmp_path / "stale")
        witness.start()
        await append(client, tenant.headers, 2)
        await witnessed_at(client, log.size)
        # The witness loses what it cosigned since the snapshot: it is at `stale` again,
        # while the log believes it at a larger size.
        witness.stop()
        witness.restore(tmp_path / "stale")
        witness.start()
        await append(client, tenant.headers, 3)
        note = await witnessed_at(client, log.size)
        verify_witnessed(note, witness_policy([witness.vkey]))
    # The witness told the log its size (409 text/x.tlog.size), and the log sent a proof
    # from there.
    assert any(" 409 " in line for line in witness.stderr), witness.stderr


async def test_a_log_that_lost_its_cosignatures_learns_the_witness_size(
    config: Config, witness: Witness
) -> None:
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    async with serving(config) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
        await append(client, tenant.headers, 3)
        await witnessed_at(client, client.app[SERVICES].log.size)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.cosignatures_path}{suffix}").unlink(missing_ok=True)
    async with serving(config) as client:
        await append(client, new_tenant(client.app[SERVICES].keys, "tenant-x").headers, 2)
        note = await witnessed_at(client, client.app[SERVICES].log.size)
        verify_witnessed(note, witness_policy([witness.vkey]))
    assert any(" 409 " in line for line in witness.stderr), witness.stderr


class _BlackHole:
    """A loopback server that takes add-checkpoint requests and never answers them."""

    def __init__(self) -> None:
        self.held = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.held += 1
        await self.release.wait()
        raise ConnectionResetError("dropped")


async def test_a_witness_that_is_down_neither_blocks_appends_nor_is_forgotten(
    config: Config, tmp_path: Path
) -> None:
    port = free_port()
    future = Witness(tmp_path / "witness", log_vkey(config), port)
    # The witness's key is made now, so the log can be configured with its vkey.
    future.start()
    vkey = future.vkey
    future.stop()
    hole = _BlackHole()
    app = web.Application()
    app.router.add_post("/add-checkpoint", hole.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    config = with_witnesses(config, f"{future.url}={vkey}")
    try:
        async with serving(config) as client:
            tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
            log = client.app[SERVICES].log
            await append(client, tenant.headers, 2)
            await eventually(lambda: _true(hole.held > 0), "a submission to the witness")
            # The submission is still unanswered, yet appends go on and are receipted.
            await append(client, tenant.headers, 5)
            assert hole.held == 1  # one request in flight per witness: the rest coalesce
            assert not hole.release.is_set()
            status, _ = await witnessed(client)
            assert status == 404
            # Now the witness is down altogether: connections are refused.
            hole.release.set()
            await runner.cleanup()
            runner = None
            await append(client, tenant.headers, 1)

            async def failed() -> bool:
                return await failures(client, "unreachable") >= 1

            await eventually(failed, "an unreachable witness counted")
            status, _ = await witnessed(client)
            assert status == 404
            # It comes back: the log catches it up on the newest checkpoint.
            future.start()
            try:
                note = await witnessed_at(client, log.size)
                verify_witnessed(note, witness_policy([vkey]))
            finally:
                future.stop()
    finally:
        if runner is not None:
            hole.release.set()
            await runner.cleanup()


async def _true(value: bool) -> bool:
    return value


async def test_a_bad_cosignature_is_never_published(
    config: Config, witness: Witness, tmp_path: Path
) -> None:
    """A proxy in front of the real witness flips one bit of each cosignature."""
    import aiohttp

    session = aiohttp.ClientSession()
    flipped = 0

    async def tamper(request: web.Request) -> web.Response:
        nonlocal flipped
        async with session.post(witness.url, data=await request.read()) as resp:
            body = await resp.read()
            if resp.status == 200:
                name, _, b64 = body.decode().rstrip("\n").rpartition(" ")
                blob = bytearray(base64.b64decode(b64))
                blob[-1] ^= 0x01
                body = f"{name} {base64.b64encode(bytes(blob)).decode()}\n".encode()
                flipped += 1
            return web.Response(status=resp.status, body=body, content_type=resp.content_type)

    app = web.Application()
    app.router.add_post("/add-checkpoint", tamper)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = with_witnesses(config, f"http://127.0.0.1:{port}/add-checkpoint={witness.vkey}")
    try:
        async with serving(config) as client:
            tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
            await append(client, tenant.headers, 3)

            async def refused_twice() -> bool:
                return await failures(client, "bad_cosignature") >= 2

            await eventually(refused_twice, "two bad cosignatures refused")
            status, _ = await witnessed(client)
            assert status == 404
        store = SQLiteCosignatureStore(config.cosignatures_path, read_only=True)
        await store.open()
        try:
            assert await store.cosigned_sizes() == {}
        finally:
            await store.close()
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_cosignature_by_another_key_is_never_published(
    config: Config, tmp_path: Path
) -> None:
    """The URL's witness is real, but not the one whose key the log was given."""
    vkey = log_vkey(config)
    real = Witness(tmp_path / "real", vkey, free_port()).start()
    other = Witness(tmp_path / "other", vkey, free_port()).start()
    other.stop()
    config = with_witnesses(config, f"{real.url}={other.vkey}")
    try:
        async with serving(config) as client:
            tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
            await append(client, tenant.headers, 2)

            async def refused() -> bool:
                return await failures(client, "bad_cosignature") >= 1

            await eventually(refused, "a cosignature by another key refused")
            status, _ = await witnessed(client)
            assert status == 404
    finally:
        real.stop()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("no-equals-sign", "expected URL=VKEY"),
        ("http://127.0.0.1:1/add-checkpoint=not+a+key", "expected URL=VKEY"),
        ("ftp://127.0.0.1/add-checkpoint={vkey}", "not an http(s) URL"),
        ("http://127.0.0.1:1/add-checkpoint={log_vkey}", "type 0x04"),
    ],
)
def test_a_bad_witness_flag_is_one_line_and_exit_2(
    tmp_path: Path, config: Config, value: str, says: str
) -> None:
    entry = value.format(vkey=A_WITNESS_VKEY, log_vkey=log_vkey(config))
    for how in ("flag", "env"):
        argv = [str(Path(sys.executable).parent / "maip-ledger"), "serve"]
        argv += ["--data-dir", str(config.data_dir), "--port", "0"]
        env = {**os.environ}
        if how == "flag":
            argv += ["--witness", entry]
        else:
            env["MAIP_WITNESSES"] = entry
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=env, check=False
        )
        assert done.returncode == 2, (how, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "witnesses (MAIP_WITNESSES) #1" in done.stderr
        assert says in done.stderr, done.stderr


def test_a_witness_given_twice_is_refused(config: Config) -> None:
    from api.errors import ConfigError

    entry = f"http://127.0.0.1:1/a={A_WITNESS_VKEY}"
    with pytest.raises(ConfigError, match="given twice"):
        Config.load({}, data_dir=config.data_dir, witnesses=[entry, entry])
    with pytest.raises(ConfigError, match="#2"):
        Config.load({"MAIP_WITNESSES": f"{entry}  \n {entry}"}, data_dir=config.data_dir)


def test_a_url_with_an_equals_sign_parses(config: Config) -> None:
    vkey = A_WITNESS_VKEY
    loaded = Config.load({}, data_dir=config.data_dir, witnesses=[f"http://h:8/a?x=1={vkey}"])
    (endpoint,) = loaded.witness_endpoints()
    assert endpoint.url == "http://h:8/a?x=1"
    assert endpoint.key.vkey == vkey


async def test_a_witnessed_export_passes_maip_verify_bundle_witness(
    config: Config, witness: Witness, tmp_path: Path
) -> None:
    config = with_witnesses(config, f"{witness.url}={witness.vkey}")
    vkey = log_vkey(config)
    async with serving(config) as client:
        tenant = new_tenant(client.app[SERVICES].keys, "tenant-w")
        agent, wf = await setup_workflow(client, tenant)
        resp = await client.post(
            "/v1/orchestrations/execute",
            json={"workflow_id": wf, "agents": [agent]},
            headers={**tenant.headers, "Prefer": "wait=10"},
        )
        state = await resp.json()
        assert state["status"] == "completed", state
        await witnessed_at(client, client.app[SERVICES].log.size)
        path = f"/v1/orchestrations/{state['orchestration_id']}/bundle"
        for name, query in (("route-plain", ""), ("route-witnessed", "?witnessed=true")):
            resp = await client.get(path + query, headers=tenant.headers)
            assert resp.status == 200, await resp.text()
            (tmp_path / f"{name}.jsonl").write_bytes(await resp.read())
        for query, field in (
            ("?witnessed=yes", "witnessed"),
            ("?min_cosignatures=1", "min_cosignatures"),
        ):
            resp = await client.get(path + query, headers=tenant.headers)
            assert resp.status == 400
            assert (await resp.json())["errors"][0]["field"] == field
    maip_ledger = str(Path(sys.executable).parent / "maip-ledger")
    oid = state["orchestration_id"]
    common = [oid, "--data-dir", str(config.data_dir), "--tenant", "tenant-w"]
    for name, extra in (("plain", []), ("witnessed", ["--witnessed"])):
        done = subprocess.run(
            [maip_ledger, "export", *common, *extra, "-o", str(tmp_path / f"{name}.jsonl")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    check = ["--vkey", vkey, "--witness", witness.vkey]
    for witnessed_bundle, plain_bundle in (
        ("witnessed.jsonl", "plain.jsonl"),
        ("route-witnessed.jsonl", "route-plain.jsonl"),  # GET .../bundle?witnessed=true
    ):
        done = verify_cli("bundle", str(tmp_path / witnessed_bundle), *check)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "still running" not in done.stdout
        # The latest checkpoint is the header otherwise: it carries no cosignature.
        done = verify_cli("bundle", str(tmp_path / plain_bundle), *check)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "cosignature" in done.stderr
    # Two witnesses asked of a log that has one: one line, exit 2.
    done = subprocess.run(
        [maip_ledger, "export", *common, "--witnessed", "--min-cosignatures", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MAIP_WITNESSES": f"{witness.url}={witness.vkey}"},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "cosignatures from 2 witness" in done.stderr
