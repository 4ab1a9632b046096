"""The log: receipts that verify offline, conflicts, group commit, restart checks."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ledger_testkit import (
    CATALOG,
    FIXED_TIME,
    GatedStore,
    Note,
    fsck_path,
    open_log,
    signer,
    spin,
    writing_beside,
)
from structlog.testing import capture_logs

from ledger import merkle
from ledger.checkpoint import open_checkpoint
from ledger.errors import (
    ConflictError,
    IntegrityError,
    InvalidEventError,
    LedgerError,
    NotFoundError,
    ProofError,
    StorageUnavailableError,
    UnknownEventTypeError,
)
from ledger.events import NewEvent
from ledger.log import Log, RecordedEvent
from ledger.receipt import Receipt
from ledger.sqlite_store import SQLiteEventStore
from ledger.store import Batch


def note(text: str) -> NewEvent:
    return NewEvent("note.added", Note(text))


def verify_receipt_offline(receipt: Receipt, leaf: bytes) -> None:
    """What any outsider can do with the receipt, the leaf bytes and the vkey."""
    cp = open_checkpoint(receipt.checkpoint, signer().verifier)
    assert cp.size == receipt.tree_size
    assert merkle.leaf_hash(leaf) == receipt.leaf_hash
    merkle.verify_inclusion(
        receipt.leaf_hash, receipt.leaf_index, cp.size, receipt.inclusion_proof, cp.root
    )


async def test_append_returns_receipts_that_verify_offline(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    receipts = await log.append("t1", "s1", 0, [note("a"), note("b")])
    assert [r.leaf_index for r in receipts] == [0, 1]
    recorded = await log.read_stream("t1", "s1")
    assert [r.event.stream_seq for r in recorded] == [1, 2]
    for receipt, rec in zip(receipts, recorded, strict=True):
        verify_receipt_offline(receipt, rec.leaf)
        assert receipt.receipt_id == rec.receipt_id
        assert await log.get_receipt(receipt.receipt_id) == receipt
        assert await log.get_receipt(receipt.event_id) == receipt
    await log.close()


async def test_conflict_raises_and_writes_nothing(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    await log.append("t1", "s1", 0, [note("a")])
    with pytest.raises(ConflictError, match="is at seq 1, not the expected 0"):
        await log.append("t1", "s1", 0, [note("b")])
    assert log.size == 1
    assert [r.event.payload for r in await log.read_stream("t1", "s1")] == [Note("a")]
    await log.close()


async def test_racing_appenders_on_one_stream_exactly_one_wins(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    results = await asyncio.gather(
        *(log.append("t1", "race", 0, [note(str(i))]) for i in range(10)), return_exceptions=True
    )
    assert sum(isinstance(r, list) for r in results) == 1
    assert sum(isinstance(r, ConflictError) for r in results) == 9
    assert log.size == 1
    await log.close()


async def test_bad_input_gets_typed_errors(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    with pytest.raises(UnknownEventTypeError):
        await log.append("t1", "s1", 0, [NewEvent("nope.added", {"text": "x"})])
    with pytest.raises(InvalidEventError, match="not valid UTF-8"):
        await log.append("t1", "s1", 0, [note("\udcff")])
    with pytest.raises(InvalidEventError, match="tenant_id"):
        await log.append("bad tenant", "s1", 0, [note("x")])
    with pytest.raises(InvalidEventError, match="at least one event"):
        await log.append("t1", "s1", 0, [])
    assert log.size == 0
    await log.close()


async def test_regression_an_id_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    """The id patterns ended in ``$``, which also matches before a final newline."""
    log = await open_log(tmp_path / "l.db")
    with pytest.raises(InvalidEventError, match="tenant_id"):
        await log.append("t1\n", "s1", 0, [note("x")])
    with pytest.raises(InvalidEventError, match="stream_id"):
        await log.append("t1", "s1\n", 0, [note("x")])
    assert log.size == 0
    await log.close()


async def test_concurrent_appenders_share_batches_and_checkpoints_stay_consistent(
    tmp_path: Path,
) -> None:
    log = await open_log(tmp_path / "l.db")
    seen: list[RecordedEvent] = []
    log.add_listener(seen.extend)

    async def writer(w: int) -> list[Receipt]:
        out = []
        for seq in range(20):
            out += await log.append("t1", f"s{w}", seq, [note(f"{w}-{seq}")])
        return out

    receipts = list(itertools.chain(*await asyncio.gather(*(writer(w) for w in range(16)))))
    assert log.size == 320
    assert sorted(r.leaf_index for r in receipts) == list(range(320))
    assert len({r.tree_size for r in receipts}) < 320  # batches were shared
    assert [r.leaf_index for r in seen] == list(range(320))
    by_size = {r.tree_size: open_checkpoint(r.checkpoint, signer().verifier) for r in receipts}
    sizes = sorted(by_size)
    for old, new in itertools.pairwise(sizes):
        proof = await log.consistency_proof(old, new)
        merkle.verify_consistency(old, by_size[old].root, new, by_size[new].root, proof)
    for r in receipts[::17]:
        verify_receipt_offline(r, (await log.recorded(r.event_id)).leaf)
    await log.close()


async def test_proofs_against_any_earlier_size(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(13):
        await log.append("t1", "s", i, [note(str(i))])
    leaves = [merkle.leaf_hash(r.leaf) for r in await log.read_log(0, 100)]
    for size in range(1, 14):
        assert await log.root_at(size) == merkle.root_hash(leaves[:size])
        for index in range(size):
            assert await log.inclusion_proof(index, size) == merkle.inclusion_proof(
                index, leaves[:size]
            )
    with pytest.raises(ProofError, match=r"outside 1\.\.13"):
        await log.inclusion_proof(0, 14)
    await log.close()


async def test_other_tenants_receipts_are_not_found(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    (receipt,) = await log.append("t1", "s", 0, [note("secret")])
    with pytest.raises(NotFoundError):
        await log.get_receipt(receipt.receipt_id, tenant_id="t2")
    with pytest.raises(NotFoundError):
        await log.recorded(receipt.event_id, tenant_id="t2")
    assert await log.read_stream("t2", "s") == []
    await log.close()


async def test_injected_time_and_entropy_make_the_log_deterministic(tmp_path: Path) -> None:
    async def run(path: Path) -> tuple[bytes, list[bytes]]:
        log = await open_log(path, now=lambda: FIXED_TIME, entropy=random.Random(7).randbytes)
        for i in range(5):
            await log.append("t1", "s", i, [note(str(i))])
        out = (await log.root_at(5), [r.leaf for r in await log.read_log(0, 10)])
        await log.close()
        return out

    assert await run(tmp_path / "a.db") == await run(tmp_path / "b.db")


async def test_restart_resumes_the_same_tree(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(7):
        await log.append("t1", "s", i, [note(str(i))])
    root = await log.root_at(7)
    await log.close()
    again = await open_log(tmp_path / "l.db")
    assert again.size == 7
    cp = again.latest_checkpoint()
    assert cp is not None
    assert cp.root == root
    (receipt,) = await again.append("t1", "s", 7, [note("7")])
    merkle.verify_consistency(
        7,
        root,
        8,
        open_checkpoint(receipt.checkpoint, signer().verifier).root,
        await again.consistency_proof(7, 8),
    )
    await again.close()


async def test_startup_refuses_a_log_signed_by_another_key(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    await log.append("t1", "s", 0, [note("x")])
    await log.close()
    with pytest.raises(IntegrityError, match="does not verify under key"):
        await Log.open(SQLiteEventStore(tmp_path / "l.db"), signer(7), CATALOG)


async def test_startup_refuses_a_tampered_newest_leaf(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(3):
        await log.append("t1", "s", i, [note(f"value-{i}")])
    await log.close()
    _flip_in_file(tmp_path / "l.db", b"value-2", b"value-9")
    with pytest.raises(IntegrityError, match="leaf 2 does not match its stored hash") as info:
        await open_log(tmp_path / "l.db")
    assert info.value.index == 2


def _flip_in_file(path: Path, old: bytes, new: bytes) -> None:
    """Edit the SQLite file's bytes directly, as an attacker with disk access would."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


