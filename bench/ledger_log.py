"""Ledger core benchmarks (issue: ledger core): durable appends, flat cost, proofs, bytes.

Everything runs in this process against a real SQLite file with synchronous=FULL and
real Ed25519 signing. Each figure is printed with what it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import tlog
from ledger.events import EventCatalog, NewEvent
from ledger.log import Log
from ledger.note import NoteSigner
from ledger.sqlite_store import SQLiteEventStore
from ledger.store import HashRow


class BenchEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str


CATALOG = EventCatalog({"bench.event": BenchEvent})
SIGNER = NoteSigner("bench.maip.local/log", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
# ~400 canonical bytes per event, envelope included.
PAYLOAD = BenchEvent("x" * 240)


def _stream(n: int) -> str:
    return f"3c90c3cc-0d44-4b50-8888-{n:012d}"


async def _open(path: Path) -> Log:
    return await Log.open(SQLiteEventStore(path), SIGNER, CATALOG)


class _CountingStore(SQLiteEventStore):
    """A store that counts the stored-hash reads proofs make (how cold they were)."""

    hash_reads = 0
    rows_read = 0

    async def hash_rows(self, indexes: Sequence[int]) -> list[HashRow]:
        rows = await super().hash_rows(indexes)
        self.hash_reads += 1
        self.rows_read += len(rows)
        return rows


async def _closed_loop(
    log: Log, appenders: int, total: int, offset: int = 0
) -> tuple[float, list[float]]:
    """``appenders`` tasks, each appending one event at a time to its own stream."""
    latencies: list[float] = []
    per = total // appenders

    async def appender(w: int) -> None:
        stream = _stream(offset + w)
        seq = await log.stream_head("bench", stream)
        for _ in range(per):
            t = time.perf_counter()
            receipts = await log.append("bench", stream, seq, [NewEvent("bench.event", PAYLOAD)])
            latencies.append(time.perf_counter() - t)
            assert receipts[0].inclusion_proof is not None
            seq += 1

    start = time.perf_counter()
    await asyncio.gather(*(appender(w) for w in range(appenders)))
    return per * appenders / (time.perf_counter() - start), latencies


async def _open_loop(log: Log, rate: int, seconds: float) -> tuple[int, int, list[float]]:
    """Offer ``rate`` events/s on a fixed schedule for ``seconds``; latency counts from
    the scheduled time. An append is held back while every stream has one in flight and
    issued as soon as one is free, its latency still counted from its scheduled time;
    every scheduled append is issued, so none is left out of the percentiles.

    Returns the scheduled count, how many appends failed (not in the latencies), and
    the latencies of those that succeeded."""
    latencies: list[float] = []
    streams = 1024
    heads = [0] * streams
    busy = [False] * streams
    tasks: set[asyncio.Task[None]] = set()
    failed = 0
    total = int(seconds * rate)

    async def one(s: int, scheduled: float) -> None:
        nonlocal failed
        try:
            await log.append("bench-open", _stream(s), heads[s], [NewEvent("bench.event", PAYLOAD)])
            heads[s] += 1
            latencies.append(time.perf_counter() - scheduled)
        except Exception:  # counted and reported, never a latency
            failed += 1
        finally:
            busy[s] = False

    start = time.perf_counter()
    issued = 0
    n = 0
    while issued < total:
        due = min(total, int((time.perf_counter() - start) * rate))
        while issued < due:
            free = next((k for k in range(streams) if not busy[(n + k) % streams]), None)
            if free is None:
                break  # every stream has an append in flight: the log is saturated
            n += free
            busy[n % streams] = True
            task = asyncio.create_task(one(n % streams, start + issued / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            issued += 1
            n += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    return total, failed, latencies


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1000


async def _fill(log: Log, target: int) -> None:
    """Grow the log quickly to ``target`` with large appends (setup, not measured)."""
    stream = _stream(999_999)
    seq = await log.stream_head("fill", stream)
    while log.size < target:
        n = min(1000, target - log.size)
        await log.append("fill", stream, seq, [NewEvent("bench.event", PAYLOAD)] * n)
        seq += n


async def _proofs(log: Log, count: int, size: int) -> float:
    """``count`` inclusion proofs of random leaves in the tree of the first ``size``."""
    rng = random.Random(7)
    start = time.perf_counter()

    async def worker(k: int) -> None:
        for _ in range(k):
            i = rng.randrange(size)
            proof = await log.inclusion_proof(i, size)
            assert proof

    await asyncio.gather(*(worker(count // 8) for _ in range(8)))
    return (count // 8) * 8 / (time.perf_counter() - start)


def _per_commit(path: Path, after: int) -> float:
    """Entries per commit past leaf ``after``: one stored-hash row is written a commit."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (commits,) = db.execute(
            "SELECT count(*) FROM tree_hashes WHERE start >= ?",
            (tlog.stored_hash_count(after),),
        ).fetchone()
        (size,) = db.execute("SELECT max(tree_size) FROM checkpoints").fetchone()
    return (size - after) / max(1, commits)


async def _cold_proofs(
    path: Path, count: int, size: int, cache_bytes: int | None = None
) -> tuple[float, _CountingStore]:
    """:func:`_proofs` on the log at ``path`` freshly opened: no stored hash in memory
    at the start. The log's hash cache then keeps every row read (the whole tree of a
    million entries fits its default 128 MiB), so after the first few thousand proofs
    the rest are served from memory; ``cache_bytes=0`` keeps (almost) none, so every
    proof reads its rows from SQLite. The store says how many reads were made."""
    store = _CountingStore(path)
    options = {} if cache_bytes is None else {"hash_cache_bytes": cache_bytes}
    log = await Log.open(store, SIGNER, CATALOG, **options)
    try:
        return await _proofs(log, count, size), store
    finally:
        await log.close()


