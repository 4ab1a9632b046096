"""The registry snapshot: a restart folds only the events after it, and ends with the
registry a fold of the whole log would give (ledger/replay.py, snapshots)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from engine_helpers import (
    OTHER_TENANT,
    TENANT,
    Harness,
    no_sleep,
    scripted,
)

from ledger.errors import StorageUnavailableError
from ledger.events import NewEvent
from ledger.log import Log
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine
from ledger.orchestration import events as ev
from ledger.orchestration import projections as projections_module
from ledger.orchestration.registry import Registry, RegistryProjection
from ledger.replay import fold_log
from ledger.sqlite_store import SQLiteEventStore

CHAIN = {"steps": [{"id": "a", "action": "llm", "prompt": "hi"}]}


async def _work(engine: Engine, runs: int) -> None:
    """Agents and workflows with several registrations each, and finished runs."""
    for tenant in (TENANT, OTHER_TENANT):
        agent = await engine.register_agent(tenant, name="bot", provider=scripted())
        await engine.register_agent(
            tenant, name="bot", provider=scripted(), model="m2", agent_id=agent.agent_id
        )
        await engine.register_workflow(tenant, name="w", definition=CHAIN)
        wf = await engine.register_workflow(
            tenant,
            name="w",
            definition={"steps": [{"id": "a", "action": "llm", "prompt": "again"}]},
        )
        for _ in range(runs):
            started = await engine.execute(
                tenant, workflow_id=wf.workflow_id, agents=[agent.agent_id]
            )
            assert (await engine.wait(tenant, started.orchestration_id)).status == "completed"


async def _full_fold(log: Log) -> Registry:
    return await fold_log(log, RegistryProjection(), use_snapshot=False)


def _views(registry: Registry) -> object:
    """Everything the registry answers, for both tenants, as the API would render it
    (a provider's settings are free-form JSON: arrays are lists after a decode and
    tuples in the payload an engine just wrote)."""
    out: list[object] = []
    for tenant in (TENANT, OTHER_TENANT):
        out += [registry.agents(tenant), registry.workflows(tenant)]
        for agent in registry.agents(tenant):
            out += [registry.agent(tenant, agent.agent_id, r) for r in range(1, 4)]
        for wf in registry.workflows(tenant):
            out += [registry.workflow(tenant, wf.workflow_id, v) for v in range(1, 4)]
    return msgspec.json.decode(msgspec.json.encode(out))


async def test_a_restart_folds_only_the_events_after_the_registry_snapshot(
    harness: Harness,
) -> None:
    engine = await harness.open()
    assert engine.replayed_at_start == 0
    await _work(engine, runs=3)
    assert harness.log is not None
    snapshot_size = harness.log.size
    await harness.close()  # a clean stop snapshots the registry

    engine = await harness.open()
    assert engine.replayed_at_start == 0  # the snapshot covered the whole log
    await _work(engine, runs=2)
    # A crash: the log stops, and the engine never snapshots what this session did.
    await harness.crash()

    engine = await harness.open()
    assert harness.log is not None
    assert harness.log.size > snapshot_size
    assert engine.replayed_at_start == harness.log.size - snapshot_size
    # Compared as rendered: a live payload's dicts keep their keys' insertion order,
    # and the same dicts decoded from the canonical leaf bytes have them sorted.
    assert _views(engine.registry) == _views(await _full_fold(harness.log))


async def test_the_registry_survives_its_snapshot_unchanged(harness: Harness) -> None:
    engine = await harness.open()
    await _work(engine, runs=2)
    restored = Registry.from_snapshot(engine.registry.snapshot())
    assert restored.snapshot() == engine.registry.snapshot()
    assert _views(restored) == _views(engine.registry)
    # The latest registration is the one served without a revision.
    bot = next(a for a in restored.agents(TENANT) if a.name == "bot")
    assert bot.model == "m2"


async def test_a_snapshot_that_is_not_of_this_log_is_ignored(tmp_path: Path) -> None:
    first = Harness(tmp_path / "a.db")
    engine = await first.open()
    await _work(engine, runs=1)
    await first.close()
    second = Harness(tmp_path / "b.db")
    second.signer = first.signer  # so the seal verifies, and only the root can refuse it
    engine = await second.open()
    await _work(engine, runs=2)
    await second.close()

    # Log b's store now holds log a's snapshot, under the registry's name.
    log_a = await Log.open(SQLiteEventStore(tmp_path / "a.db"), first.signer, ORCHESTRATION_EVENTS)
    saved = await log_a.store.load_snapshot(RegistryProjection.name)
    await log_a.close()
    assert saved is not None
    log_b = await Log.open(SQLiteEventStore(tmp_path / "b.db"), second.signer, ORCHESTRATION_EVENTS)
    await log_b.store.save_snapshot(RegistryProjection.name, *saved)
    engine = Engine(log_b)
    await engine.start(resume=False)
    try:
        assert engine.replayed_at_start == log_b.size  # folded from the start
        assert _views(engine.registry) == _views(await _full_fold(log_b))
    finally:
        await engine.close()
        await log_b.close()


class _AppendsDuringFirstRead:
    """The real log, except that its first ``read_log`` first commits ``append``: a
    write that lands while the engine's start is still folding."""

    def __init__(self, log: Log, append: Callable[[], Awaitable[object]]) -> None:
        self._log = log
        self._append: Callable[[], Awaitable[object]] | None = append

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def read_log(self, from_index: int = 0, limit: int = 1000) -> Sequence[Any]:
        if self._append is not None:
            append, self._append = self._append, None
            await append()
        return await self._log.read_log(from_index, limit)