async def test_regression_concurrent_proofs_with_a_small_cache(tmp_path: Path) -> None:
    """Readers awaiting a fetch had the rows they relied on evicted by other readers,
    and then failed with KeyError (found by the 1M-entry proof benchmark)."""
    log = await open_log(tmp_path / "l.db", hash_cache_bytes=2048)
    for b in range(40):
        await log.append("t1", "s", b * 10, [note(f"{b}-{i}") for i in range(10)])
    await log.close()
    log = await open_log(tmp_path / "l.db", hash_cache_bytes=2048)
    leaves = [merkle.leaf_hash(r.leaf) for r in await log.read_log(0, 400)]
    root = merkle.root_hash(leaves)
    indexes = list(range(0, 400, 3))
    proofs = await asyncio.gather(*(log.inclusion_proof(i, 400) for i in indexes))
    for i, proof in zip(indexes, proofs, strict=True):
        merkle.verify_inclusion(leaves[i], i, 400, proof, root)
    await log.close()


async def test_a_failed_batch_fails_every_batch_built_on_it_and_the_log_goes_on(
    tmp_path: Path,
) -> None:
    """A commit refused mid-pipeline: nothing of it, or of batches queued behind it, is
    acknowledged or stored, and appends after it land where the log really ends."""
    rng = random.Random(11)
    blocks = 0

    def entropy(n: int) -> bytes:
        # The first two ids minted are equal (same fixed millisecond, same digits), so
        # the batch holding the second one breaks the event_id UNIQUE constraint.
        nonlocal blocks
        blocks += 1
        block = rng.randbytes(n)
        return block[:16] * 2 + block[32:] if blocks == 1 else block

    path = tmp_path / "l.db"
    # Small batches, so batches are queued behind the failing one.
    log = await open_log(path, now=lambda: FIXED_TIME, entropy=entropy, max_batch=4)

    async def appender(w: int) -> list[tuple[Receipt, bytes] | None]:
        out: list[tuple[Receipt, bytes] | None] = []
        seq = 0
        for i in range(20):
            try:
                (receipt,) = await log.append("t1", f"s{w}", seq, [note(f"{w}.{i}")])
            except LedgerError:
                out.append(None)
                continue
            recorded = await log.recorded(receipt.event_id)
            out.append((receipt, recorded.leaf))
            seq += 1
        return out

    results = [r for rs in await asyncio.gather(*(appender(w) for w in range(32))) for r in rs]
    acknowledged = [r for r in results if r is not None]
    assert len(acknowledged) < len(results)  # the collision really failed something
    assert log.size == len(acknowledged)
    for receipt, leaf in acknowledged:
        verify_receipt_offline(receipt, leaf)
    assert sorted(r.leaf_index for r, _ in acknowledged) == list(range(log.size))
    await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


