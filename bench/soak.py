"""Soak and chaos harness: ``python -m bench.soak --minutes 10 --kills 20``.

Runs ``maip-ledger serve`` subprocesses on a fixed loopback port over a data directory
on a small ext4 filesystem (a loop device over an image on a private tmpfs; root only;
see ``bench/faultfs.py``), and for a bounded time:

* **load**: ``--clients`` tasks execute the 3-step scripted workflow (``Prefer: wait``,
  one ``Idempotency-Key`` per logical request, retried with the same key), create
  external orchestrations and record their steps, and read receipts back;
* **ground truth**: every acknowledged orchestration, event and receipt id is appended
  to a journal file (JSON lines, ``--journal``) as soon as the server acknowledges it;
* **chaos**, on a schedule: SIGKILL + restart (``--kills`` times), SIGTERM + restart,
  disk full (the server must answer 503 problem+json, ``/readyz`` must turn false, and
  it must recover without a restart once space is back), SIGKILL while the disk is full
  (restart once space is back), a read-only filesystem at start (the server is stopped,
  the filesystem remounted read-only, the server started on it; then back to
  read-write), and read-only data files under the running server (``chattr +i``: writes
  must answer 503 problem+json, ``/readyz`` must turn false, reads must keep working,
  and once the files are writable again it must recover without a restart, with no
  client write needed to notice);
* **a monitor**: ``verifier.monitor_once`` against the server every 0.25 s, keeping its
  trusted state in a file, for the whole run.

Checks at the end (any failure exits 1): every acknowledged event is in the log exactly
once and its receipt verifies offline (``verifier.verify_receipt``); no idempotency key
produced two orchestrations; no response was a 5xx other than 503; ``fsck`` is clean; the
monitor saw no fork or rollback; every orchestration is terminal (engine-run ones are
resumed after restarts; open external ones are cancelled, which is a terminal state).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import verifier
from api.demo import DEMO_AGENT, DEMO_DEFINITION, DEMO_PROVIDER
from bench import faultfs
from ledger.keys import DEFAULT_ORIGIN, KEY_FILE
from ledger.note import generate_signer

_BIN = Path(sys.executable).parent / "maip-ledger"
TENANT = "soak"


class SoakError(Exception):
    """The harness cannot run (not root, mount failed, server will not start)."""


# -- the server process ------------------------------------------------------------------


class ServerProc:
    """One ``maip-ledger serve`` at a time on a fixed port; restarts keep the URL."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self, attempts: int = 20) -> None:
        last = ""
        for _ in range(attempts):
            with self.log_path.open("a") as log:
                proc = subprocess.Popen(
                    [
                        str(_BIN),
                        "serve",
                        "--data-dir",
                        str(self.data_dir),
                        "--port",
                        str(self.port),
                        "--shutdown-grace-seconds",
                        "2",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env={**os.environ, "MAIP_LOG_LEVEL": "warning"},
                )
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                self.proc = proc
                self.starts += 1
                return
            proc.wait(timeout=30)
            proc.stdout.close()
            last = self.tail()
            time.sleep(0.3)
        raise SoakError(f"the server did not start: {last}")

    def try_start_once(self) -> tuple[bool, str]:
        """Start once; (started, last stderr lines) — for the read-only phase."""
        try:
            self.start(attempts=1)
        except SoakError as e:
            return False, str(e)
        return True, ""

    def tail(self, n: int = 3) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines[-n:] if "error:" in line]
        return errors[-1] if errors else " | ".join(lines[-n:])

    def stop(self, sig: int) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        return code


# -- the data filesystem ---------------------------------------------------------------


class DataFs(faultfs.Ext4):
    """The data directory's own ext4 (see ``bench/faultfs.py``), as the soak uses it."""

    def mount(self) -> None:
        try:
            super().mount()
        except faultfs.FaultError as e:
            raise SoakError(f"the disk-full and read-only phases need root: {e}") from e

    def remount(self, mode: str) -> None:
        try:
            super().remount(mode)
        except faultfs.FaultError as e:
            raise SoakError(str(e)) from e