async def test_regression_an_event_committed_while_start_folds_is_not_lost(
    harness: Harness,
) -> None:
    """The listener folded new commits into the registry at once, while start() was
    still folding the older log: an orchestration's end that landed then came before
    its creation, found no summary, and was dropped, so the orchestration stayed
    "pending" in every listing. Commits during the fold now wait for it to finish."""
    engine = await harness.open()
    created = await engine.create_external(TENANT)
    oid = created.orchestration_id
    await harness.crash()  # no snapshot of this session
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    end = NewEvent(ev.ORCHESTRATION_COMPLETED, ev.OrchestrationCompleted(oid, results=None))

    async def finish() -> None:
        await log.append(TENANT, oid, await log.stream_head(TENANT, oid), [end])

    racing = _AppendsDuringFirstRead(log, finish)
    engine = Engine(racing)  # type: ignore[arg-type]  # the real log behind one seam
    try:
        await engine.start(resume=False)
        assert engine.replayed_at_start == log.size - 1  # the end came through the listener
        summary = await engine.summaries.get(TENANT, oid)
        assert summary is not None
        assert summary.status == "completed"
        assert engine.summaries.unfinished() == []
    finally:
        await engine.close()
        await log.close()


async def test_regression_a_registry_holding_a_big_integer_still_snapshots(
    harness: Harness,
) -> None:
    """Registry snapshots were MessagePack, which stops at 64-bit integers, while a
    leaf (JSON) holds any integer: after a workflow definition with 2**70 in it, every
    clean stop raised OverflowError, and so did any start long enough to save one."""
    engine = await harness.open()
    definition = {"steps": [*CHAIN["steps"]], "output": {"n": 2**70}}
    wf = await engine.register_workflow(TENANT, name="big", definition=definition)
    await harness.close()  # saves the snapshot
    engine = await harness.open()
    assert engine.replayed_at_start == 0  # started from it
    stored = engine.registry.workflow(TENANT, wf.workflow_id)
    assert stored is not None
    assert stored.definition["output"] == {"n": 2**70}


async def test_a_start_that_folds_a_long_tail_saves_a_snapshot_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a process that keeps crashing does not fold the same tail on every start."""
    monkeypatch.setattr(projections_module, "_SNAPSHOT_AFTER_REPLAY", 10)
    engine = await harness.open()
    await _work(engine, runs=2)
    for _ in range(2):  # two crashes in a row: neither session stops cleanly
        await harness.crash()
        engine = await harness.open()
    assert engine.replayed_at_start == 0  # the first restart saved what it folded


async def test_a_snapshot_that_cannot_be_saved_does_not_stop_the_engine_closing(
    harness: Harness,
) -> None:
    engine = await harness.open()
    await _work(engine, runs=1)
    assert harness.log is not None
    await harness.log.store.close()  # the save at close finds no store to write to
    await engine.close()  # logged, not raised
    harness.engine = None


async def test_a_running_engine_snapshots_its_registry_every_interval(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a crash after a long run folds at most one interval, not everything since
    the last clean stop."""
    monkeypatch.setattr(projections_module, "_SNAPSHOT_EVERY", 25)
    # 8 registrations and versions: an interval below 25.
    monkeypatch.setattr(projections_module, "_SNAPSHOT_EVENTS_PER_RECORD", 1)
    engine = await harness.open()
    await _work(engine, runs=4)
    assert harness.log is not None
    store = harness.log.store
    # Saved in the background: wait (a bounded while) for the one due last to land.
    due = harness.log.size - 25
    for _ in range(500):
        saved = await store.load_snapshot(RegistryProjection.name)
        if saved is not None and saved[0] > due:
            break
        await asyncio.sleep(0.01)
    assert saved is not None
    assert saved[0] > due
    size = harness.log.size
    # The summaries' store is at most a fraction of a second behind: here, not at all.
    await engine.summaries.flush()
    await harness.crash()  # a crash: the engine never stops cleanly
    engine = await harness.open()
    assert 0 < engine.replayed_at_start < 25 + 1
    assert engine.replayed_at_start == size - saved[0]
    assert harness.log is not None
    assert _views(engine.registry) == _views(await _full_fold(harness.log))