async def test_streams_first_seen_together_each_get_their_own_head(tmp_path: Path) -> None:
    """Heads of streams first seen in one moment are read together; each append must
    still be checked against its own stream's head."""
    path = tmp_path / "l.db"
    log = await open_log(path)
    for i in range(40):
        await log.append("t1", f"s{i}", 0, [NewEvent("note.added", Note("x"))] * 2)
    await log.close()
    log = await open_log(path)

    async def one(stream: str, expected: int) -> int | str:
        try:
            receipts = await log.append("t1", stream, expected, [NewEvent("note.added", Note("y"))])
        except ConflictError:
            return "conflict"
        return receipts[0].leaf_index

    results = await asyncio.gather(
        *(one(f"s{i}", 2 if i % 2 == 0 else 0) for i in range(40)),
        *(one(f"new{i}", 0) for i in range(40)),
    )
    assert results[1:40:2] == ["conflict"] * 20
    assert sorted(r for r in results if r != "conflict") == list(range(80, 140))
    assert await log.stream_head("t1", "s0") == 3
    assert await log.stream_head("t1", "s1") == 2
    assert await log.stream_head("t1", "new7") == 1
    await log.close()


async def test_a_burst_met_by_an_idle_writer_is_split_so_two_commits_overlap(
    tmp_path: Path,
) -> None:
    """With nothing in flight, a burst goes as two batches: the second is prepared and
    queued while the first commits, and the first half's appenders come back while the
    second commits. One batch of everything would leave the writer idle while the next
    burst is prepared (a closed loop of appenders never gets out of lockstep)."""
    log = await open_log(tmp_path / "l.db")
    for i in range(64):
        await log.append("t1", f"s{i}", 0, [note("first")])
    receipts = await asyncio.gather(*(log.append("t1", f"s{i}", 1, [note("x")]) for i in range(64)))
    sizes = [r[0].tree_size for r in receipts]
    # Two halves; a machine slow enough to finish the first commit before the second
    # half is taken may split that half again.
    assert len(set(sizes)) >= 2
    assert sizes.count(96) == 32
    assert max(sizes.count(size) for size in set(sizes)) <= 32
    await log.close()


async def test_a_burst_below_the_split_size_is_one_batch(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(20):
        await log.append("t1", f"s{i}", 0, [note("first")])
    receipts = await asyncio.gather(*(log.append("t1", f"s{i}", 1, [note("x")]) for i in range(20)))
    assert {r[0].tree_size for r in receipts} == {40}
    await log.close()


async def test_an_idle_log_probes_its_storage_and_a_busy_one_does_not(tmp_path: Path) -> None:
    """``check_storage`` writes one probe once nothing was written for the idle time
    (a failing medium is then seen without a client's write; the read-only filesystem
    test in tests/soak shows that end to end), and never while commits are recent."""
    path = tmp_path / "l.db"
    log = await open_log(path)

    def probes() -> list[str]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT value FROM meta WHERE key = 'storage_probe'")
            return [str(r[0]) for r in rows]
        finally:
            conn.close()

    try:
        await log.append("t1", "s", 0, [note("a")])
        assert await log.check_storage(10, now=time.monotonic() + 5)
        assert probes() == []
        assert await log.check_storage(10, now=time.monotonic() + 11)
        first = probes()
        assert len(first) == 1
        # The probe counts as a write: just after it, the log is not idle.
        assert await log.check_storage(10, now=time.monotonic() + 5)
        assert probes() == first
        assert log.healthy
    finally:
        await log.close()


async def test_a_cancelled_appender_hears_of_it_once_its_append_is_decided(
    tmp_path: Path,
) -> None:
    log = await open_log(tmp_path / "l.db")
    outcome = await log.submit("t1", "s1", 0, [note("a")])
    seen: list[bool] = []

    async def wait() -> None:
        try:
            await outcome
        except asyncio.CancelledError:
            seen.append(outcome.done())
            raise

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0)  # the waiter now awaits the outcome
    assert not outcome.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert seen == [True]  # delivered after the outcome, which the cancel left alone
    (receipt,) = outcome.result()
    assert [r.receipt_id for r in await log.read_stream("t1", "s1")] == [receipt.receipt_id]
    # The same through append: the caller is cancelled, the events are written once.
    appending = asyncio.create_task(log.append("t1", "s1", 1, [note("b")]))
    for _ in range(3):
        await asyncio.sleep(0)
    appending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await appending
    await log.append("t1", "s1", await log.stream_head("t1", "s1"), [note("c")])
    texts = [r.event.payload.text for r in await log.read_stream("t1", "s1")]
    assert texts in (["a", "b", "c"], ["a", "c"])
    await log.close()


