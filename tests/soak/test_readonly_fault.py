"""Read-only data files under a running ``maip-ledger serve`` (issue #6: "make the database
file read-only for a while"), with real parts: an ext4 filesystem on a loop device, the
files made immutable with ``chattr +i`` (ext4 then refuses every write on the server's
already open descriptors), a real server subprocess, and a SIGKILL plus an unmount at
the end so what is checked is what reached the device.

Needs root (mount, losetup, chattr): it fails, loudly, rather than skip.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import verifier
from bench import faultfs
from bench.soak import ServerProc, _create_key, _free_port, _fsck, _write_signing_key

TENANT = "soak"  # bench.soak's key belongs to this tenant
SLOW_SECONDS = 2.0


class Api:
    """Just enough of an HTTP client: (status, headers, decoded body or raw text)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.headers = {"X-API-Key": api_key, "X-Tenant-ID": TENANT}

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={**self.headers, **(headers or {}), "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, dict(e.headers), e.read()
        try:
            return status, hdrs, json.loads(raw)
        except ValueError:
            return status, hdrs, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        status, _, data = self.call(method, path, body)
        assert status == want, (method, path, status, data)
        return data


@pytest.fixture
def ledger_on_ext4(tmp_path: Path) -> Iterator[tuple[faultfs.Ext4, ServerProc, Api, str]]:
    """A server over a data dir on its own ext4; everything is undone even on failure."""
    assert faultfs.os.geteuid() == 0, "this test needs root (mount, losetup, chattr)"
    fs = faultfs.Ext4(tmp_path / "data", 64)
    fs.mount()
    server = ServerProc(fs.mountpoint, _free_port(), tmp_path / "server.log")
    try:
        vkey = _write_signing_key(fs.mountpoint)
        api = Api(server.url, _create_key(fs.mountpoint))
        server.start()
        yield fs, server, api, vkey
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
        fs.close()


def _external(api: Api) -> tuple[str, list[str]]:
    body = {"executor": "external", "agent_id": None, "input": {}}
    created = api.ok("POST", "/v1/orchestrations", body, want=202)
    return created["orchestration_id"], list(created["receipts"])


def _steps(step_id: str, agent_id: str) -> dict[str, Any]:
    started = {
        "step_id": step_id,
        "agent_id": agent_id,
        "action": "decision",
        "attempt": 1,
        "inputs": {},
    }
    completed = {"step_id": step_id, "attempt": 1, "output": "ok"}
    return {
        "events": [
            {"type": "step.started", "payload": started},
            {"type": "step.completed", "payload": completed},
        ]
    }


def _size(note: str) -> int:
    """The tree size of a checkpoint note (its second line)."""
    return int(note.splitlines()[1])


def _assert_unavailable(answer: tuple[int, dict[str, str], Any]) -> None:
    status, headers, body = answer
    assert status == 503, answer
    assert headers.get("Content-Type", "").startswith("application/problem+json"), answer
    assert body["status"] == 503, answer
    assert body["type"].endswith("/unavailable"), answer
    assert "Retry-After" in headers, answer


def _verify_all(api: Api, vkey: str, orchestrations: list[str], acked: set[str]) -> int:
    """Every acknowledged receipt is stored and verifies offline; returns how many."""
    leaves = {}
    for oid in orchestrations:
        for event in api.ok("GET", f"/v1/orchestrations/{oid}/events")["events"]:
            leaves[event["receipt_id"]] = base64.b64decode(event["leaf"])
    missing = acked - leaves.keys()
    assert not missing, f"acknowledged but not stored: {sorted(missing)[:5]}"
    for rid in acked:
        receipt = api.ok("GET", f"/v1/receipts/{rid}")
        verifier.verify_receipt(receipt, leaves[rid], vkey)
    return len(acked)


@pytest.mark.slow
def test_readonly_fault_under_a_running_server_is_503_then_recovers_without_restart(
    ledger_on_ext4: tuple[faultfs.Ext4, ServerProc, Api, str],
) -> None:
    fs, server, api, vkey = ledger_on_ext4
    assert server.proc is not None
    pid = server.proc.pid
    # An engine run whose one step takes SLOW_SECONDS, so the fault lands mid-run.
    agent = api.ok(
        "POST",
        "/v1/agents",
        {
            "name": "slow-agent",
            "provider": {
                "kind": "scripted",
                "responses": [{"content": "done", "delay_seconds": SLOW_SECONDS}],
            },
        },
        want=201,
    )["agent_id"]
    workflow = api.ok(
        "POST",
        "/v1/workflows",
        {
            "name": "slow",
            "definition": {
                "steps": [{"id": "think", "action": "llm", "agent": "slow-agent", "prompt": "x"}]
            },
        },
        want=201,
    )["workflow_id"]
    orchestrations: list[str] = []
    acked: set[str] = set()
    for _ in range(5):
        oid, receipts = _external(api)
        orchestrations.append(oid)
        acked.update(receipts)
    before = api.ok("GET", "/v1/log/checkpoint")

    run = api.ok(
        "POST",
        "/v1/orchestrations/execute",
        {"workflow_id": workflow, "agents": [agent], "parameters": {}},
        want=202,
    )
    orchestrations.append(run["orchestration_id"])
    acked.update(run["receipts"])
    # Freeze once the run's slow call is under way (its start is durable by then).
    deadline = time.monotonic() + SLOW_SECONDS
    while True:
        events = api.ok("GET", f"/v1/orchestrations/{run['orchestration_id']}/events")["events"]
        if "llm.requested" in [e["type"] for e in events]:
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.02)
    started = api.ok("GET", "/v1/log/checkpoint")
    first = api.ok("GET", f"/v1/orchestrations/{orchestrations[0]}")

    frozen = faultfs.freeze(fs.mountpoint)
    try:
        # Writes of every kind: 503 problem+json, never a 500, nothing acknowledged.
        writes: list[tuple[str, str, Any, dict[str, str] | None]] = [
            ("POST", "/v1/orchestrations", {"executor": "external", "input": {}}, None),
            (
                "POST",
                "/v1/orchestrations",
                {"executor": "external", "input": {"k": 1}},
                {"Idempotency-Key": "during-the-fault"},
            ),
            ("POST", f"/v1/orchestrations/{orchestrations[0]}/steps", _steps("s1", agent), None),
            (
                "POST",
                "/v1/orchestrations/execute",
                {"workflow_id": workflow, "agents": [agent], "parameters": {}},
                None,
            ),
            ("POST", f"/v1/orchestrations/{orchestrations[1]}/cancel", {"reason": "x"}, None),
        ]
        with ThreadPoolExecutor(len(writes)) as pool:
            answers = list(pool.map(lambda w: api.call(*w), writes))
        for answer in answers:
            _assert_unavailable(answer)
        status, _, ready = api.call("GET", "/readyz")
        assert status == 503, ready
        assert ready["ready"] is False
        assert api.call("GET", "/healthz")[0] == 200
        # Reads keep working, and nothing new was signed or published.
        assert api.ok("GET", "/v1/log/checkpoint") == started
        assert api.ok("GET", f"/v1/orchestrations/{orchestrations[0]}") == first
        for rid in sorted(acked)[:5]:
            api.ok("GET", f"/v1/receipts/{rid}")
        # The engine run's step finishes while the files are read-only: its events are
        # refused, so it stalls (it must not be lost, nor need a restart to go on).
        deadline = time.monotonic() + SLOW_SECONDS + 10
        while "orchestration.stalled" not in server.log_path.read_text():
            assert time.monotonic() < deadline, server.tail(5)
            time.sleep(0.1)
        assert api.ok("GET", "/v1/log/checkpoint") == started
    finally:
        faultfs.thaw(frozen)

    # No client write is needed to notice: the server probes storage by itself.
    deadline = time.monotonic() + 10
    while api.call("GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready 10 s after the files were writable"
        time.sleep(0.1)
    # The stalled run resumes from the log and completes, its step recorded once.
    done = api.ok("GET", f"/v1/orchestrations/{run['orchestration_id']}?wait=20")
    assert done["status"] == "completed", done
    events = api.ok("GET", f"/v1/orchestrations/{run['orchestration_id']}/events")["events"]
    assert [e["stream_seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("step.completed") == 1
    acked.update(e["receipt_id"] for e in events)
    # Writes work again, from the same process.
    oid, receipts = _external(api)
    orchestrations.append(oid)
    acked.update(receipts)
    steps = _steps("s1", agent)
    answer = api.ok("POST", f"/v1/orchestrations/{orchestrations[0]}/steps", steps, 201)
    acked.update(r["receipt_id"] for r in answer["receipts"])
    assert server.proc is not None
    assert server.proc.pid == pid
    assert server.proc.poll() is None
    assert server.starts == 1
    assert _size(api.ok("GET", "/v1/log/checkpoint")) > _size(before)
    assert _verify_all(api, vkey, orchestrations, acked) == len(acked)

    # What reached the device: SIGKILL, drop the page cache, fsck, and look again.
    server.stop(signal.SIGKILL)
    fs.cycle()
    report = _fsck(fs.mountpoint)
    assert report["ok"], report
    server.start()
    assert _verify_all(api, vkey, orchestrations, acked) == len(acked)
