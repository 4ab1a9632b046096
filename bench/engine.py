"""Engine benchmark: scripted 3-step workflows end to end, then replay speed.

``run(quick)`` prints:

1. throughput of a 3-step scripted workflow (llm -> tool -> decision) through the engine
   with no HTTP, 32 orchestrations in flight, on a real SQLite file, every event
   receipted (durable and covered by a signed checkpoint);
2. replay speed: rebuilding every orchestration's state from the log (read, decode,
   fold) for 100,000 orchestrations (quick: 10,000).
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.events import NewEvent, decode_leaf
from ledger.log import Log
from ledger.note import NoteSigner, generate_signer
from ledger.orchestration import (
    ORCHESTRATION_EVENTS,
    Engine,
    OrchestrationProjection,
    OrchestrationSummary,
    SQLiteSummaryStore,
)
from ledger.orchestration.events import ORCHESTRATION_STARTED, OrchestrationStarted
from ledger.sqlite_store import SQLiteEventStore

TENANT = "bench"
CONCURRENCY = 32
# Fixed, so the cached replay log reopens under the same key.
SIGNER = NoteSigner("bench.local/log", Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))
WORKFLOW: dict[str, Any] = {
    "steps": [
        {"id": "classify", "action": "llm", "prompt": "Classify: {{ input.text }}"},
        {
            "id": "lookup",
            "action": "tool",
            "tool": "json_extract",
            "depends_on": ["classify"],
            "inputs": {"data": "{{ steps.classify.output.json }}", "path": "label"},
        },
        {
            "id": "route",
            "action": "decision",
            "depends_on": ["lookup"],
            "condition": {"eq": ["steps.lookup.output", "spam"]},
        },
    ]
}


async def _throughput(engine: Engine, count: int) -> tuple[float, list[str]]:
    agent = await engine.register_agent(
        TENANT,
        name="classifier",
        provider={"kind": "scripted", "responses": [{"content": '{"label": "spam"}'}]},
    )
    wf = await engine.register_workflow(TENANT, name="triage", definition=WORKFLOW)
    ids: list[str] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            next_i += 1
            started = await engine.execute(
                TENANT,
                workflow_id=wf.workflow_id,
                agents=[agent.agent_id],
                input={"text": "win a prize"},
            )
            state = await engine.wait(TENANT, started.orchestration_id)
            if state.status != "completed":
                raise RuntimeError(f"orchestration ended {state.status}: {state.reason}")
            ids.append(started.orchestration_id)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0, ids


async def _fill(log: Log, template: list[Any], count: int) -> None:
    """Grow the replay set to ``count`` orchestrations (setup, not timed).

    Running 100,000 orchestrations through the engine would take minutes here, so one
    real run's events are appended again under new stream ids, with each payload's
    ``orchestration_id`` rewritten to match: the replay folds genuine engine events.
    """
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            next_i += 1
            stream = str(uuid.UUID(int=next_i))
            events = [
                NewEvent(
                    e.type,
                    msgspec.structs.replace(e.payload, orchestration_id=stream)
                    if hasattr(e.payload, "orchestration_id")
                    else e.payload,
                )
                for e in template
            ]
            await log.append(TENANT, stream, 0, events)

    await asyncio.gather(*(worker() for _ in range(64)))


async def _log_ceiling(log: Log, count: int) -> float:
    """The same append pattern without the engine: per orchestration, 2 events then 12,
    32 streams at a time. The engine cannot beat this; it shows what the log allows."""
    filler = OrchestrationStarted(orchestration_id="x")
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            next_i += 1
            stream = f"ceiling-{next_i}"
            await log.append(TENANT, stream, 0, [NewEvent(ORCHESTRATION_STARTED, filler)] * 2)
            await log.append(TENANT, stream, 2, [NewEvent(ORCHESTRATION_STARTED, filler)] * 12)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - t0)


async def _replay(log: Log) -> tuple[float, int, int]:
    """Read every stored leaf, decode it, fold it into its orchestration's state."""
    projection = OrchestrationProjection()
    folds: dict[tuple[str, str], OrchestrationProjection.FoldState] = {}
    catalog = log.catalog
    events = 0
    t0 = time.perf_counter()
    index = 0
    size = log.size
    while index < size:
        rows = await log.store.read_log(index, 5000)
        if not rows:
            break
        for row in rows:
            index += 1
            if row.stream_id.startswith(("agent:", "workflow:", "ceiling-")):
                continue
            e = decode_leaf(row.leaf, catalog)
            key = (e.tenant_id, e.stream_id)
            fold = folds.get(key)
            folds[key] = projection.apply(fold or projection.initial(), e)
            events += 1
    seconds = time.perf_counter() - t0
    done = sum(1 for f in folds.values() if f.state is not None and f.state.status == "completed")
    if done != len(folds):
        raise RuntimeError(f"only {done} of {len(folds)} replayed states are completed")
    return seconds, events, len(folds)


async def _all_summaries(engine: Engine) -> list[OrchestrationSummary]:
    out: list[OrchestrationSummary] = []
    cursor = None
    while True:
        page, cursor = await engine.list_orchestrations(TENANT, limit=500, cursor=cursor)
        out += page
        if cursor is None:
            return out