class _CommitRaises(SQLiteEventStore):
    """The real store, with a commit that raises at once instead of failing through its
    awaitable: a defect, which the writer task does not survive."""

    def commit(self, batch: Batch) -> Awaitable[None]:
        raise RuntimeError("defect in commit")


async def test_regression_appends_queued_when_the_writer_dies_fail_instead_of_hanging(
    tmp_path: Path,
) -> None:
    # An append's outcome cannot be cancelled (Log.submit), so a writer task that died
    # with appends queued would leave their callers waiting for ever.
    log = await Log.open(_CommitRaises(tmp_path / "l.db"), signer(), CATALOG)
    first = asyncio.ensure_future(log.append("t1", "s1", 0, [note("a")]))
    second = asyncio.ensure_future(log.append("t1", "s2", 0, [note("b")]))
    done, _ = await asyncio.wait([first, second], timeout=10)
    assert len(done) == 2
    for task in (first, second):
        with pytest.raises(LedgerError):
            task.result()
    with pytest.raises(StorageUnavailableError):
        await log.append("t1", "s3", 0, [note("c")])
    await log.close()


async def test_regression_close_while_an_append_awaits_its_stream_head_fails_the_append(
    tmp_path: Path,
) -> None:
    # submit() checked for closing only before awaiting the head of a stream it had not
    # seen; queued after close() had stopped the writer, the append was never decided,
    # and its outcome cannot be cancelled, so its caller (and loop teardown) hung.
    log = await open_log(tmp_path / "l.db")
    task = asyncio.create_task(log.append("t1", "new-stream", 0, [note("x")]))
    await asyncio.sleep(0)  # inside submit(), awaiting the head read
    await log.close()
    done, _ = await asyncio.wait([task], timeout=10)
    stranded = list(log._pending)
    for req in stranded:  # so that the test fails rather than hangs teardown
        if not req.future.done():
            req.future.set_exception(LedgerError("stranded"))
    await asyncio.wait([task], timeout=10)
    assert done, f"append() never finished: {len(stranded)} stranded"
    with pytest.raises(StorageUnavailableError):
        task.result()


class _GatedCommitRaises(GatedStore):
    def commit(self, batch: Batch) -> Awaitable[None]:
        raise RuntimeError("defect in commit")


async def test_regression_an_append_awaiting_its_stream_head_when_the_writer_dies_fails(
    tmp_path: Path,
) -> None:
    # The same window as close(): the writer died while submit() read a new stream's
    # head, and the append was then queued where nothing would ever take it.
    store = _GatedCommitRaises(tmp_path / "l.db")
    log = await Log.open(store, signer(), CATALOG)
    try:
        assert await log.stream_head("t1", "s1") == 0  # cached: its append queues at once
        gate = store.head_gate = asyncio.Event()
        late = asyncio.create_task(log.append("t1", "late", 0, [note("x")]))
        await asyncio.wait_for(store.head_held.wait(), timeout=10)
        with pytest.raises(StorageUnavailableError):
            await log.append("t1", "s1", 0, [note("a")])  # the writer dies of it
        gate.set()
        done, _ = await asyncio.wait([late], timeout=10)
        stranded = list(log._pending)
        for req in stranded:  # so that the test fails rather than hangs teardown
            if not req.future.done():
                req.future.set_exception(LedgerError("stranded"))
        await asyncio.wait([late], timeout=10)
        assert done, f"append() never finished: {len(stranded)} stranded"
        with pytest.raises(StorageUnavailableError):
            late.result()
    finally:
        store.head_gate = None
        await log.close()


