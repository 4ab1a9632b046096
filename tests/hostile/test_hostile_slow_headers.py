"""Slow request heads and connection floods against a real ``maip-ledger serve`` on
loopback, with raw sockets: a client that trickles its headers is cut off (408
problem+json) once the header timeout passes, one that sends nothing is closed, clients
over the connection cap get 503 problem+json — and well-behaved keep-alive clients, and
the server itself, are unaffected."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

BIN = Path(sys.executable).parent / "maip-ledger"


@contextmanager
def _serve(data: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """A server on an ephemeral loopback port; yields the port."""
    proc = subprocess.Popen(
        [str(BIN), "serve", "--data-dir", str(data), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MAIP_LOG_LEVEL": "warning", **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """One Content-Length response off a kept-alive connection: (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), body


def _problem(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), raw
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.slow
def test_hostile_slowloris_headers_are_cut_off_after_the_header_timeout(tmp_path: Path) -> None:
    """Regression: aiohttp has no header read timeout, so a client sending its request
    head a byte at a time held the connection for as long as it kept sending."""
    with _serve(tmp_path, "--header-timeout-seconds", "1") as port:
        # A head trickled a byte every 0.1 s for 0.8 s, then nothing: the bound counts
        # from the connection, not from the last byte — 408 at 1 s.
        slow = _connect(port)
        start = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.monotonic() - start < 0.8:
            slow.sendall(b"a")
            time.sleep(0.1)
        status, problem = _problem(_read_to_eof(slow))
        assert 0.9 < time.monotonic() - start < 5
        slow.close()
        assert (status, problem["status"]) == (408, 408)
        assert str(problem["type"]).endswith("/request-timeout")

        # One that keeps trickling is cut off all the same (the 408 may be lost to the
        # reset its next byte draws).
        slow = _connect(port)
        start = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - start < 10:
                slow.sendall(b"a")
                time.sleep(0.1)
        with contextlib.suppress(ConnectionResetError):
            _read_to_eof(slow)
        cut_off = time.monotonic() - start
        slow.close()
        assert cut_off < 5, f"still open after {cut_off:.1f} s"

        # A connection that never sends a byte is closed too, without an answer.
        silent = _connect(port)
        start = time.monotonic()
        assert _read_to_eof(silent) == b""
        assert 0.5 < time.monotonic() - start < 5
        silent.close()

        # A keep-alive client that sends its requests promptly is unaffected, for longer
        # in total than the timeout.
        kept = _connect(port)
        start = time.monotonic()
        for _ in range(6):
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = _response(kept)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            time.sleep(0.4)
        assert time.monotonic() - start > 2
        kept.close()


@pytest.mark.slow
async def test_hostile_keep_alive_clients_and_slow_handlers_are_unaffected(tmp_path: Path) -> None:
    created = subprocess.run(
        [
            *(str(BIN), "keys", "create", "--data-dir", str(tmp_path)),
            *("--tenant", "t", "--scopes", "admin", "--json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    headers = {"X-API-Key": json.loads(created.stdout)["api_key"], "X-Tenant-ID": "t"}
    with _serve(tmp_path, "--header-timeout-seconds", "1") as port:
        url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            for _ in range(20):
                async with session.get(url + "/readyz") as resp:
                    assert resp.status == 200
            # Once a head is in, the bound no longer applies: a handler that answers
            # after twice the header timeout (a 2 s step, Prefer: wait) still answers.
            slow = {"kind": "scripted", "responses": [{"content": "ok", "delay_seconds": 2}]}
            async with session.post(
                url + "/v1/agents", json={"name": "slow", "provider": slow}
            ) as resp:
                assert resp.status == 201, await resp.text()
                agent = (await resp.json())["agent_id"]
            step = {"id": "think", "action": "llm", "agent": "slow", "prompt": "x"}
            async with session.post(
                url + "/v1/workflows", json={"name": "w", "definition": {"steps": [step]}}
            ) as resp:
                assert resp.status == 201, await resp.text()
                workflow = (await resp.json())["workflow_id"]
            start = time.monotonic()
            async with session.post(
                url + "/v1/orchestrations/execute",
                json={"workflow_id": workflow, "agents": [agent]},
                headers={"Prefer": "wait=10"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["status"] == "completed"
            assert time.monotonic() - start >= 2
        # A request whose head arrives just in time is served.
        sock = _connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.5)
        sock.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        assert _read_to_eof(sock).startswith(b"HTTP/1.1 200")
        sock.close()


@pytest.mark.slow
def test_hostile_connection_flood_past_the_cap_is_503(tmp_path: Path) -> None:
    # Configured through the environment this time (MAIP_* like every serve flag).
    env = {"MAIP_MAX_CONNECTIONS": "4", "MAIP_HEADER_TIMEOUT_SECONDS": "30"}
    with _serve(tmp_path, env=env) as port:
        held = [_connect(port) for _ in range(4)]
        time.sleep(0.3)
        extra = _connect(port)
        status, problem = _problem(_read_to_eof(extra))
        extra.close()
        assert (status, problem["status"]) == (503, 503)
        assert str(problem["type"]).endswith("/too-many-connections")
        # The held ones still work, and once they go, new connections are served.
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(held[0])[0] == 200
        for sock in held:
            sock.close()
        time.sleep(0.3)
        again = _connect(port)
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_to_eof(again).startswith(b"HTTP/1.1 200")
        again.close()
