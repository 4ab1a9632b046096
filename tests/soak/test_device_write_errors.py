"""Write errors from the block device under a running ``maip-ledger serve``: the data dir's
ext4 sits on a loop device whose image lives on another ext4, and making that image
immutable fails every write request of the device (``I/O error, dev loopN``), as a
failing disk would. Unlike the read-only files of ``test_readonly_fault.py``, writes
still reach the page cache and only ``fsync`` reports ``EIO`` — the case where a WAL
could be torn, or a commit acknowledged that never reached the device.

The proof is after the fact: SIGKILL, unmount (the page cache goes with it), mount,
``fsck``, and every receipt handed out — including any during the errors — must be
stored and verify offline.

Two shapes of the fault. *Transient* (three 1 s bursts; ext4 mounted with ``commit=30``
so its own periodic journal commit is unlikely to land in a burst): the server answers
503 and recovers without a restart. *Sustained* (8 s, ext4's default 5 s commit): ext4's
journal write fails, it aborts the journal and remounts read-only (``errors=remount-ro``),
which only an unmount undoes — the server must keep refusing writes with 503 and keep
serving reads, and lose nothing once restarted on the repaired filesystem. If a transient
burst does abort the journal, the test checks the sustained branch instead: both are real
outcomes of the same fault.

Needs root (mount, losetup, chattr): it fails, loudly, rather than skip.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import Api, assert_unavailable, serving, verify_all

from bench import faultfs
from bench.soak import ServerProc, _fsck

Setup = tuple[faultfs.Ext4, ServerProc, Api, str]


@pytest.fixture(params=["transient", "sustained"])
def failing_device(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    assert os.geteuid() == 0, "this test needs root (mount, losetup, chattr)"
    options = "errors=remount-ro" + (",commit=30" if request.param == "transient" else "")
    host = faultfs.Ext4(tmp_path / "host", 160)
    host.mount()
    try:
        data = faultfs.Ext4(tmp_path / "data", 64, backing=host.mountpoint, options=options)
        data.mount()
        try:
            with serving(data.mountpoint, tmp_path / "server.log") as (server, api, vkey):
                yield data, server, api, vkey
        finally:
            data.close()
    finally:
        host.close()


class Load:
    """Writers creating external orchestrations until stopped; keeps every answer. One
    writer sends an Idempotency-Key with each (those are written to keys.db too)."""

    def __init__(self, api: Api, writers: int = 3, pause: float = 0.05) -> None:
        self.pause = pause
        self.api = api
        self.stop = threading.Event()
        self.oids: list[str] = []
        self.acked: set[str] = set()
        self.keys: dict[str, str] = {}
        self.refused = 0
        self.unexpected: list[object] = []
        self._threads = [threading.Thread(target=self._run, args=(i == 0,)) for i in range(writers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, keyed: bool) -> None:
        body = {"executor": "external", "input": {}}
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"k-{n}" if keyed else None
            headers = {"Idempotency-Key": key} if key else None
            answer = self.api.call("POST", "/v1/orchestrations", body, headers)
            status, headers, data = answer
            if status == 202:
                self.oids.append(data["orchestration_id"])
                self.acked.update(data["receipts"])
                if key:
                    self.keys[key] = data["orchestration_id"]
            elif status == 503 and headers.get("Content-Type", "").startswith(
                "application/problem+json"
            ):
                self.refused += 1
            else:
                self.unexpected.append(answer)
            self.stop.wait(self.pause)


@pytest.mark.slow
def test_device_write_errors_refuse_writes_and_lose_nothing(
    failing_device: Setup, request: pytest.FixtureRequest
) -> None:
    data, server, api, vkey = failing_device
    assert server.proc is not None
    pid = server.proc.pid
    shape = request.node.callspec.params["failing_device"]
    bursts = [1.0, 1.0, 1.0] if shape == "transient" else [8.0]
    with Load(api) as load:
        time.sleep(1.0)
        for seconds in bursts:
            data.fail_writes(True)
            try:
                time.sleep(seconds)
            finally:
                data.fail_writes(False)
            time.sleep(1.5)
    assert not load.unexpected, load.unexpected[:3]
    assert load.refused > 0, "no write was refused while the device failed"
    assert len(load.acked) > 0
    aborted = data.refuses_writes()
    if shape == "sustained":
        assert aborted, "8 s of write errors should have made ext4 abort its journal"

    if aborted:
        # ext4 is read-only until unmounted: refuse writes, keep serving reads.
        body = {"executor": "external", "input": {}}
        assert_unavailable(api.call("POST", "/v1/orchestrations", body))
        status, _, ready = api.call("GET", "/readyz")
        assert (status, ready["ready"]) == (503, False), ready
        api.ok("GET", "/v1/log/checkpoint")
        for rid in sorted(load.acked)[:5]:
            api.ok("GET", f"/v1/receipts/{rid}")
    else:
        # With no client write, the server notices the device works again.
        deadline = time.monotonic() + 10
        while api.call("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready 10 s after the device recovered"
            time.sleep(0.1)
        body = {"executor": "external", "input": {}}
        created = api.ok("POST", "/v1/orchestrations", body, want=202)
        load.oids.append(created["orchestration_id"])
        load.acked.update(created["receipts"])
        assert server.proc is not None
        assert (server.proc.pid, server.proc.poll(), server.starts) == (pid, None, 1)

    # What reached the device: SIGKILL, unmount and mount (the page cache is gone, and
    # an aborted journal is replayed), fsck, and every acknowledged receipt.
    server.stop(signal.SIGKILL)
    data.cycle()
    report = _fsck(data.mountpoint)
    assert report["ok"], report
    server.start()
    assert verify_all(api, vkey, load.oids, load.acked) == len(load.acked)
    # Exactly once per Idempotency-Key: each acknowledged key still names its orchestration.
    assert load.keys
    body = {"executor": "external", "input": {}}
    for key, oid in load.keys.items():
        status, _, again = api.call("POST", "/v1/orchestrations", body, {"Idempotency-Key": key})
        assert (status, again["orchestration_id"]) == (202, oid), (key, status, again)


_CHILD = """
import asyncio, os, sys
from ledger.errors import StorageUnavailableError
from ledger.sqlite_store import SQLiteEventStore
from ledger.store import Batch, CheckpointRecord, HashRow, StoredEvent