async def test_regression_an_append_timed_before_1970_is_an_invalid_event(tmp_path: Path) -> None:
    # The event ids' ULID time starts at 1970; the mint's bare ValueError escaped
    # submit(), outside the ledger's exception root.
    log = await open_log(tmp_path / "l.db")
    try:
        with pytest.raises(InvalidEventError, match="1970"):
            await log.append("t1", "s1", 0, [note("x")], now=datetime(1969, 7, 20, tzinfo=UTC))
        assert not log._pending
        (receipt,) = await log.append("t1", "s1", 0, [note("y")], now=FIXED_TIME)
        assert receipt.leaf_index == 0
    finally:
        await log.close()


async def test_regression_a_batch_prepared_while_the_one_before_fails_is_not_corruption(
    tmp_path: Path,
) -> None:
    # _prepare took the provisional tip, then awaited an evicted stream's head; the
    # batch in flight failed meanwhile and the tip was discarded, yet the batch was
    # built on the old tip under the new epoch, and the store's refusal of its gap
    # reached its appenders as IntegrityError (corruption) instead of a clean append.
    path = tmp_path / "l.db"
    store = GatedStore(path)
    log = await Log.open(store, signer(), CATALOG, stream_cache=1)
    try:
        await log.append("t1", "s0", 0, [note("warm-up")])
        written, full = asyncio.Event(), asyncio.Event()
        store.plan = [(written, False), (full, True)]
        a = await log.submit("t1", "a", 0, [note("a")])
        await spin()
        b = await log.submit("t1", "b", 0, [note("b")])  # prepared on a's tip
        await spin()
        c = await log.submit("t1", "c", 0, [note("c")])  # two in flight: c waits
        store.head_gate = asyncio.Event()
        written.set()  # a commits, and its finish evicts c's head (stream_cache=1)
        await asyncio.wait([a], timeout=10)
        await spin()
        assert log._taken, "c's batch is not being prepared"
        assert ("t1", "c") not in log._heads, "c's head was not evicted"
        full.set()  # b's commit fails while c's head is read
        await asyncio.wait([b], timeout=10)
        store.head_gate.set()
        await asyncio.wait([c], timeout=10)
        assert a.exception() is None
        assert isinstance(b.exception(), StorageUnavailableError)
        assert c.exception() is None, repr(c.exception())
        (receipt,) = c.result()
        assert receipt.leaf_index == 2  # where the log really ends, after a
        assert await log.stream_head("t1", "b") == 0
    finally:
        store.head_gate = None
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


async def test_regression_a_conflict_with_an_append_in_flight_names_the_committed_head(
    tmp_path: Path,
) -> None:
    # The conflict check runs on the provisional heads (batches prepared, not yet
    # committed), and the error named that head as where the stream is: when the batch
    # in flight then failed, the appender was told of a sequence the stream never had.
    # (An append wrong whatever the batch in flight does is refused at once.)
    store = GatedStore(tmp_path / "l.db")
    log = await Log.open(store, signer(), CATALOG)
    full = asyncio.Event()
    try:
        await log.append("t1", "s", 0, [note("s1")])
        store.plan = [(full, True)]
        a = await log.submit("t1", "s", 1, [note("s2"), note("s3")])
        await spin()
        behind = await log.submit("t1", "s", 0, [note("s1 too")])
        ahead = await log.submit("t1", "s", 5, [note("s6")])
        await spin()
        assert behind.done(), "an append behind the committed head waited for a"
        assert ahead.done(), "an append past the head a would leave waited for a"
        assert not a.done()
        full.set()
        await asyncio.wait([a], timeout=10)
        assert isinstance(a.exception(), StorageUnavailableError)
        errors = [behind.exception(), ahead.exception()]
        assert all(isinstance(e, ConflictError) for e in errors), errors
        assert [(e.actual_seq, e.pending_seq) for e in errors] == [(1, 3), (1, 3)]  # type: ignore[union-attr]
        assert str(errors[1]) == (
            "stream 's' is at seq 1 (3 once the appends in flight commit), not the expected 5"
        )
        assert await log.stream_head("t1", "s") == 1
    finally:
        full.set()
        await log.close()


@pytest.mark.parametrize("in_flight_fails", [True, False])
async def test_regression_an_append_behind_one_in_flight_is_judged_on_what_it_committed(
    tmp_path: Path, in_flight_fails: bool
) -> None:
    # An append expecting the committed head, behind a batch in flight on its stream,
    # was refused with a conflict at once; when that batch then failed (a full disk),
    # the stream never moved, and the client had been refused an append that was valid.
    path = tmp_path / "l.db"
    store = GatedStore(path)
    log = await Log.open(store, signer(), CATALOG)
    gate = asyncio.Event()
    try:
        await log.append("t1", "s", 0, [note("s1")])
        store.plan = [(gate, in_flight_fails)]
        a = await log.submit("t1", "s", 1, [note("a2"), note("a3")])
        await spin()
        b = await log.submit("t1", "s", 1, [note("b2")])
        await spin()
        assert not b.done(), "b was decided while the batch that decides it was in flight"
        gate.set()
        await asyncio.wait([a, b], timeout=10)
        assert a.done(), "a's commit never ended"
        assert b.done(), "b was never decided after a's batch ended"
        texts = [r.event.payload.text for r in await log.read_stream("t1", "s")]
        if in_flight_fails:
            assert isinstance(a.exception(), StorageUnavailableError)
            assert b.exception() is None, repr(b.exception())
            (receipt,) = b.result()
            assert receipt.leaf_index == 1
            assert texts == ["s1", "b2"]
        else:
            assert a.exception() is None
            error = b.exception()
            assert isinstance(error, ConflictError)
            assert (error.actual_seq, error.pending_seq) == (3, None)
            assert texts == ["s1", "a2", "a3"]
    finally:
        gate.set()
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