def _remove(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


async def _copy_of_base(out: Path, entries: int) -> Path:
    """A copy of the bench's base log of exactly ``entries`` entries (built once, 1,000
    per commit, and kept between runs), for a run to append to."""
    base = out / f"ledger-base-{entries}.db"
    log = await _open(base)
    if log.size > entries:  # built by an older bench, which appended to it
        await log.close()
        _remove(base)
        log = await _open(base)
    if log.size < entries:
        t = time.perf_counter()
        await _fill(log, entries)
        print(f"(setup: grew a log to {entries:,} entries in {time.perf_counter() - t:.0f} s)")
    await log.close()  # the last connection checkpoints: the whole log is in the .db file
    run = out / f"ledger-{entries}.db"
    _remove(run)
    shutil.copyfile(base, run)
    return run


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


async def _main(quick: bool) -> None:
    out = Path(os.environ.get("MAIP_BENCH_DIR", Path(__file__).parent / "out"))
    out.mkdir(parents=True, exist_ok=True)
    small_n, big_n = (2_000, 100_000) if quick else (10_000, 1_000_000)
    appends = 10_000 if quick else 60_000
    print(
        f"ledger bench: SQLite WAL synchronous=FULL in {out}, Ed25519 checkpoints, "
        f"~{len(PAYLOAD.text) + 160}-byte events"
    )

    # 1. Durable appends, 64 concurrent appenders, at a small log size.
    small = out / "ledger-small.db"
    for p in out.glob("ledger-small.db*"):
        p.unlink()
    log = await _open(small)
    await _fill(log, small_n)
    rate, lat = await _closed_loop(log, 64, appends)
    print(
        f"durable appends, 64 appenders, log of {small_n:,} growing to {log.size:,}: "
        f"{rate:,.0f} events/s, each with "
        f"its receipt; append-to-receipt p50 {_pct(lat, 0.5):.2f} ms, p99 {_pct(lat, 0.99):.2f} ms"
    )

    # 2. Latency at a fixed offered load of 5,000 events/s.
    window = 2.0 if quick else 5.0
    scheduled, failed, lat = await _open_loop(log, 5000, window)
    print(
        f"latency at 5,000 events/s offered ({scheduled:,} appends scheduled over "
        f"{window:.0f} s, {failed} failed): p50 {_pct(lat, 0.5):.2f} ms, "
        f"p99 {_pct(lat, 0.99):.2f} ms, each from its scheduled time"
    )
    events = log.size
    await log.close()
    # The stream index is written behind the commits (ledger/sqlite_store.py): up to a
    # few thousand of the last events are not in it yet at close. Opening the store
    # indexes them, so the bytes below hold every event's index row.
    store = SQLiteEventStore(small)
    await store.open()
    await store.close()
    per_event = _disk_bytes(small) / events
    print(
        f"storage: {per_event:,.0f} bytes per event on disk ({events:,} events, "
        f"db+wal {_disk_bytes(small) / 2**20:.1f} MiB, stream index included)"
    )

    # 3. Flat cost: the same workload on a large log. Each run appends to a fresh copy
    # of a log of exactly ``big_n`` entries, so the figures are of that size every run.
    big = await _copy_of_base(out, big_n)
    log = await _open(big)
    big_rate, lat = await _closed_loop(log, 64, appends, offset=100)
    print(
        f"durable appends, 64 appenders, log of {big_n:,} growing to {log.size:,}: "
        f"{big_rate:,.0f} events/s "
        f"({big_rate / rate:.0%} of the rate at {small_n:,}); p50 {_pct(lat, 0.5):.2f} ms, "
        f"p99 {_pct(lat, 0.99):.2f} ms"
    )

    # 4. Inclusion proofs, random leaves, each run on a freshly opened log (no stored
    # hash in memory yet). How fast a cold proof is depends on how the leaves were
    # committed: one stored row per commit, so small commits mean more rows to read.
    count = 20_000 if quick else 50_000
    size = log.size
    await log.close()
    whole, store = await _cold_proofs(big, count, size)
    print(
        f"inclusion proofs in the whole {size:,}-entry log: {whole:,.0f} proofs/s "
        f"({count:,} random leaves, 8 concurrent readers, freshly opened log: its hash "
        f"cache starts empty and keeps what it reads, {store.rows_read:,} stored-hash rows "
        f"in {store.hash_reads:,} reads, so later proofs come from memory; the entries "
        f"past {big_n:,} came from the 64-appender runs, "
        f"{_per_commit(big, big_n):.0f} per commit)"
    )
    first, store = await _cold_proofs(big, count, big_n)
    print(
        f"inclusion proofs in the tree of its first {big_n:,} entries: {first:,.0f} "
        f"proofs/s (same readers, freshly opened, {store.rows_read:,} rows in "
        f"{store.hash_reads:,} reads; entries written 1,000 per commit)"
    )
    uncached, store = await _cold_proofs(big, count // 5, size, cache_bytes=0)
    print(
        f"inclusion proofs in the whole {size:,}-entry log with no hash cache: "
        f"{uncached:,.0f} proofs/s ({count // 5:,} random leaves, same readers; every "
        f"proof reads its rows from SQLite: {store.rows_read:,} rows in "
        f"{store.hash_reads:,} reads)"
    )


def run(quick: bool) -> None:
    asyncio.run(_main(quick))


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