class _FirstReadFails:
    """The real log, except that its first ``read_log`` fails as a storage error."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def read_log(self, from_index: int = 0, limit: int = 1000) -> Sequence[Any]:
        if not self.failed:
            self.failed = True
            raise StorageUnavailableError("the disk went away")
        return await self._log.read_log(from_index, limit)


async def test_regression_a_start_that_failed_can_be_started_again(harness: Harness) -> None:
    """A start whose fold failed stayed marked started and left its listener on the
    log: the next start() returned at once with an empty registry, and the listener
    went on folding commits into it."""
    engine = await harness.open()
    await _work(engine, runs=1)
    await harness.crash()  # a crash, so no snapshot spares the next start its fold
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    flaky = _FirstReadFails(log)
    engine = Engine(flaky, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    try:
        with pytest.raises(StorageUnavailableError):
            await engine.start()
        await engine.start()
        assert engine.replayed_at_start == log.size
        assert _views(engine.registry) == _views(await _full_fold(log))
        (agent, *_) = engine.registry.agents(TENANT)
        (wf, *_) = engine.registry.workflows(TENANT)
        before = len((await engine.list_orchestrations(TENANT, limit=500))[0])
        started = await engine.execute(TENANT, workflow_id=wf.workflow_id, agents=[agent.agent_id])
        await engine.wait(TENANT, started.orchestration_id)
        # Folded once, by the one listener the second start attached.
        assert len((await engine.list_orchestrations(TENANT, limit=500))[0]) == before + 1
        assert _views(engine.registry) == _views(await _full_fold(log))
    finally:
        await engine.close()
        await log.close()


class _CommitsDuringFirstRootRead:
    """The real log, except that its first ``root_at`` (start's own snapshot save reads
    it) first runs ``hook``."""

    def __init__(self, log: Log, hook: Callable[[], Awaitable[None]]) -> None:
        self._log = log
        self._hook: Callable[[], Awaitable[None]] | None = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def root_at(self, tree_size: int) -> bytes:
        if self._hook is not None:
            hook, self._hook = self._hook, None
            await hook()
        return await self._log.root_at(tree_size)


async def test_regression_a_cancelled_start_seals_no_empty_registry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start cancelled during its own snapshot save emptied the registry, while a
    background save a commit had scheduled meanwhile was still to run: it sealed the
    empty registry as the fold of the whole log, and the next start lost every agent."""
    engine = await harness.open()
    agent = await engine.register_agent(TENANT, name="bot", provider=scripted())
    await harness.crash()  # a crash: the next start has to fold, and then saves
    monkeypatch.setattr(projections_module, "_SNAPSHOT_AFTER_REPLAY", 0)
    monkeypatch.setattr(projections_module, "_SNAPSHOT_EVERY", 1)
    log = await Log.open(SQLiteEventStore(harness.path), harness.signer, ORCHESTRATION_EVENTS)
    starting: asyncio.Task[list[str]] | None = None

    async def commit_then_cancel() -> None:
        started = ev.OrchestrationStarted(orchestration_id="o-1")
        await log.append(TENANT, "o-1", 0, [NewEvent(ev.ORCHESTRATION_STARTED, started)])
        assert starting is not None
        starting.cancel()

    seam = _CommitsDuringFirstRootRead(log, commit_then_cancel)
    engine = Engine(seam, sleep=no_sleep)  # type: ignore[arg-type]  # a seam around the real log
    starting = asyncio.create_task(engine.start(resume=False))
    with pytest.raises(asyncio.CancelledError):
        await starting
    await engine.close()
    fresh = Engine(log, sleep=no_sleep)
    try:
        await fresh.start(resume=False)
        assert [a.agent_id for a in fresh.registry.agents(TENANT)] == [agent.agent_id]
        assert _views(fresh.registry) == _views(await _full_fold(log))
    finally:
        await fresh.close()
        await log.close()


async def test_the_snapshot_interval_grows_with_the_registry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each snapshot encodes and writes every agent registration and workflow version,
    so with many of them they are taken less often."""
    monkeypatch.setattr(projections_module, "_SNAPSHOT_EVERY", 1)
    monkeypatch.setattr(projections_module, "_SNAPSHOT_EVENTS_PER_RECORD", 1000)
    engine = await harness.open()
    assert harness.log is not None
    store = harness.log.store

    async def saved_size(expected: int | None = None) -> int | None:
        """The size the stored snapshot covers, once it is ``expected`` (a bounded
        wait: saves run in the background), or after a short while if not given."""
        for _ in range(200):
            saved = await store.load_snapshot(RegistryProjection.name)
            size = None if saved is None else saved[0]
            if expected is not None and size == expected:
                break
            await asyncio.sleep(0.01 if expected is not None else 0.002)
        return size

    # Snapshots follow every commit while the registry is empty...
    await engine.register_agent(TENANT, name="bot", provider=scripted())
    assert await saved_size(harness.log.size) == harness.log.size
    # ...and, once it holds records, only after 1,000 events for each.
    await _work(engine, runs=2)
    first = await saved_size()
    assert first is not None
    await _work(engine, runs=2)
    assert harness.log.size - first < 1000
    assert await saved_size() == first