async def test_regression_an_append_behind_one_in_its_own_failed_batch_is_appended_after(
    tmp_path: Path,
) -> None:
    # Two appends at one expected sequence taken into one batch: the second conflicted
    # with the first, and when that batch's commit failed, neither was written, yet the
    # second's client heard of a conflict rather than of either outcome it could retry.
    path = tmp_path / "l.db"
    store = GatedStore(path)
    log = await Log.open(store, signer(), CATALOG)
    full = asyncio.Event()
    try:
        assert await log.stream_head("t1", "s") == 0  # cached: both queue at once
        store.plan = [(full, True)]
        a = await log.submit("t1", "s", 0, [note("a")])
        b = await log.submit("t1", "s", 0, [note("b")])
        await spin()
        assert not a.done()
        assert not b.done()
        full.set()
        await asyncio.wait([a, b], timeout=10)
        assert isinstance(a.exception(), StorageUnavailableError)
        assert b.exception() is None, repr(b.exception())
        assert [r.event.payload.text for r in await log.read_stream("t1", "s")] == ["b"]
    finally:
        full.set()
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


class _EveryThirdCommitFails(SQLiteEventStore):
    """The real store, whose every third commit writes nothing and fails as a full disk
    would, through the commit's awaitable."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits = 0

    def commit(self, batch: Batch) -> Awaitable[None]:
        self.commits += 1
        if self.commits % 3:
            return super().commit(batch)

        async def fail() -> None:
            raise StorageUnavailableError("storage cannot write: disk full (injected)")

        return asyncio.ensure_future(fail())


async def test_conflicts_under_failing_commits_are_only_ever_with_committed_events(
    tmp_path: Path,
) -> None:
    """Racing writers on a few streams, each retrying at the head a conflict names,
    while every third commit fails: no two events share a stream sequence, every
    acknowledged event is stored, and a conflict never names the expected sequence as
    the stream's head (it was judged against events that were really committed)."""
    path = tmp_path / "l.db"
    store = _EveryThirdCommitFails(path)
    log = await Log.open(store, signer(), CATALOG, max_batch=8)
    streams = [f"s{i}" for i in range(3)]
    acknowledged: dict[str, list[str]] = {s: [] for s in streams}
    conflicts: list[ConflictError] = []
    try:

        async def writer(w: int) -> None:
            rng = random.Random(w)
            for i in range(12):
                stream = rng.choice(streams)
                expected = await log.stream_head("t1", stream)
                text = f"{w}.{i}"
                try:
                    await log.append("t1", stream, expected, [note(text)])
                except ConflictError as e:
                    conflicts.append(e)
                    continue
                except StorageUnavailableError:
                    continue
                acknowledged[stream].append(text)

        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(24))), timeout=120)
        assert store.commits >= 6, "too few commits for any to have failed"
        assert conflicts, "the writers never raced"
        for error in conflicts:
            assert error.actual_seq != error.expected_seq, str(error)
        for stream in streams:
            records = await log.read_stream("t1", stream)
            assert [r.event.stream_seq for r in records] == list(range(1, len(records) + 1))
            assert sorted(r.event.payload.text for r in records) == sorted(acknowledged[stream])
    finally:
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