# -- statistics and journal ------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    conn_errors: int = 0
    sigkills: int = 0
    sigterms: int = 0
    kills_while_full: int = 0
    disk_full_phases: int = 0
    readonly_phases: int = 0
    readonly_live_phases: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    monitor_rounds: int = 0
    monitor_fetch_failures: int = 0
    monitor_error: str | None = None
    monitor_size: int = 0

    def count(self, method: str, path: str, status: int, body: bytes) -> None:
        self.requests += 1
        self.status[status] = self.status.get(status, 0) + 1
        if status >= 500 and status != 503:
            self.server_errors.append(f"{method} {path} -> {status}: {body[:200]!r}")


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def read(self) -> list[dict[str, Any]]:
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


# -- HTTP -------------------------------------------------------------------------------


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, stats: Stats) -> None:
        self.session = session
        self.url = url
        self.stats = stats

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        """(status, decoded JSON or None, content type); status 0 on a connection error."""
        try:
            async with self.session.request(
                method, self.url + path, json=body, headers=headers
            ) as resp:
                raw = await resp.read()
                self.stats.count(method, path.split("?", maxsplit=1)[0], resp.status, raw)
                ctype = resp.headers.get("Content-Type", "")
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
                return resp.status, data, ctype
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            self.stats.conn_errors += 1
            return 0, None, ""


# -- the run ----------------------------------------------------------------------------


