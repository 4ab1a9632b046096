"""Crash safety: SIGKILL a real writer process at random moments, several times.

After every restart, each acknowledged append is present and its receipt verifies,
the stored tree matches the last checkpoint, fsck is clean, and every checkpoint ever
handed out is consistent with the newest one (the log never forked or rolled back).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from ledger_testkit import open_log, signer

from ledger import merkle
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.fsck import fsck
from ledger.receipt import Receipt
from ledger.sqlite_store import SQLiteEventStore

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def _run_writer_until_killed(db: Path, seconds: float) -> list[Receipt]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, str(WRITER), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        time.sleep(seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
        errors = proc.stderr.read() if proc.stderr else b""
    assert proc.returncode == -signal.SIGKILL, errors
    decoder = msgspec.json.Decoder(Receipt)
    # A line cut mid-write by the kill was never acknowledged in full: ignore it.
    return [decoder.decode(line) for line in lines if line.endswith(b"\n")]


@pytest.mark.slow
async def test_sigkill_during_appends_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    rng = random.Random(20261129)
    acked: list[Receipt] = []
    verified: dict[str, Checkpoint] = {}
    for round_ in range(5):
        new = _run_writer_until_killed(db, 1.0 + rng.random() * 1.5)
        assert new, f"round {round_}: the writer acknowledged nothing"
        acked += new
        # Reopening runs the startup check (stored tree == last signed checkpoint).
        log = await open_log(db)
        checkpoint = log.latest_checkpoint()
        assert checkpoint is not None
        assert checkpoint.size >= max(r.leaf_index for r in acked) + 1
        verified.update(
            (r.checkpoint, open_checkpoint(r.checkpoint, signer().verifier))
            for r in new
            if r.checkpoint not in verified
        )
        stored = {r.event.event_id: r for r in await log.read_log(0, checkpoint.size)}
        for receipt in acked:
            recorded = stored[receipt.event_id]
            assert recorded.leaf_index == receipt.leaf_index
            assert merkle.leaf_hash(recorded.leaf) == receipt.leaf_hash
            cp = verified[receipt.checkpoint]
            merkle.verify_inclusion(
                receipt.leaf_hash, receipt.leaf_index, cp.size, receipt.inclusion_proof, cp.root
            )
        # Every checkpoint handed out so far is a prefix of today's tree.
        for cp in verified.values():
            size = cp.size
            proof = await log.consistency_proof(size, checkpoint.size)
            merkle.verify_consistency(size, cp.root, checkpoint.size, checkpoint.root, proof)
        assert len({r.event_id for r in acked}) == len(acked)
        print(f"round {round_}: {len(new)} acknowledged, tree size {checkpoint.size}")
        await log.close()
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    report = await fsck(store, signer().verifier)
    await store.close()
    assert report.ok, report.problems


_NEVER_CLOSES = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from ledger_testkit import Note, open_log
from ledger.events import NewEvent

async def main():
    log = await open_log(__import__("pathlib").Path(sys.argv[1]))
    await log.append("t1", "s", 0, [NewEvent("note.added", Note("kept"))])
    # Returns without log.close(): the event loop ends with the store open.

asyncio.run(main())
"""


async def test_regression_a_process_that_never_closes_its_log_still_exits(tmp_path: Path) -> None:
    # aiosqlite's reader thread was not a daemon: the interpreter waited for it at exit,
    # and it waited for work, so the process never ended.
    db = tmp_path / "l.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _NEVER_CLOSES, str(db), str(Path(__file__).parent)],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"log.not_closed" in done.stdout + done.stderr
    log = await open_log(db)
    try:
        (record,) = await log.read_stream("t1", "s")
        assert record.event.payload.text == "kept"
    finally:
        await log.close()


_STALLS_WHILE_CLOSING = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from ledger_testkit import CATALOG, GatedStore, Note, signer, spin
from ledger.events import NewEvent
from ledger.log import Log

async def main():
    store = GatedStore(Path(sys.argv[1]))
    log = await Log.open(store, signer(), CATALOG)
    for stream in ("a", "b", "c"):
        await log.stream_head("t1", stream)
    stalled = asyncio.Event()  # a disk that never answers: never set
    store.plan = [(stalled, False), (stalled, False)]
    async def handler(outcome):
        return await outcome

    waiters = []
    for stream in ("a", "b", "c"):
        outcome = await log.submit("t1", stream, 0, [NewEvent("note.added", Note(stream))])
        outcome.add_done_callback(
            lambda f, s=stream: print("outcome", s, type(f.exception()).__name__, flush=True)
        )
        # A request handler awaiting it: the loop's teardown waits for this task.
        waiters.append(asyncio.create_task(handler(outcome)))
        await spin()
    try:
        await asyncio.wait_for(log.close(), timeout=0.2)
    except TimeoutError:
        print("close timed out", flush=True)
    # Returns with the close still going: asyncio.run cancels every task left.

asyncio.run(main())
"""


async def test_regression_a_loop_that_ends_during_a_stalled_close_fails_every_append(
    tmp_path: Path,
) -> None:
    # A close cut short by the loop's end (a shutdown timeout, then the process exits)
    # must still end every append: their outcomes cannot be cancelled, and the loop's
    # teardown waits for the tasks awaiting them, so an undecided one hung the process.
    db = tmp_path / "l.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _STALLS_WHILE_CLOSING, str(db), str(Path(__file__).parent)],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert "close timed out" in out
    outcomes = {
        line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("outcome")
    }
    # a and b were in flight (their commits' fate unknown); c was never taken.
    assert outcomes == {
        "a": "LedgerError",
        "b": "LedgerError",
        "c": "StorageUnavailableError",
    }, out
    assert "log.close_cut_short" in out
    log = await open_log(db)
    try:
        assert log.size == 0  # nothing reached the disk, and what is there is whole
    finally:
        await log.close()
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        report = await fsck(store, signer().verifier)
    finally:
        await store.close()
    assert report.ok, report.problems