def batch(first, n):
    events = [
        StoredEvent(leaf_index=i, event_id=i.to_bytes(16, "big"), tenant_id="t",
                    stream_id="s", stream_seq=i + 1, type="note.added",
                    tree_size=first + n, leaf=b"%d" % i * 400)
        for i in range(first, first + n)
    ]
    size = first + n
    return Batch(events, HashRow(first, b"h" * 32 * n), CheckpointRecord(size, b"r" * 32, "n"))

async def main():
    store = SQLiteEventStore(sys.argv[1])
    await store.open()
    await store.commit(batch(0, 50))
    print("@A", flush=True)
    sys.stdin.readline()
    try:
        await store.commit(batch(50, 100))
        print("@B committed", flush=True)
    except StorageUnavailableError:
        print("@B refused", flush=True)
    sys.stdin.readline()
    await store.commit(batch(50, 100))
    print("@C", flush=True)
    await asyncio.sleep(3600)

try:
    asyncio.run(main())
except BaseException as e:
    print(f"@failed: {e!r}", flush=True)
os._exit(1)  # never wait for the store's threads: the test kills this process anyway
"""


class Child:
    """The store in a child process, driven line by line; SIGKILLed at the end."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._said: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@"):  # its log lines share stdout
                self._said.put(line[1:].strip())
        self._said.put("(exited)")

    def said(self) -> str:
        return self._said.get(timeout=60)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
def test_regression_a_commit_after_a_device_write_error_survives_a_crash(tmp_path: Path) -> None:
    """Regression: SQLite reuses a failed commit's WAL offsets, and the page cache kept the
    failed pages as if written; the next commit's fsync succeeded, yet after a crash and
    an unmount its events read back as zeros and WAL recovery dropped them. The store now
    drops cached pages after a failed write (ledger/pagecache.py)."""
    assert os.geteuid() == 0, "this test needs root (mount, losetup, chattr)"
    host = faultfs.Ext4(tmp_path / "host", 96)
    host.mount()
    try:
        data = faultfs.Ext4(
            tmp_path / "data", 48, backing=host.mountpoint, options="errors=remount-ro,commit=30"
        )
        data.mount()
        try:
            db = data.mountpoint / "ledger.db"
            child = Child(db)
            try:
                assert child.said() == "A"
                data.fail_writes(True)
                try:
                    child.go()
                    assert child.said() == "B refused"
                finally:
                    data.fail_writes(False)
                child.go()
                assert child.said() == "C"  # acknowledged: its fsync succeeded
            finally:
                child.kill()
            assert not data.refuses_writes(), "ext4 aborted its journal: the premise failed"
            data.cycle()
            with contextlib.closing(sqlite3.connect(db)) as conn:
                stored = conn.execute("SELECT count(*), max(leaf_index) FROM events").fetchone()
            assert stored == (150, 149)
        finally:
            data.close()
    finally:
        host.close()
