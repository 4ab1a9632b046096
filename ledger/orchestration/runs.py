"""The orchestrations this process runs.

:class:`Runs` launches a run in a background task once its start is durable, drives it,
resumes unfinished ones from their history, holds back those a storage failure stopped
until :meth:`Runs.resume_stalled`, cancels runs (its own, or any with no runner here),
and stops them all at a step boundary when the engine closes. It keeps the writer of
each stream it writes to, and a lock per orchestration that serializes writes from
outside a runner (an external executor's steps, a cancel) with a resume's launch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import structlog

from ledger.errors import LedgerError, StorageUnavailableError
from ledger.orchestration import events as ev
from ledger.orchestration.calls import Collaborators
from ledger.orchestration.engine_log import EngineLog
from ledger.orchestration.errors import OrchestrationNotFoundError, OrchestrationStateError
from ledger.orchestration.projections import Projections
from ledger.orchestration.providers import (
    Provider,
    ProviderPolicy,
    make_provider,
    parse_provider_config,
)
from ledger.orchestration.redaction import RedactionPolicy
from ledger.orchestration.registry import AgentRecord
from ledger.orchestration.runner import Runner, read_history
from ledger.orchestration.state import OrchestrationState
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.summary import OrchestrationSummary
from ledger.orchestration.tools import ToolRegistry

__all__ = ["Runs"]

_log = structlog.get_logger()


class Runs:
    def __init__(
        self,
        log: EngineLog,
        projections: Projections,
        *,
        closing: Callable[[], bool],
        tools: ToolRegistry,
        session: aiohttp.ClientSession | None,
        env: Mapping[str, str],
        now: Callable[[], datetime],
        redaction: RedactionPolicy | None,
        sleep: Callable[[float], Any],
        stop_grace_seconds: float,
        provider_policy: ProviderPolicy | None,
    ) -> None:
        self._log = log
        self._projections = projections
        #: Whether the engine is closing: no run is launched or resumed any more.
        self._closing = closing
        self._tools = tools
        self._session = session
        self._own_session = False
        self._env = env
        self._now = now
        self._redaction = redaction
        #: Where agents' providers may connect and which keys they may send (``None``:
        #: whoever registers agents is trusted). An injected ``session`` should resolve
        #: through ``provider_policy.resolver()``, as the engine's own session does.
        self._provider_policy = provider_policy
        self._sleep = sleep
        self._grace = stop_grace_seconds
        self._providers: dict[tuple[str, str, int], Provider] = {}
        self._runners: dict[tuple[str, str], Runner] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Runs a write refused for lack of storage stopped; resumed once it is back.
        self._stalled: set[tuple[str, str]] = set()
        #: Runs whose history did not read back whole when they were to be resumed.
        self._unresumable = 0
        #: The writer kept per stream this process writes to.
        self.writers: dict[tuple[str, str], StreamWriter] = {}
        # Per orchestration, while anyone holds or awaits it: (lock, holders + waiters).
        self._external_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        #: Starts between their commit and their launch (see :meth:`cancel`).
        self._starting: dict[tuple[str, str], asyncio.Event] = {}

    async def stop(self) -> None:
        """Stop every run at its next step boundary; after the grace period in-flight
        steps are cancelled. Then close the providers' session, if it is our own."""
        for runner in self._runners.values():
            runner.request_stop()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- collaborators ---------------------------------------------------------------

    def _provider_for(self, tenant_id: str) -> Callable[[AgentRecord], Provider]:
        def get(agent: AgentRecord) -> Provider:
            key = (tenant_id, agent.agent_id, agent.revision)
            provider = self._providers.get(key)
            if provider is None:
                config = parse_provider_config(agent.provider)
                if config.__struct_config__.tag == "openai" and self._session is None:
                    policy = self._provider_policy
                    connector = (
                        None
                        if policy is None
                        else aiohttp.TCPConnector(resolver=policy.resolver(), use_dns_cache=False)
                    )
                    # No cookie jar: the session serves every tenant's agents, and a
                    # cookie an answer to one set would go out with the others' calls.
                    self._session = aiohttp.ClientSession(
                        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
                    )
                    self._own_session = True
                provider = make_provider(
                    config, session=self._session, env=self._env, policy=self._provider_policy
                )
                self._providers[key] = provider
            return provider

        return get

    def _collaborators(self, tenant_id: str, created: ev.OrchestrationCreated) -> Collaborators:
        """What a run needs, with each agent as the registration it started with (the
        latest, in leaves written before runs recorded it)."""
        revisions = created.agent_revisions or {}
        agents = {}
        for agent_id in created.agents:
            record = self._projections.registry.agent(tenant_id, agent_id, revisions.get(agent_id))
            if record is not None:
                agents[agent_id] = record
        return Collaborators(
            tools=self._tools,
            provider_for=self._provider_for(tenant_id),
            now=self._now,
            sleep=self._sleep,
            agents=agents,
        )

    # -- starting and driving --------------------------------------------------------

    async def start(self, tenant_id: str, created: ev.OrchestrationCreated) -> OrchestrationState:
        """Durably record ``created`` + ``started``, then launch the run (unless the
        engine began closing meanwhile); the state right after ``started``."""
        oid = created.orchestration_id
        # Kept only once its start is written: a refused start (an id already taken,
        # an input too large for a leaf) must not displace or leave behind a writer.
        writer = self.writer(tenant_id, oid, 0, keep=False)
        # The run works on the input as recorded, as a resumed run or a replay reads it.
        created = writer.emit(ev.ORCHESTRATION_CREATED, created, normalize=True)
        writer.emit(ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid))
        started_at = self._now()
        key = (tenant_id, oid)
        # Once committed the run is listed, so a cancel() may come before it is launched;
        # it waits for the launch rather than write to the stream under the new runner.
        # (A second start under a taken id is refused by the log and marks nothing.)
        launched = self._starting.get(key)
        if launched is None:
            launched = self._starting[key] = asyncio.Event()
        else:
            launched = asyncio.Event()
        try:
            await writer.flush()
            if self._closing():
                # close() came while the start was being made durable, and stopped only
                # the runs it found: launched now, this one would run after close()
                # returned. It is durable and unfinished, so the next start resumes it.
                _log.info("orchestration.deferred", orchestration_id=oid)
                return self._projections.state_now(tenant_id, oid)
            self.writers[key] = writer
            runner = Runner(
                writer,
                created,
                [],
                self._collaborators(tenant_id, created),
                started_at=started_at,
            )
            self._launch(tenant_id, oid, runner)
            return self._projections.state_now(tenant_id, oid)
        finally:
            if self._starting.get(key) is launched:
                del self._starting[key]
            launched.set()

    def writer(self, tenant_id: str, oid: str, seq: int, *, keep: bool = True) -> StreamWriter:
        writer = StreamWriter(
            self._log, tenant_id, oid, seq, now=self._now, redaction=self._redaction
        )
        if keep:
            self.writers[(tenant_id, oid)] = writer
        return writer

    def _launch(self, tenant_id: str, oid: str, runner: Runner) -> None:
        key = (tenant_id, oid)
        self._runners[key] = runner
        task = asyncio.create_task(self._drive(key, runner), name=f"orchestration-{oid}")
        self._tasks[key] = task

    async def _drive(self, key: tuple[str, str], runner: Runner) -> None:
        stalled = False
        try:
            await runner.run()
        except asyncio.CancelledError:
            _log.info("orchestration.stopped", orchestration_id=key[1])
        except StorageUnavailableError as e:
            # Disk full, read-only or an I/O error: the refused batch is not durable, so
            # the run restarts from what the log holds once storage takes writes again
            # (resume_stalled), or on the next start.
            stalled = True
            _log.warning("orchestration.stalled", orchestration_id=key[1], error=str(e))
        except LedgerError as e:
            _log.error("orchestration.crashed", orchestration_id=key[1], error=str(e))
        except Exception:  # noqa: BLE001 — one orchestration's bug must not stop the engine
            _log.exception("orchestration.crashed", orchestration_id=key[1])
        finally:
            self._runners.pop(key, None)
            self._tasks.pop(key, None)
            self.writers.pop(key, None)
            if stalled and not self._closing():
                self._stalled.add(key)

    def task(self, key: tuple[str, str]) -> asyncio.Task[None] | None:
        """The task running the orchestration here, if any."""
        return self._tasks.get(key)

    # -- resuming --------------------------------------------------------------------

    @property
    def stalled(self) -> int:
        """How many runs are waiting for storage to take writes again."""
        return len(self._stalled)

    @property
    def unresumable(self) -> int:
        """How many runs this process could not resume because their history did not
        read back whole (``maip-ledger fsck`` says where); they stay unfinished."""
        return self._unresumable

    async def resume(self, unfinished: Sequence[OrchestrationSummary]) -> list[str]:
        """Resume each run of ``unfinished`` from its history; the ids of those launched.
        Cancelled, the runs not launched yet wait for :meth:`resume_stalled`."""
        resumed = []
        for i, summary in enumerate(unfinished):
            if self._closing():  # close() came while the registry was being built
                break
            # One run that cannot be resumed must not keep the others from resuming.
            try:
                launched = await self._resume_or_stall(summary)
            except asyncio.CancelledError:
                # The registry is whole and followed live, so the engine stays started;
                # the runs not launched yet wait for resume_stalled(), not the next start.
                self._stalled.update(
                    key
                    for s in unfinished[i:]
                    if (key := (s.tenant_id, s.orchestration_id)) not in self._tasks
                )
                raise
            if launched:
                resumed.append(summary.orchestration_id)
        if resumed:
            _log.info("engine.resumed", count=len(resumed))
        return resumed

    async def resume_stalled(self) -> list[str]:
        """Resume, from the log, every run a storage failure stopped; call once storage
        takes writes again. Returns the orchestration ids resumed."""
        keys, self._stalled = self._stalled, set()
        resumed = []
        for key in sorted(keys):
            summary = await self._projections.summaries.get(*key)
            if self._closing() or key in self._tasks or summary is None:
                continue
            if await self._resume_or_stall(summary) and key in self._tasks:
                resumed.append(key[1])  # not if it had ended meanwhile (e.g. cancelled)
        if resumed:
            _log.info("engine.resumed_stalled", count=len(resumed))
        return resumed

    async def _resume_or_stall(self, summary: OrchestrationSummary) -> bool:
        """:meth:`_resume`; whether it launched the run. A run whose history cannot be
        read for lack of storage waits for :meth:`resume_stalled`; one whose history
        does not read back whole (fsck tells where) is logged and left for the next
        start."""
        key = (summary.tenant_id, summary.orchestration_id)
        try:
            return await self._resume(summary)
        except StorageUnavailableError as e:
            _log.warning("orchestration.stalled", orchestration_id=key[1], error=str(e))
            self._stalled.add(key)
            return False
        except LedgerError as e:
            _log.error("orchestration.resume_failed", orchestration_id=key[1], error=str(e))
            self._unresumable += 1
            return False

    async def _resume(self, summary: OrchestrationSummary) -> bool:
        """Run an unfinished orchestration on from its history; whether it was launched."""
        # A cancel() of a run with no runner writes to its stream directly: one written
        # between this read and the launch would leave the runner on a stale history
        # (and the live state without the cancel). So a cancel waits for the runner.
        async with self.lock((summary.tenant_id, summary.orchestration_id)):
            return await self._resume_locked(summary)

    async def _resume_locked(self, summary: OrchestrationSummary) -> bool:
        tenant_id, oid = summary.tenant_id, summary.orchestration_id
        records = await self._projections.read_committed(tenant_id, oid)
        if self._closing():  # close() came during the read and found nothing to stop
            return False
        events = [r.event for r in records]
        if not events or not isinstance(events[0].payload, ev.OrchestrationCreated):
            return False
        created: ev.OrchestrationCreated = events[0].payload
        self._projections.refold((tenant_id, oid), events)
        writer = self.writer(tenant_id, oid, events[-1].stream_seq, keep=False)
        runner = Runner(writer, created, events, self._collaborators(tenant_id, created))
        if runner.was_terminal:
            return False  # kept no writer: no run would ever drop it
        self.writers[tenant_id, oid] = writer
        _log.info("orchestration.resuming", orchestration_id=oid, seq=events[-1].stream_seq)
        self._launch(tenant_id, oid, runner)
        return True

    # -- cancelling ------------------------------------------------------------------

    async def cancel(
        self,
        tenant_id: str,
        orchestration_id: str,
        *,
        reason: str,
        requested_by: str | None,
    ) -> None:
        """Cancel: in-flight calls are cancelled, ``orchestration.cancelled`` is recorded."""
        key = (tenant_id, orchestration_id)
        summaries = self._projections.summaries
        summary = await summaries.get(tenant_id, orchestration_id)
        if summary is None:
            raise OrchestrationNotFoundError(f"no orchestration {orchestration_id!r}")
        if summary.status in ("completed", "failed", "cancelled"):
            raise OrchestrationStateError(orchestration_id, summary.status, "cancel")
        starting = self._starting.get(key)
        if starting is not None:  # its execute() is about to launch it: cancel the runner
            await starting.wait()
        asked = False
        while True:
            async with self.lock(key):  # a resume launches its runner under it
                runner = self._runners.get(key)
                if runner is None:
                    # Not running here (external, not resumed, or its runner stopped
                    # before it reached a step boundary to honour the cancel: the engine
                    # closing, or storage failing): record it directly, unless it ended.
                    summary = await summaries.get(tenant_id, orchestration_id)
                    assert summary is not None
                    if summary.status in ("completed", "failed", "cancelled"):
                        if asked:  # its runner ended it, cancelled or otherwise
                            break
                        raise OrchestrationStateError(orchestration_id, summary.status, "cancel")
                    payload = ev.OrchestrationCancelled(
                        orchestration_id=orchestration_id, reason=reason, requested_by=requested_by
                    )
                    writer = self.writers.get(key) or self.writer(
                        tenant_id, orchestration_id, summary.seq
                    )
                    events = await self._open_attempts_failed(summary)
                    await writer.append_now([*events, (ev.ORCHESTRATION_CANCELLED, payload)])
                    break
            runner.request_cancel(reason, requested_by)
            asked = True
            task = self._tasks.get(key)
            if task is None:
                break
            await asyncio.wait({task})

    async def _open_attempts_failed(
        self, summary: OrchestrationSummary
    ) -> list[tuple[str, ev.StepFailed]]:
        """``step.failed`` (``cancelled``) for each step attempt an engine run with no
        runner left open (in flight, or waiting for its retry, when its runner stopped),
        as its runner would record them were it cancelled: else they stay running."""
        if summary.executor != "engine":
            return []  # an external executor records its own steps
        oid = summary.orchestration_id
        try:
            records = await self._projections.read_committed(summary.tenant_id, oid)
        except LedgerError as e:  # the cancel is recorded all the same
            _log.warning(
                "orchestration.cancel_history_unreadable", orchestration_id=oid, error=str(e)
            )
            return []
        history, _, _ = read_history([r.event for r in records])
        return [
            (
                ev.STEP_FAILED,
                ev.StepFailed(
                    orchestration_id=oid,
                    step_id=step_id,
                    attempt=h.attempts,
                    error="cancelled",
                    retrying=False,
                    kind="aborted",
                ),
            )
            for step_id, h in sorted(history.items())
            if h.status in ("running", "retrying") and h.attempts > 0
        ]

    @contextlib.asynccontextmanager
    async def lock(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """Serializes one orchestration's external writes (steps, cancel) and a resume's
        read of its history and launch of its runner. The lock is dropped when its last
        user leaves, so one per orchestration ever touched does not pile up for the life
        of the process."""
        entry = self._external_locks.get(key)
        if entry is None:
            entry = self._external_locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._external_locks[key]
