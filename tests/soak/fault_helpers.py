"""Shared by the storage-fault tests: a small HTTP client for a ``maip-ledger serve``
subprocess (``bench.soak.ServerProc``) and the checks they make after a fault."""

from __future__ import annotations

import base64
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import verifier
from bench.soak import ServerProc, _create_key, _free_port, _write_signing_key

TENANT = "soak"  # bench.soak's key belongs to this tenant


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


def external(api: Api) -> tuple[str, list[str]]:
    body = {"executor": "external", "agent_id": None, "input": {}}
    created = api.ok("POST", "/v1/orchestrations", body, want=202)
    return created["orchestration_id"], list(created["receipts"])


def steps(step_id: str, agent_id: str) -> dict[str, Any]:
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


def size(note: str) -> int:
    """The tree size of a checkpoint note (its second line)."""
    return int(note.splitlines()[1])


def assert_unavailable(answer: tuple[int, dict[str, str], Any]) -> None:
    status, headers, body = answer
    assert status == 503, answer
    assert headers.get("Content-Type", "").startswith("application/problem+json"), answer
    assert body["status"] == 503, answer
    assert body["type"].endswith("/unavailable"), answer
    assert "Retry-After" in headers, answer


def verify_all(api: Api, vkey: str, orchestrations: list[str], acked: set[str]) -> int:
    """Every acknowledged receipt is stored and verifies offline; returns how many."""
    leaves = {}
    for oid in orchestrations:
        status, _, body = api.call("GET", f"/v1/orchestrations/{oid}/events")
        assert status == 200, f"acknowledged orchestration {oid}: {status} {body}"
        for event in body["events"]:
            leaves[event["receipt_id"]] = base64.b64decode(event["leaf"])
    missing = acked - leaves.keys()
    assert not missing, f"acknowledged but not stored: {sorted(missing)[:5]}"
    for rid in acked:
        receipt = api.ok("GET", f"/v1/receipts/{rid}")
        verifier.verify_receipt(receipt, leaves[rid], vkey)
    return len(acked)


@contextmanager
def serving(data_dir: Path, log_path: Path) -> Iterator[tuple[ServerProc, Api, str]]:
    """A fresh ledger in ``data_dir`` served by a subprocess: (server, client, vkey). The
    server is SIGKILLed on the way out if it still runs."""
    server = ServerProc(data_dir, _free_port(), log_path)
    try:
        vkey = _write_signing_key(data_dir)
        api = Api(server.url, _create_key(data_dir))
        server.start()
        yield server, api, vkey
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
