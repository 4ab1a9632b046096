"""The engine's orchestration summaries live in their own SQLite file, not in memory:
memory holds only the runs not ended, a restart reads the file instead of folding the
log, and a file that is missing, damaged, behind or of another log is rebuilt from the
log (ledger/orchestration/summaries.py)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import OTHER_TENANT, TENANT, Harness, append_unfinished_run, scripted

from ledger.orchestration import Engine
from ledger.orchestration.sqlite_summaries import SQLiteSummaryStore
from ledger.orchestration.summary import OrchestrationSummary
from ledger.orchestration.summary_store import PageQuery

CHAIN = {"steps": [{"id": "a", "action": "llm", "prompt": "hi"}]}


async def _runs(engine: Engine, count: int, tenant: str = TENANT) -> list[str]:
    agent = await engine.register_agent(tenant, name="bot", provider=scripted())
    wf = await engine.register_workflow(tenant, name="w", definition=CHAIN)
    oids = []
    for _ in range(count):
        started = await engine.execute(tenant, workflow_id=wf.workflow_id, agents=[agent.agent_id])
        assert (await engine.wait(tenant, started.orchestration_id)).status == "completed"
        oids.append(started.orchestration_id)
    return oids


async def _listed(engine: Engine, tenant: str = TENANT) -> list[tuple[str, str]]:
    page, cursor = await engine.list_orchestrations(tenant, limit=500)
    assert cursor is None
    return [(s.orchestration_id, s.status) for s in page]


def _newest_first(oids: list[str], status: str = "completed") -> list[tuple[str, Any]]:
    return [(oid, status) for oid in sorted(oids, reverse=True)]


async def test_memory_holds_only_the_runs_that_have_not_ended(harness: Harness) -> None:
    """Every orchestration's summary stayed in memory for as long as the process ran
    (465 bytes each: 465 MB at a million). Once written, an ended run's is read from
    the file; an unfinished engine run's stays, for a restart and the metrics."""
    engine = await harness.open()
    oids = await _runs(engine, 20)
    await engine.summaries.flush()
    assert engine.summaries.held == 0
    assert engine.summaries.count == 20
    assert harness.log is not None
    unfinished = await append_unfinished_run(engine, harness.log)
    await engine.summaries.flush()
    assert engine.summaries.held == 1
    assert [s.orchestration_id for s in engine.summaries.unfinished()] == [unfinished]
    summary = await engine.summaries.get(TENANT, oids[0])  # read back from the file
    assert summary is not None
    assert (summary.status, summary.executor) == ("completed", "engine")
    assert await engine.summaries.get(OTHER_TENANT, oids[0]) is None


async def test_a_restart_reads_the_summaries_instead_of_folding_the_log(
    harness: Harness,
) -> None:
    engine = await harness.open()
    oids = await _runs(engine, 5)
    await harness.close()
    engine = await harness.open()
    assert engine.replayed_at_start == 0
    assert await _listed(engine) == _newest_first(oids)


async def test_summaries_deleted_or_damaged_are_rebuilt_from_the_log(harness: Harness) -> None:
    engine = await harness.open()
    oids = await _runs(engine, 4)
    await harness.close()
    for damage in ("delete", "garbage"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{harness.summaries_path}{suffix}").unlink(missing_ok=True)
        if damage == "garbage":
            harness.summaries_path.write_bytes(b"\x00garbage" * 1000)
        engine = await harness.open()
        assert harness.log is not None
        assert engine.replayed_at_start == harness.log.size  # folded from the first leaf
        assert await _listed(engine) == _newest_first(oids)
        await harness.close()


async def test_summaries_behind_the_log_fold_only_what_came_after(harness: Harness) -> None:
    """A file from an older backup (or a power cut that took its last writes back)."""
    engine = await harness.open()
    first = await _runs(engine, 3)
    await harness.close()
    older = harness.summaries_path.with_name("older.db")
    shutil.copyfile(harness.summaries_path, older)
    engine = await harness.open()
    assert harness.log is not None
    behind = harness.log.size
    later = await _runs(engine, 3)
    await harness.close()
    shutil.copyfile(older, harness.summaries_path)
    engine = await harness.open()
    assert harness.log is not None
    assert engine.replayed_at_start == harness.log.size - behind
    assert await _listed(engine) == _newest_first(first + later)


@pytest.mark.parametrize(("theirs", "mine"), [(5, 2), (2, 5)])
async def test_summaries_of_another_log_are_rebuilt(tmp_path: Path, theirs: int, mine: int) -> None:
    """Never trusted for a log they were not folded from: the leaf their progress
    names must be this log's (whether their log is longer than this one or not)."""
    a, b = Harness(tmp_path / "a.db"), Harness(tmp_path / "b.db")
    engine = await a.open()
    await _runs(engine, theirs)
    await a.close()
    engine = await b.open()
    oids = await _runs(engine, mine)
    await b.close()
    shutil.copyfile(a.summaries_path, b.summaries_path)
    engine = await b.open()
    try:
        assert b.log is not None
        assert engine.replayed_at_start == b.log.size
        assert await _listed(engine) == _newest_first(oids)
    finally:
        await b.close()


class _PausedPages(SQLiteSummaryStore):
    """The real store, whose next page, once read, waits for the test to let it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read = asyncio.Event()
        self.go_on: asyncio.Event | None = None

    async def page(
        self, tenant_id: str, query: PageQuery
    ) -> tuple[list[OrchestrationSummary], str | None]:
        found = await super().page(tenant_id, query)
        if self.go_on is not None:
            self.read.set()
            await self.go_on.wait()
        return found


async def test_regression_a_listing_by_status_holds_no_run_that_left_that_status(
    harness: Harness,
) -> None:
    """A page read from the store matched the status filter, then each row was brought
    up to date with what was folded since: a run that ended while the page was read
    was listed under ``status=running`` as ``cancelled``."""
    store = _PausedPages(harness.summaries_path)
    engine = await harness.open(summaries=store)
    assert harness.log is not None
    oid = await append_unfinished_run(engine, harness.log)
    await engine.summaries.flush()
    store.go_on = asyncio.Event()
    listing = asyncio.create_task(engine.list_orchestrations(TENANT, status="running"))
    await asyncio.wait_for(store.read.wait(), 10)
    await engine.cancel(TENANT, oid)
    store.go_on.set()
    page, _ = await listing
    assert [(s.orchestration_id, s.status) for s in page if s.status != "running"] == []
    page, _ = await engine.list_orchestrations(TENANT, status="cancelled")
    assert [(s.orchestration_id, s.status) for s in page] == [(oid, "cancelled")]