@dataclass
class Run:
    server: ServerProc
    fs: DataFs | None
    journal: Journal
    stats: Stats
    vkey: str
    state_path: Path
    headers: dict[str, str]
    agent_id: str = ""
    workflow_id: str = ""
    receipts: list[str] = field(default_factory=list)
    load_deadline: float = 0.0
    stopping: bool = False
    down: bool = False
    pace: float = 0.05

    # -- monitor ------------------------------------------------------------------------

    def _fetch(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.server.url + path, timeout=10) as resp:
                data: bytes = resp.read()
                return data
        except (urllib.error.URLError, OSError) as e:
            raise verifier.FetchFailed(f"{path}: {e}") from e

    def monitor_round(self) -> None:
        try:
            result = verifier.monitor_once(self._fetch, self.vkey, self.state_path)
        except verifier.FetchFailed:
            self.stats.monitor_fetch_failures += 1
            return
        except verifier.VerificationError as e:
            self.stats.monitor_error = f"{type(e).__name__}: {e}"
            return
        self.stats.monitor_rounds += 1
        self.stats.monitor_size = result.new_size

    async def monitor(self) -> None:
        while not self.stopping and self.stats.monitor_error is None:
            await asyncio.to_thread(self.monitor_round)
            await asyncio.sleep(0.25)

    # -- load ---------------------------------------------------------------------------

    def _ack_state(self, state: Any) -> None:
        oid = state["orchestration_id"]
        self.journal.write(t="receipts", oid=oid, receipts=list(state["receipts"]))
        self.receipts.extend(state["receipts"])

    async def _execute(self, c: Client, key: str) -> None:
        body = {
            "workflow_id": self.workflow_id,
            "agents": [self.agent_id],
            "parameters": {"text": f"soak {key}"},
        }
        headers = {**self.headers, "Idempotency-Key": key, "Prefer": "wait=10"}
        while time.monotonic() < self.load_deadline:
            status, data, _ = await c.call("POST", "/v1/orchestrations/execute", body, headers)
            if status in (200, 202) and data is not None:
                self.journal.write(t="orch", oid=data["orchestration_id"], key=key, ex="engine")
                self._ack_state(data)
                return
            await asyncio.sleep(0.2)

    async def _external(self, c: Client, key: str) -> None:
        body = {"executor": "external", "agent_id": self.agent_id, "input": {"q": key}}
        headers = {**self.headers, "Idempotency-Key": key}
        oid = None
        while oid is None:
            if time.monotonic() >= self.load_deadline:
                return
            status, data, _ = await c.call("POST", "/v1/orchestrations", body, headers)
            if status == 202 and data is not None:
                oid = data["orchestration_id"]
                self.journal.write(t="orch", oid=oid, key=key, ex="external")
                self._ack_state(data)
            else:
                await asyncio.sleep(0.2)
        steps = {
            "events": [
                {
                    "type": "step.started",
                    "payload": {
                        "step_id": "s1",
                        "agent_id": self.agent_id,
                        "action": "decision",
                        "attempt": 1,
                        "inputs": {},
                    },
                },
                {
                    "type": "step.completed",
                    "payload": {"step_id": "s1", "attempt": 1, "output": "ok"},
                },
                {"type": "orchestration.completed", "payload": {"results": {"k": key}}},
            ]
        }
        while time.monotonic() < self.load_deadline:
            status, data, _ = await c.call(
                "POST", f"/v1/orchestrations/{oid}/steps", steps, self.headers
            )
            if status == 201 and data is not None:
                ids = [(r["receipt_id"], r["event_id"]) for r in data["receipts"]]
                self.journal.write(t="events", oid=oid, events=ids)
                self.receipts.extend(r for r, _ in ids)
                return
            if status == 409:
                return  # an earlier, unacknowledged attempt was recorded
            if status in {0, 503}:
                # Ambiguous: the batch may have committed before the crash. Look first.
                await asyncio.sleep(0.2)
                status, state, _ = await c.call(
                    "GET", f"/v1/orchestrations/{oid}", None, self.headers
                )
                if status == 200 and state is not None and state["status"] != "pending":
                    return
            else:
                self.stats.failures.append(f"steps {oid}: unexpected {status} {data}")
                return

    async def _read_receipt(self, c: Client) -> None:
        if not self.receipts:
            return
        rid = random.choice(self.receipts)
        status, _data, _ = await c.call("GET", f"/v1/receipts/{rid}", None, self.headers)
        if status == 404:
            self.stats.failures.append(f"acknowledged receipt {rid} answered 404 during load")

    async def client(self, session: aiohttp.ClientSession, i: int) -> None:
        c = Client(session, self.server.url, self.stats)
        n = 0
        while time.monotonic() < self.load_deadline:
            n += 1
            op = n % 4
            if op in (0, 1):
                await self._execute(c, f"x-{i}-{n}")
            elif op == 2:
                await self._external(c, f"e-{i}-{n}")
            else:
                for _ in range(4):
                    await self._read_receipt(c)
            await asyncio.sleep(self.pace)

    # -- chaos --------------------------------------------------------------------------

    async def _restart(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def _kill(self, sig: int) -> None:
        self.down = True
        await asyncio.to_thread(self.server.stop, sig)
        await asyncio.sleep(0.2)
        await self._restart()
        self.down = False
        if sig == signal.SIGKILL:
            self.stats.sigkills += 1
        else:
            self.stats.sigterms += 1

    async def _poll(self, c: Client, path: str, want: int, seconds: float) -> Any:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, data, _ctype = await c.call("GET", path, None, self.headers)
            if status == want:
                return data if data is not None else {}
            await asyncio.sleep(0.1)
        return None

    async def _unready_while_refused(self, c: Client, phase: str, seconds: float) -> Any:
        """/readyz answering 503 while writes are being refused. A full disk can still
        take a write now and then (SQLite reuses pages a checkpoint freed), and each
        success rightly makes the server ready again, so readiness is checked right
        after a refused write rather than once, seconds later."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, data, _ctype = await c.call("GET", "/readyz", None, self.headers)
            if status == 503:
                return data if data is not None else {}
            await self._writes_until_refused(c, phase)
        return None

    async def _writes_until_refused(self, c: Client, phase: str) -> int:
        """Create external orchestrations, 16 at a time, until one answers 503
        problem+json; journal any acknowledged meanwhile (they must survive). Returns how
        many were refused; any answer but 202 or 503 problem+json is a failure."""
        refused = 0
        deadline = time.monotonic() + 20
        while not refused and time.monotonic() < deadline:
            answers = await asyncio.gather(
                *(
                    c.call(
                        "POST",
                        "/v1/orchestrations",
                        {"executor": "external", "agent_id": self.agent_id, "input": {}},
                        self.headers,
                    )
                    for _ in range(16)
                )
            )
            for status, data, ctype in answers:
                if status == 202 and data is not None:
                    oid = data["orchestration_id"]
                    self.journal.write(t="orch", oid=oid, key=None, ex="external")
                    self._ack_state(data)
                elif status == 503 and ctype == "application/problem+json":
                    refused += 1
                else:
                    self.stats.failures.append(f"{phase}: a write answered {status} {ctype}")
        if not refused:
            self.stats.failures.append(f"{phase}: no write was refused with 503 in 20 s")
        return refused

    async def _disk_full(self, c: Client, kill: bool) -> None:
        assert self.fs is not None
        filled = await asyncio.to_thread(self.fs.fill)
        try:
            # Drive writes until one is refused: SQLite may first reuse space it already
            # holds (free pages, a reset WAL), so the first writes can still succeed.
            await self._writes_until_refused(c, "disk full")
            ready = await self._unready_while_refused(c, "disk full", 10)
            if ready is None or ready.get("ready") is not False:
                self.stats.failures.append("disk full: /readyz did not turn false")
            await asyncio.sleep(1.0)
            if kill:
                self.down = True
                await asyncio.to_thread(self.server.stop, signal.SIGKILL)
                self.stats.sigkills += 1
                self.stats.kills_while_full += 1
        finally:
            self.fs.free()
        if kill:
            await self._restart()
            self.down = False
        else:
            ready = await self._poll(c, "/readyz", 200, 20)
            if ready is None:
                self.stats.failures.append("disk full: no recovery within 20 s of space returning")
        self.stats.disk_full_phases += 1
        self.stats.notes.append(f"disk full: filled {filled // 1024} KiB, kill={kill}")

    async def _read_only_live(self, c: Client) -> None:
        """The data files turn read-only under the running server, then writable again."""
        phase = "read-only (live)"
        proc = self.server.proc
        frozen = await asyncio.to_thread(faultfs.freeze, self.server.data_dir)
        began = time.monotonic()
        try:
            refused = await self._writes_until_refused(c, phase)
            ready = await self._poll(c, "/readyz", 503, 10)
            if ready is None or ready.get("ready") is not False:
                self.stats.failures.append(f"{phase}: /readyz did not turn false")
            status, _, _ = await c.call("GET", "/v1/log/checkpoint", None, self.headers)
            if status != 200:
                self.stats.failures.append(f"{phase}: reading the checkpoint answered {status}")
            if self.receipts:
                rid = random.choice(self.receipts)
                status, _, _ = await c.call("GET", f"/v1/receipts/{rid}", None, self.headers)
                if status != 200:
                    self.stats.failures.append(f"{phase}: reading receipt {rid} answered {status}")
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(faultfs.thaw, frozen)
        held = time.monotonic() - began
        # Only /readyz is asked: the server must notice by itself, with no client write.
        writable = time.monotonic()
        ready = await self._poll(c, "/readyz", 200, 20)
        if ready is None:
            self.stats.failures.append(f"{phase}: not ready 20 s after the files were writable")
            recovered = "no recovery"
        else:
            recovered = f"ready again {time.monotonic() - writable:.1f} s after"
        status, data, _ = await c.call(
            "POST",
            "/v1/orchestrations",
            {"executor": "external", "agent_id": self.agent_id, "input": {}},
            self.headers,
        )
        if status == 202 and data is not None:
            self.journal.write(t="orch", oid=data["orchestration_id"], key=None, ex="external")
            self._ack_state(data)
        else:
            self.stats.failures.append(f"{phase}: a write after recovery answered {status}")
        if self.server.proc is not proc:
            self.stats.failures.append(f"{phase}: the server was restarted")
        self.stats.readonly_live_phases += 1
        self.stats.notes.append(
            f"read-only (live): {refused} writes refused with 503 in {held:.1f} s; {recovered} "
            "the files were writable again, same server process"
        )

    async def _read_only(self) -> None:
        assert self.fs is not None
        self.down = True
        await asyncio.to_thread(self.server.stop, signal.SIGTERM)
        self.stats.sigterms += 1
        # A filesystem with files open for writing cannot be remounted read-only (EBUSY),
        # so the server is stopped first and started on the read-only filesystem.
        self.fs.remount("ro")
        try:
            started, message = await asyncio.to_thread(self.server.try_start_once)
            if started:
                async with aiohttp.ClientSession() as session:
                    c = Client(session, self.server.url, self.stats)
                    status, _, ctype = await c.call(
                        "POST",
                        "/v1/orchestrations",
                        {"executor": "external", "agent_id": self.agent_id, "input": {}},
                        self.headers,
                    )
                    if status != 503 or ctype != "application/problem+json":
                        self.stats.failures.append(f"read-only: a write answered {status}")
                    ready = await self._poll(c, "/readyz", 503, 5)
                    if ready is None:
                        self.stats.failures.append("read-only: /readyz did not turn false")
                await asyncio.to_thread(self.server.stop, signal.SIGTERM)
                self.stats.notes.append("read-only: served reads, refused writes with 503")
            else:
                self.stats.notes.append(f"read-only: refused to start ({message[-160:]})")
        finally:
            self.fs.remount("rw")
        await self._restart()
        self.down = False
        self.stats.readonly_phases += 1

    def schedule(self, kills: int, disk: bool) -> list[str]:
        actions = ["sigkill"] * kills
        special = ["sigterm"]
        if disk:
            rounds = max(1, kills // 10)
            special += ["disk-full", "disk-full-kill", "read-only", "read-only-live"] * rounds
        # Interleave the special phases evenly among the kills.
        out: list[str] = []
        step = max(1, len(actions) // (len(special) + 1))
        while actions or special:
            out.extend(actions[:step])
            del actions[:step]
            if special:
                out.append(special.pop(0))
        return out

    async def chaos(self, plan: list[str], start: float, span: float) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            c = Client(session, self.server.url, self.stats)
            for i, action in enumerate(plan):
                at = start + span * (i + 1) / (len(plan) + 1)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                print(f"  [{time.monotonic() - start:6.1f}s] {action}", flush=True)
                if action == "sigkill":
                    await self._kill(signal.SIGKILL)
                elif action == "sigterm":
                    await self._kill(signal.SIGTERM)
                elif action == "disk-full":
                    await self._disk_full(c, kill=False)
                elif action == "disk-full-kill":
                    await self._disk_full(c, kill=True)
                elif action == "read-only":
                    await self._read_only()
                elif action == "read-only-live":
                    await self._read_only_live(c)

    # -- setup and checks ---------------------------------------------------------------

    async def setup(self) -> None:
        async with aiohttp.ClientSession() as session:
            c = Client(session, self.server.url, self.stats)
            status, agent, _ = await c.call(
                "POST", "/v1/agents", {"name": DEMO_AGENT, "provider": DEMO_PROVIDER}, self.headers
            )
            if status != 201:
                raise SoakError(f"cannot register the agent: {status} {agent}")
            status, wf, _ = await c.call(
                "POST",
                "/v1/workflows",
                {"name": "soak-triage", "definition": DEMO_DEFINITION},
                self.headers,
            )
            if status != 201:
                raise SoakError(f"cannot register the workflow: {status} {wf}")
        self.agent_id, self.workflow_id = agent["agent_id"], wf["workflow_id"]

    async def finish(self) -> dict[str, Any]:
        """Drive every orchestration to a terminal state and collect the evidence."""
        records = self.journal.read()
        orchs: dict[str, str] = {}
        keys: dict[str, set[str]] = {}
        acked: set[str] = set()
        for r in records:
            if r["t"] == "orch":
                orchs[r["oid"]] = r["ex"]
                if r["key"] is not None:
                    keys.setdefault(r["key"], set()).add(r["oid"])
            elif r["t"] == "receipts":
                acked.update(r["receipts"])
            elif r["t"] == "events":
                acked.update(rid for rid, _ in r["events"])
        for key, oids in keys.items():
            if len(oids) > 1:
                self.stats.failures.append(f"idempotency key {key} made {len(oids)} orchestrations")
        terminal_first = resumed = cancelled = 0
        events: dict[str, dict[str, Any]] = {}
        receipts: dict[str, Any] = {}
        connector = aiohttp.TCPConnector(limit=16)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            c = Client(session, self.server.url, self.stats)
            sem = asyncio.Semaphore(16)

            async def settle(oid: str, ex: str) -> None:
                nonlocal terminal_first, resumed, cancelled
                async with sem:
                    status, state, _ = await c.call(
                        "GET", f"/v1/orchestrations/{oid}", None, self.headers
                    )
                    if status != 200:
                        self.stats.failures.append(f"acknowledged orchestration {oid}: {status}")
                        return
                    if state["status"] in ("completed", "failed", "cancelled"):
                        terminal_first += 1
                    elif ex == "external":
                        status, state, _ = await c.call(
                            "POST",
                            f"/v1/orchestrations/{oid}/cancel",
                            {"reason": "soak end"},
                            self.headers,
                        )
                        cancelled += 1
                    else:
                        status, state, _ = await c.call(
                            "GET", f"/v1/orchestrations/{oid}?wait=30", None, self.headers
                        )
                        resumed += 1
                    if status != 200 or state["status"] not in ("completed", "failed", "cancelled"):
                        self.stats.failures.append(f"orchestration {oid} not terminal: {status}")
                    status, data, _ = await c.call(
                        "GET", f"/v1/orchestrations/{oid}/events", None, self.headers
                    )
                    if status != 200:
                        self.stats.failures.append(f"events of {oid}: {status}")
                        return
                    seqs = [e["stream_seq"] for e in data["events"]]
                    if seqs != list(range(1, len(seqs) + 1)):
                        self.stats.failures.append(f"{oid}: stream_seq not gapless: {seqs}")
                    started = [e for e in data["events"] if e["type"] == "step.started"]
                    if ex == "external" and len(started) > 1:
                        self.stats.failures.append(f"{oid}: external steps recorded twice")
                    for e in data["events"]:
                        if e["receipt_id"] in events:
                            self.stats.failures.append(f"event {e['event_id']} appears twice")
                        events[e["receipt_id"]] = e

            await asyncio.gather(*(settle(o, ex) for o, ex in orchs.items()))
            leaf_indexes = [e["leaf_index"] for e in events.values()]
            if len(set(leaf_indexes)) != len(leaf_indexes):
                self.stats.failures.append("two events share a leaf index")
            lost = sorted(acked - events.keys())

            async def fetch(rid: str) -> None:
                async with sem:
                    status, data, _ = await c.call("GET", f"/v1/receipts/{rid}", None, self.headers)
                    if status == 200:
                        receipts[rid] = data
                    else:
                        self.stats.failures.append(f"receipt {rid}: {status}")

            await asyncio.gather(*(fetch(rid) for rid in sorted(acked)))
        return {
            "orchestrations": len(orchs),
            "acked": acked,
            "lost": lost,
            "events": events,
            "receipts": receipts,
            "terminal_first": terminal_first,
            "resumed": resumed,
            "cancelled": cancelled,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _create_key(data_dir: Path) -> str:
    r = subprocess.run(
        [
            str(_BIN),
            "keys",
            "create",
            "--data-dir",
            str(data_dir),
            "--tenant",
            TENANT,
            "--scopes",
            "admin",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SoakError(f"keys create failed: {r.stderr.strip()}")
    key: str = json.loads(r.stdout)["api_key"]
    return key


def _write_signing_key(data_dir: Path) -> str:
    signer = generate_signer(DEFAULT_ORIGIN)
    fd = os.open(data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(signer.skey + "\n")
        f.flush()
        os.fsync(f.fileno())
    vkey: str = signer.verifier.vkey
    return vkey


def _fsck(data_dir: Path) -> dict[str, Any]:
    r = subprocess.run(
        [str(_BIN), "fsck", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    try:
        out: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        out = {"ok": False, "error": (r.stdout + r.stderr).strip()}
    return out


async def soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="maip-soak-"))
    data_dir = Path(args.data_dir) if args.data_dir else workdir / "data"
    journal_path = Path(args.journal) if args.journal else workdir / "journal.jsonl"
    journal_path.unlink(missing_ok=True)
    fs = None if args.no_disk_faults else DataFs(data_dir, args.fs_mb)
    stats = Stats()
    began = time.monotonic()
    if fs is not None:
        fs.mount()  # raises SoakError when not root or mount is unavailable
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_path)
    server = ServerProc(data_dir, _free_port(), workdir / "server.log")
    try:
        vkey = _write_signing_key(data_dir)
        api_key = _create_key(data_dir)
        server.start()
        run = Run(
            server,
            fs,
            journal,
            stats,
            vkey,
            workdir / "monitor-state.json",
            {"X-API-Key": api_key, "X-Tenant-ID": TENANT},
        )
        run.pace = args.pace
        await run.setup()
        plan = run.schedule(args.kills, fs is not None)
        print(
            f"soak: {args.clients} clients for {seconds:.0f} s on {server.url}, data on "
            f"{f'ext4 {args.fs_mb} MiB ({fs.device})' if fs else 'disk'} at {data_dir}; "
            f"journal {journal_path}; chaos plan: {len(plan)} actions",
            flush=True,
        )
        start = time.monotonic()
        run.load_deadline = start + seconds
        monitor = asyncio.create_task(run.monitor())
        connector = aiohttp.TCPConnector(limit=args.clients * 2)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            load = [asyncio.create_task(run.client(session, i)) for i in range(args.clients)]
            try:
                await run.chaos(plan, start, seconds * 0.85)
            except SoakError as e:
                stats.failures.append(f"chaos: {e}")
            await asyncio.gather(*load)
        if server.proc is None:
            server.start()
        result = await run.finish()
        run.stopping = True
        await monitor
        await asyncio.to_thread(run.monitor_round)
        server.stop(signal.SIGTERM)
        fsck = _fsck(data_dir)
        verified = 0
        for rid in sorted(result["acked"]):
            receipt, event = result["receipts"].get(rid), result["events"].get(rid)
            if receipt is None or event is None:
                continue
            try:
                verifier.verify_receipt(receipt, base64.b64decode(event["leaf"]), vkey)
                verified += 1
            except verifier.VerificationError as e:
                stats.failures.append(f"receipt {rid} does not verify: {e}")
    except SoakError as e:
        stats.failures.append(str(e))
        result, fsck, verified = None, {"ok": False, "error": "not run"}, 0
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
        journal.close()
        if fs is not None:
            with contextlib.suppress(SoakError):
                fs.remount("rw")
            fs.close()
    elapsed = time.monotonic() - began
    if result is not None and result["lost"]:
        stats.failures.append(
            f"{len(result['lost'])} acknowledged events lost: {result['lost'][:5]}"
        )
    if stats.server_errors:
        stats.failures.append(
            f"{len(stats.server_errors)} 5xx (not 503): {stats.server_errors[:3]}"
        )
    if stats.monitor_error:
        stats.failures.append(f"monitor: {stats.monitor_error}")
    if not fsck.get("ok"):
        stats.failures.append(f"fsck: {fsck}")
    ok = not stats.failures
    acked = len(result["acked"]) if result else 0
    lines = [
        "== soak summary ==",
        f"duration:            {elapsed:.1f} s (load {seconds:.0f} s, {args.clients} clients)",
        f"requests:            {stats.requests} (by status: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(stats.status.items()))
        + f"; connection errors {stats.conn_errors})",
        f"kills survived:      {stats.sigkills} SIGKILL "
        f"({stats.kills_while_full} while disk full), "
        f"{stats.sigterms} SIGTERM; server starts {server.starts}",
        f"fault phases:        disk full {stats.disk_full_phases}, "
        f"read-only {stats.readonly_phases}, read-only live {stats.readonly_live_phases}",
        f"orchestrations:      {result['orchestrations'] if result else 0} acknowledged; "
        + (
            f"{result['terminal_first']} terminal, {result['resumed']} resumed then terminal, "
            f"{result['cancelled']} open external cancelled"
            if result
            else "-"
        ),
        f"events acknowledged: {acked}",
        f"events lost:         {len(result['lost']) if result else 'unknown'}",
        f"receipts verified:   {verified}/{acked} offline (verifier.verify_receipt)",
        "fsck:                "
        + (
            f"ok ({fsck.get('events')} events, {fsck.get('checkpoints')} checkpoints, "
            f"tree size {fsck.get('tree_size')})"
            if fsck.get("ok")
            else f"FAILED {fsck}"
        ),
        "monitor:             "
        + (
            f"no fork, no rollback ({stats.monitor_rounds} rounds, "
            f"{stats.monitor_fetch_failures} fetch failures while down, final size "
            f"{stats.monitor_size})"
            if not stats.monitor_error
            else stats.monitor_error
        ),
        *(f"note:                {n}" for n in stats.notes),
        f"result:              {'PASS' if ok else 'FAIL'}",
        *(f"failure:             {f}" for f in stats.failures[:20]),
    ]
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=1.0, help="load duration (default 1)")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs on the schedule (default 3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument(
        "--pace", type=float, default=0.05, help="pause between a client's operations (s)"
    )
    p.add_argument("--journal", help="the client-side journal file (default: in a temp dir)")
    p.add_argument("--data-dir", help="the server's data dir (default: in a temp dir)")
    p.add_argument(
        "--fs-mb",
        "--tmpfs-mb",
        dest="fs_mb",
        type=int,
        default=1024,
        help="size of the data filesystem, an ext4 image on a tmpfs (default 1024)",
    )
    p.add_argument(
        "--no-disk-faults",
        action="store_true",
        help="data on the disk: no disk-full or read-only phases (needs no root)",
    )
    args = p.parse_args(argv)
    try:
        return asyncio.run(soak(args))
    except SoakError as e:
        print(f"soak: cannot run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