async def test_regression_a_head_read_before_a_commit_does_not_bring_back_an_old_head(
    tmp_path: Path,
) -> None:
    # A head read answered after a commit advanced its stream and the stream had left
    # the bounded head cache put the head it had read (older) back into the cache; an
    # append at that old head then passed the conflict check and gave the stream a
    # second event with the same sequence number.
    path = tmp_path / "l.db"
    store = GatedStore(path)
    log = await Log.open(store, signer(), CATALOG, stream_cache=1)
    try:
        await log.append("t1", "x", 0, [note("x1")])
        for stream in ("w", "u"):  # heads known, so the appends below queue at once
            assert await log.stream_head("t1", stream) == 0
        first, second = asyncio.Event(), asyncio.Event()
        store.plan = [(first, False), (second, False)]
        a = await log.submit("t1", "w", 0, [note("w1")])
        await spin()
        b = await log.submit("t1", "x", 1, [note("x2")])
        c = await log.submit("t1", "u", 0, [note("u1")])  # one batch with b, behind a
        await spin()
        first.set()  # a commits, and its finish evicts x's head (stream_cache=1)
        await asyncio.wait([a], timeout=10)
        assert ("t1", "x") not in log._heads
        store.head_gate = asyncio.Event()
        reading = asyncio.create_task(log.stream_head("t1", "x"))
        await asyncio.wait_for(store.head_held.wait(), timeout=10)  # x is at 1 in the store
        second.set()  # b and c commit: x is at 2, and evicted again for u
        await asyncio.wait([b, c], timeout=10)
        assert b.exception() is None
        assert c.exception() is None
        assert ("t1", "x") not in log._heads
        store.head_gate.set()
        await asyncio.wait([reading], timeout=10)
        with pytest.raises(ConflictError, match="is at seq 2"):
            await log.append("t1", "x", 1, [note("x2 again")])
        assert [r.event.stream_seq for r in await log.read_stream("t1", "x")] == [1, 2]
        assert reading.result() == 2  # what was committed before it answered
        assert await log.stream_head("t1", "x") == 2
    finally:
        store.head_gate = None
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("trigger", "update"),
    [
        ("events_no_update", "UPDATE events SET leaf = CAST(leaf AS TEXT) WHERE leaf_index = 2"),
        ("events_no_update", "UPDATE events SET leaf = CAST(leaf || x'ff' AS TEXT)"),
        ("tree_hashes_no_update", "UPDATE tree_hashes SET hashes = hex(hashes)"),
    ],
    ids=["leaf-as-text", "leaf-as-text-not-utf8", "tree-hashes-as-text"],
)
async def test_regression_open_refuses_columns_rewritten_as_text_as_integrity_errors(
    tmp_path: Path, trigger: str, update: str
) -> None:
    # Startup hashed what it read without asking its type, and crashed with TypeError
    # (or, for text that is not UTF-8, said storage could not write).
    log = await open_log(tmp_path / "l.db")
    for i in range(3):
        await log.append("t1", "s", i, [note(f"value-{i}")])
    await log.close()
    conn = sqlite3.connect(tmp_path / "l.db")
    conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute(update)
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError):
        await open_log(tmp_path / "l.db")


async def test_regression_a_read_only_open_beside_a_live_writer_succeeds(tmp_path: Path) -> None:
    # The startup check read the latest checkpoint and the event count in two reads: a
    # batch committed in between refused the open (`maip-ledger export` beside a server).
    path = tmp_path / "l.db"
    async with writing_beside(path):
        for _ in range(30):
            ro = await Log.open(SQLiteEventStore(path, read_only=True), signer(), CATALOG)
            await ro.close()


