"""SIGTERM and log hygiene, against `maip-ledger serve` as a real subprocess."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import jwt
import pytest
from api_helpers import THREE_STEP, scripted, write_signing_key
from api_server import Server, key_headers

SCOPES = "orchestrations:write,orchestrations:read,agents:write,workflows:write"


@pytest.mark.slow
def test_sigterm_stops_runs_at_a_step_boundary_and_they_resume(tmp_path: Path) -> None:
    write_signing_key(tmp_path)
    h = key_headers(tmp_path, "acme", SCOPES)
    server = Server(tmp_path)
    try:
        slow = server.json(
            "POST",
            "/v1/agents",
            201,
            body={"name": "slow", "provider": scripted(delay=1.0)},
            headers=h,
        )
        wf = server.json(
            "POST", "/v1/workflows", 201, body={"name": "w", "definition": THREE_STEP}, headers=h
        )
        running = server.json(
            "POST",
            "/v1/orchestrations/execute",
            202,
            body={"workflow_id": wf["workflow_id"], "agents": [slow["agent_id"]]},
            headers=h,
        )
        time.sleep(0.3)  # the llm step is in flight
    finally:
        assert server.stop(signal.SIGTERM) == 0  # a clean, graceful exit
    oid = running["orchestration_id"]
    server = Server(tmp_path)
    try:
        done = server.json("GET", f"/v1/orchestrations/{oid}?wait=30", 200, headers=h)
        assert done["status"] == "completed"
        events = server.json("GET", f"/v1/orchestrations/{oid}/events", 200, headers=h)["events"]
    finally:
        assert server.stop(signal.SIGTERM) == 0
    completed = [e["payload"]["step_id"] for e in events if e["type"] == "step.completed"]
    assert sorted(completed) == ["classify", "extract", "route"]  # none ran to completion twice
    assert [e["stream_seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.slow
def test_log_lines_never_carry_a_credential(tmp_path: Path) -> None:
    write_signing_key(tmp_path)
    h = key_headers(tmp_path, "acme", SCOPES)
    secret = "s" * 40
    token = jwt.encode(
        {"tenant": "acme", "scope": SCOPES.replace(",", " "), "exp": int(time.time()) + 60},
        secret,
        algorithm="HS256",
    )
    server = Server(tmp_path, env={"MAIP_LOG_LEVEL": "debug", "MAIP_JWT_HS256_SECRET": secret})
    try:
        for headers in (
            h,
            {"Authorization": f"Bearer {token}", "X-Tenant-ID": "acme"},
            {**h, "X-API-Key": h["X-API-Key"] + "x"},  # a failed attempt too
        ):
            server.request("GET", "/v1/orchestrations", headers=headers)
            server.request("POST", "/v1/agents", {"name": "a", "provider": scripted()}, headers)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        out, err = server.proc.communicate(timeout=30)
    logs = out + err
    assert '"event"' in logs  # the server did log, as JSON lines, at debug level
    secret_part = h["X-API-Key"].rsplit("_", 1)[1]
    for leaked in (secret_part, token, token.split(".")[2], secret):
        assert leaked not in logs
