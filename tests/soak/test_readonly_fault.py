"""Read-only data files under a running ``maip-ledger serve`` (issue #6: "make the database
file read-only for a while"), with real parts: an ext4 filesystem on a loop device, the
files made immutable with ``chattr +i`` (ext4 then refuses every write on the server's
already open descriptors), a real server subprocess, and a SIGKILL plus an unmount at
the end so what is checked is what reached the device.

Needs root (mount, losetup, chattr): it fails, loudly, rather than skip.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import Api, assert_unavailable, external, serving, size, steps, verify_all

from api.app import STORAGE_IDLE_PROBE_SECONDS, STORAGE_RECHECK_SECONDS
from bench import faultfs
from bench.soak import ServerProc, _fsck

SLOW_SECONDS = 2.0


@pytest.fixture
def ledger_on_ext4(tmp_path: Path) -> Iterator[tuple[faultfs.Ext4, ServerProc, Api, str]]:
    """A server over a data dir on its own ext4; everything is undone even on failure."""
    assert os.geteuid() == 0, "this test needs root (mount, losetup, chattr)"
    fs = faultfs.Ext4(tmp_path / "data", 64)
    fs.mount()
    try:
        with serving(fs.mountpoint, tmp_path / "server.log") as (server, api, vkey):
            yield fs, server, api, vkey
    finally:
        fs.close()


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
        oid, receipts = external(api)
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
            ("POST", f"/v1/orchestrations/{orchestrations[0]}/steps", steps("s1", agent), None),
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
            assert_unavailable(answer)
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
    _await_ready(api, 200, 10)
    # The stalled run resumes from the log and completes, its step recorded once.
    done = api.ok("GET", f"/v1/orchestrations/{run['orchestration_id']}?wait=20")
    assert done["status"] == "completed", done
    events = api.ok("GET", f"/v1/orchestrations/{run['orchestration_id']}/events")["events"]
    assert [e["stream_seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("step.completed") == 1
    acked.update(e["receipt_id"] for e in events)
    # Writes work again, from the same process.
    oid, receipts = external(api)
    orchestrations.append(oid)
    acked.update(receipts)
    answer = api.ok(
        "POST", f"/v1/orchestrations/{orchestrations[0]}/steps", steps("s1", agent), 201
    )
    acked.update(r["receipt_id"] for r in answer["receipts"])
    assert server.proc is not None
    assert server.proc.pid == pid
    assert server.proc.poll() is None
    assert server.starts == 1
    assert size(api.ok("GET", "/v1/log/checkpoint")) > size(before)
    assert verify_all(api, vkey, orchestrations, acked) == len(acked)

    # What reached the device: SIGKILL, drop the page cache, fsck, and look again.
    server.stop(signal.SIGKILL)
    fs.cycle()
    report = _fsck(fs.mountpoint)
    assert report["ok"], report
    server.start()
    assert verify_all(api, vkey, orchestrations, acked) == len(acked)


def test_readonly_fault_on_an_idle_server_is_seen_without_a_write(
    ledger_on_ext4: tuple[faultfs.Ext4, ServerProc, Api, str],
) -> None:
    """No client writes while the files turn read-only: the server's own idle probe
    takes it out of readiness, and back in once the files are writable again."""
    fs, _, api, _ = ledger_on_ext4
    oid, _ = external(api)
    before = api.ok("GET", f"/v1/orchestrations/{oid}")
    assert api.call("GET", "/readyz")[0] == 200
    frozen = faultfs.freeze(fs.mountpoint)
    try:
        ready = _await_ready(api, 503, STORAGE_IDLE_PROBE_SECONDS + STORAGE_RECHECK_SECONDS + 5)
        assert ready["log_healthy"] is False
        assert api.call("GET", "/healthz")[0] == 200
        assert api.ok("GET", f"/v1/orchestrations/{oid}") == before  # reads go on
    finally:
        faultfs.thaw(frozen)
    _await_ready(api, 200, 10)
    external(api)  # and writes work again


def _await_ready(api: Api, status: int, seconds: float) -> Any:
    """Poll /readyz until it answers ``status``; its body."""
    deadline = time.monotonic() + seconds
    while (answer := api.call("GET", "/readyz"))[0] != status:
        assert time.monotonic() < deadline, f"/readyz not {status} within {seconds:g} s: {answer}"
        time.sleep(0.1)
    return answer[2]