async def test_an_open_refuses_events_beyond_the_latest_checkpoint(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    for i in range(3):
        await log.append("t1", "s", i, [note(f"value-{i}")])
    await log.close()
    conn = sqlite3.connect(tmp_path / "l.db")
    conn.execute("DROP TRIGGER checkpoints_no_delete")
    conn.execute("DELETE FROM checkpoints WHERE tree_size = 3")
    conn.commit()
    conn.close()
    for store in (SQLiteEventStore(tmp_path / "l.db", read_only=True), None):
        with pytest.raises(IntegrityError, match="3 events are stored but the latest"):
            await Log.open(store or SQLiteEventStore(tmp_path / "l.db"), signer(), CATALOG)


async def test_regression_a_negative_read_limit_is_an_invalid_argument(tmp_path: Path) -> None:
    # SQLite takes LIMIT -1 as no limit: read_log(0, -1) read the whole log, and
    # read_stream then cut its answer as a Python slice does (all but the last event).
    path = tmp_path / "l.db"
    log = await open_log(path)
    for seq in range(3):
        await log.append("t1", "s1", seq, [note(f"{seq}")])
    await log.close()
    log = await open_log(path)  # the stream index now covers every event
    try:
        for read in (
            lambda: log.read_log(0, -1),
            lambda: log.read_stream("t1", "s1", 0, -1),
        ):
            with pytest.raises(InvalidEventError, match="limit"):
                await read()
        assert len(await log.read_log(0, 0)) == 0
        assert len(await log.read_stream("t1", "s1", 0, 0)) == 0
    finally:
        await log.close()


async def test_regression_reads_at_positions_past_64_bits_are_empty_or_not_found(
    tmp_path: Path,
) -> None:
    # SQLite integers are 64-bit: binding a larger position or limit raised a bare
    # OverflowError. Nothing is stored that far, and a limit that large is no limit.
    log = await open_log(tmp_path / "l.db")
    try:
        for seq in range(3):
            await log.append("t1", "s1", seq, [note(f"{seq}")])
        huge = 1 << 64
        assert await log.read_log(huge, 5) == []
        assert await log.read_log(-huge, 5) == await log.read_log(0, 5)
        assert len(await log.read_log(0, huge)) == 3
        assert await log.read_stream("t1", "s1", huge) == []
        assert len(await log.read_stream("t1", "s1", -huge, huge)) == 3
        with pytest.raises(NotFoundError):
            await log.checkpoint_at(huge)
        with pytest.raises(NotFoundError):
            await log.checkpoint_at(-huge)
    finally:
        await log.close()


async def test_regression_a_stored_leaf_that_does_not_decode_is_an_integrity_error(
    tmp_path: Path,
) -> None:
    # Reads decoded stored leaves unguarded: a damaged leaf raised InvalidEventError, the
    # error for a caller's bad input (an HTTP 422), where a receipt fetch of the same
    # leaf already said IntegrityError.
    path = tmp_path / "l.db"
    log = await open_log(path)
    receipts = [await log.append("t1", "s", i, [note(f"value-{i}")]) for i in range(3)]
    await log.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET leaf = x'7b7d' WHERE leaf_index = 1")  # b"{}"
    conn.commit()
    conn.close()
    log = await open_log(path)  # the startup check reads only the newest leaf
    try:
        for read in (
            lambda: log.read_log(0, 10),
            lambda: log.read_stream("t1", "s"),
            lambda: log.recorded(receipts[1][0].event_id),
            lambda: log.get_receipt(receipts[1][0].receipt_id),
        ):
            with pytest.raises(IntegrityError, match="leaf 1 does not decode") as caught:
                await read()
            assert caught.value.index == 1
    finally:
        await log.close()


async def test_regression_a_cancelled_close_is_not_reported_as_a_log_never_closed(
    tmp_path: Path,
) -> None:
    # close() awaits the writer task, so cancelling close() cancels the writer too; that
    # was logged as log.not_closed, "the event loop ended before Log.close()": an
    # operator would look for a missing close() that is there.
    store = GatedStore(tmp_path / "l.db")
    log = await Log.open(store, signer(), CATALOG)
    gate = asyncio.Event()
    store.plan = [(gate, False)]
    try:
        with capture_logs() as logs:
            a = await log.submit("t1", "s", 0, [note("in flight")])
            await spin()
            closing = asyncio.create_task(log.close())
            await spin(5)
            closing.cancel()
            await asyncio.wait([closing])
        events = [entry["event"] for entry in logs]
        assert "log.not_closed" not in events, logs
        assert "log.close_cancelled" in events, logs
        # The batch in flight still ends as its commit does.
        gate.set()
        await asyncio.wait([a], timeout=10)
        assert a.done()
        assert a.exception() is None
    finally:
        gate.set()
        await log.close()


async def test_regression_a_cancelled_close_still_commits_every_append_it_had_accepted(
    tmp_path: Path,
) -> None:
    # close() awaited the writer task itself, so a shutdown timeout that cancelled
    # close() cancelled the writer: appends queued behind the batch in flight were
    # failed as if storage had refused them, though nothing had gone wrong.
    path = tmp_path / "l.db"
    store = GatedStore(path)
    log = await Log.open(store, signer(), CATALOG)
    gate = asyncio.Event()
    try:
        for stream in ("a", "b", "c"):  # heads known: each append queues at once
            assert await log.stream_head("t1", stream) == 0
        store.plan = [(gate, False), (gate, False)]  # let through in order, together
        a = await log.submit("t1", "a", 0, [note("a")])
        await spin()
        b = await log.submit("t1", "b", 0, [note("b")])  # prepared behind a: two in flight
        await spin()
        c = await log.submit("t1", "c", 0, [note("c")])  # not taken yet
        await spin()
        assert [f.done() for f in (a, b, c)] == [False, False, False]
        with capture_logs() as logs:
            closing = asyncio.create_task(log.close())
            await spin()
            closing.cancel()
            await asyncio.wait([closing], timeout=10)
        assert closing.cancelled()
        assert "log.close_cancelled" in [entry["event"] for entry in logs], logs
        with pytest.raises(StorageUnavailableError, match="shutting down"):
            await log.submit("t1", "d", 0, [note("d")])  # refused: the log is closing
        gate.set()
        await asyncio.wait([a, b, c], timeout=10)
        for outcome in (a, b, c):
            assert outcome.done(), "an accepted append was never decided"
            assert outcome.exception() is None, repr(outcome.exception())
        # The close goes on without its caller; a second close() waits for its end.
        await asyncio.wait_for(log.close(), timeout=10)
    finally:
        gate.set()
        await log.close()
    log = await open_log(path)
    try:
        assert log.size == 3
        receipts = [r for f in (a, b, c) for r in f.result()]
        for receipt in receipts:
            verify_receipt_offline(receipt, (await log.recorded(receipt.event_id)).leaf)
    finally:
        await log.close()
    report = await fsck_path(path)
    assert report.ok, report.problems