async def _summary_reads(engine: Engine, ids: list[str]) -> tuple[float, float]:
    """Mean seconds to read one summary the engine no longer holds (from the file), and
    to list one page of the newest 50."""
    picks = random.Random(7).sample(ids, min(500, len(ids)))
    t0 = time.perf_counter()
    for oid in picks:
        if await engine.summaries.get(TENANT, oid) is None:
            raise RuntimeError(f"no summary of {oid}")
    read = (time.perf_counter() - t0) / len(picks)
    pages = 50
    t0 = time.perf_counter()
    for _ in range(pages):
        page, _ = await engine.list_orchestrations(TENANT, limit=50)
        if len(page) != 50:
            raise RuntimeError(f"a page of {len(page)} summaries, not 50")
    return read, (time.perf_counter() - t0) / pages


async def _main(quick: bool) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    timed = 2_000 if quick else 5_000
    replay_total = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteEventStore(Path(tmp) / "bench.db")
        log = await Log.open(store, generate_signer("bench.local/log"), ORCHESTRATION_EVENTS)
        # Summaries in their own file, as the server keeps them.
        engine = Engine(log, summaries=SQLiteSummaryStore(Path(tmp) / "summaries.db"))
        await engine.start()
        warmup = 200
        await _throughput(engine, warmup)  # warm up (not timed; said in the figure line)
        seconds, ids = await _throughput(engine, timed)
        counts = set()
        for oid in ids:  # every timed orchestration: completed, each event receipted
            state = engine.live_state(TENANT, oid) or await engine.get_state(TENANT, oid)
            if state.status != "completed":
                raise RuntimeError(f"orchestration {oid} is {state.status}")
            counts.add(len(state.receipts))
        if len(counts) != 1:
            raise RuntimeError(f"orchestrations have different event counts: {sorted(counts)}")
        (per_orch,) = counts
        for oid in ids[:: max(1, len(ids) // 50)]:  # live state == a fresh replay, sampled
            if await engine.get_state(TENANT, oid) != engine.live_state(TENANT, oid):
                raise RuntimeError(f"live state of {oid} differs from its replay")
        print(
            f"engine: {len(ids)} orchestrations (llm -> tool -> decision, scripted, "
            f"{CONCURRENCY} in flight, after {warmup} untimed to warm up) in "
            f"{seconds:.2f} s = {len(ids) / seconds:,.0f} "
            f"orchestrations/s, {len(ids) * per_orch / seconds:,.0f} receipted events/s "
            f"({per_orch} events each)"
        )
        ceiling = await _log_ceiling(log, timed // 2)
        print(
            f"log alone, same pattern (2 then 12 events per stream, {CONCURRENCY} streams at "
            f"a time): {ceiling:,.0f} streams/s, {ceiling * 14:,.0f} events/s"
        )
        template = [r.event for r in await log.read_stream(TENANT, ids[-1])]
        await engine.close()
        await log.close()

    cache = Path(__file__).parent / "out"
    cache.mkdir(exist_ok=True)
    path = cache / f"engine-replay-{replay_total}.db"
    log = await Log.open(SQLiteEventStore(path), SIGNER, ORCHESTRATION_EVENTS)
    if log.size < replay_total * len(template):
        t0 = time.perf_counter()
        await _fill(log, template, replay_total)
        print(
            f"(setup: appended {replay_total:,} orchestrations' events in "
            f"{time.perf_counter() - t0:.0f} s; cached in {path})"
        )
    seconds, events, orchestrations = await _replay(log)
    print(
        f"replay: rebuilt {orchestrations:,} orchestration states from {events:,} events "
        f"in {seconds:.2f} s = {events / seconds:,.0f} events/s "
        f"({orchestrations / seconds:,.0f} orchestrations/s)"
    )
    # Restart: the engine's registry from its snapshot and the summaries from their file.
    # A log without them is folded whole once (setup), and that start saves what the
    # timed one loads.
    summaries = path.with_name(path.stem + ".summaries.db")
    for timed_start in (False, True):
        t0 = time.perf_counter()
        engine = Engine(log, summaries=SQLiteSummaryStore(summaries))
        await engine.start(resume=False)
        took, folded = time.perf_counter() - t0, engine.replayed_at_start
        if timed_start:
            print(
                f"restart: engine ready on the {log.size:,}-event log in {took:.2f} s, its "
                f"registry from a snapshot and its summaries from their file ({folded:,} "
                "events folded after them)"
            )
            ids = [s.orchestration_id for s in await _all_summaries(engine)]
            read, page = await _summary_reads(engine, ids)
            print(
                f"summaries: {engine.summaries.count:,} orchestrations, "
                f"{engine.summaries.held:,} held in memory; one read from the file "
                f"{read * 1e6:,.0f} µs, a page of the newest 50 {page * 1000:.2f} ms"
            )
        elif folded:
            print(f"(setup: folded {folded:,} events into the registry in {took:.1f} s)")
        await engine.close()
    await log.close()


def run(quick: bool) -> None:
    asyncio.run(_main(quick))


if __name__ == "__main__":
    run("--quick" in sys.argv)
