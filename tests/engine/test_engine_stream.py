"""StreamWriter: a flush cancelled at any moment leaves the stream and the writer agreeing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from engine_helpers import TENANT

from ledger.log import Log
from ledger.note import generate_signer
from ledger.orchestration import ORCHESTRATION_EVENTS
from ledger.orchestration import events as ev
from ledger.orchestration.stream import StreamWriter
from ledger.sqlite_store import SQLiteEventStore


async def test_a_flush_cancelled_anywhere_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    log = await Log.open(
        SQLiteEventStore(tmp_path / "l.db"), generate_signer("t.test/log"), ORCHESTRATION_EVENTS
    )
    writer = StreamWriter(log, TENANT, "stream-1", 0, now=lambda: datetime.now(UTC))
    emitted: list[str] = []
    outcomes = set()
    # Cancel after 0, 1, 2, ... loop turns: before the append is queued (the events go
    # back in the buffer), while it commits, and after (the sequence moves on).
    for turns in range(12):
        step = f"s{turns}"
        writer.emit(ev.STEP_SKIPPED, ev.StepSkipped(orchestration_id="o", step_id=step, reason="x"))
        emitted.append(step)
        flushing = asyncio.ensure_future(writer.flush())
        for _ in range(turns):
            await asyncio.sleep(0)
        flushing.cancel()
        try:
            await flushing
            outcomes.add("finished")
        except asyncio.CancelledError:
            outcomes.add("written" if writer.pending == 0 else "restored")
    await writer.flush()  # whatever a cancelled flush left in the buffer
    recorded = await log.read_stream(TENANT, "stream-1")
    assert [r.event.payload.step_id for r in recorded] == emitted
    assert [r.event.stream_seq for r in recorded] == list(range(1, len(emitted) + 1))
    assert writer.seq == len(emitted)
    # The loop reached each kind of moment at least once, or it proved little.
    assert {"restored", "written"} <= outcomes, outcomes
    await log.close()
