"""The orchestration :class:`Engine`: the impure shell around the pure parts.

It registers agents and workflows (each registration an event), starts orchestrations
(``orchestration.created`` and ``orchestration.started`` are durable before
:meth:`Engine.execute` returns), runs them in background tasks, cancels them, answers
state by replay, lists them from a projection, records steps of externally executed
orchestrations, and on :meth:`Engine.start` resumes every orchestration that was
running when the process last stopped. Every lookup takes a ``tenant_id``; another
tenant's ids are simply not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import structlog
from ulid import ULID

from ledger.errors import (
    ConflictError,
    InvalidEventError,
    LedgerError,
    StorageUnavailableError,
)
from ledger.events import NewEvent
from ledger.ids import canonical_uuid
from ledger.orchestration import events as ev
from ledger.orchestration.binding import build_created
from ledger.orchestration.calls import Collaborators
from ledger.orchestration.engine_log import EngineLog
from ledger.orchestration.errors import (
    AgentNotFoundError,
    OrchestrationNotFoundError,
    OrchestrationStateError,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from ledger.orchestration.projections import Projections
from ledger.orchestration.providers import (
    OpenAIConfig,
    Provider,
    ProviderPolicy,
    make_provider,
    parse_provider_config,
)
from ledger.orchestration.redaction import RedactionPolicy
from ledger.orchestration.registry import (
    MAX_EXAMINED,
    AgentRecord,
    Registry,
    WorkflowRecord,
)
from ledger.orchestration.runner import Runner, read_history
from ledger.orchestration.state import OrchestrationState, replay
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.summaries import Summaries
from ledger.orchestration.summary import OrchestrationSummary
from ledger.orchestration.summary_store import MemorySummaryStore, PageQuery, SummaryStore
from ledger.orchestration.tools import ToolRegistry
from ledger.orchestration.workflow import definition_hash, validate_definition
from ledger.receipt import Receipt

__all__ = ["EXTERNAL_EVENT_TYPES", "Engine", "EngineLog"]

_log = structlog.get_logger()

#: Event types an external executor may record with :meth:`Engine.record_step`.
EXTERNAL_EVENT_TYPES = frozenset(
    {
        ev.STEP_STARTED,
        ev.LLM_REQUESTED,
        ev.LLM_COMPLETED,
        ev.TOOL_INVOKED,
        ev.TOOL_COMPLETED,
        ev.DECISION_MADE,
        ev.STEP_COMPLETED,
        ev.STEP_FAILED,
        ev.STEP_SKIPPED,
        ev.ORCHESTRATION_COMPLETED,
        ev.ORCHESTRATION_FAILED,
        ev.ORCHESTRATION_CANCELLED,
    }
)


def _uuid_from(ulid: ULID) -> str:
    return str(uuid.UUID(bytes=ulid.bytes))


class Engine:
    def __init__(
        self,
        log: EngineLog,
        *,
        tools: ToolRegistry | None = None,
        session: aiohttp.ClientSession | None = None,
        env: Mapping[str, str] | None = None,
        now: Callable[[], datetime] | None = None,
        new_ulid: Callable[[], ULID] = ULID,
        redaction: RedactionPolicy | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        stop_grace_seconds: float = 5.0,
        provider_policy: ProviderPolicy | None = None,
        summaries: SummaryStore | None = None,
    ) -> None:
        for name in ev.ORCHESTRATION_EVENTS.names():
            log.catalog.payload_type(name)  # raises UnknownEventTypeError if missing
        self._log = log
        self.tools = tools or ToolRegistry()
        self._session = session
        self._own_session = False
        self._env: Mapping[str, str] = env if env is not None else os.environ
        self._now = now or (lambda: datetime.now(UTC))
        self._new_ulid = new_ulid
        self._redaction = redaction
        #: Where agents' providers may connect and which keys they may send (``None``:
        #: whoever registers agents is trusted). An injected ``session`` should resolve
        #: through ``provider_policy.resolver()``, as the engine's own session does.
        self._provider_policy = provider_policy
        self._sleep = sleep
        self._grace = stop_grace_seconds
        self._projections = Projections(
            log,
            summaries if summaries is not None else MemorySummaryStore(),
            closing=lambda: self._closing,
        )
        self._providers: dict[tuple[str, str, int], Provider] = {}
        self._runners: dict[tuple[str, str], Runner] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Runs a write refused for lack of storage stopped; resumed once it is back.
        self._stalled: set[tuple[str, str]] = set()
        #: Runs whose history did not read back whole when they were to be resumed.
        self._unresumable = 0
        self._writers: dict[tuple[str, str], StreamWriter] = {}
        # Per orchestration, while anyone holds or awaits it: (lock, holders + waiters).
        self._external_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        #: Starts between their commit and their launch (see :meth:`cancel`).
        self._starting: dict[tuple[str, str], asyncio.Event] = {}
        self._started = False
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, *, resume: bool = True) -> list[str]:
        """Build the projections from the log, follow it live, resume unfinished runs.

        Returns the ids of the orchestrations resumed. Cancelled while building, it
        leaves nothing behind; cancelled while resuming, the engine stays started and
        the runs not launched yet wait for :meth:`resume_stalled`.
        """
        if self._started:
            return []
        self._started = True
        try:
            await self._projections.build()
        except BaseException:
            await self._forget_start()
            raise
        if not resume:
            return []
        resumed = []
        unfinished = self.summaries.unfinished()
        for i, summary in enumerate(unfinished):
            if self._closing:  # close() came while the registry was being built
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

    async def _forget_start(self) -> None:
        """Undo a start that failed, so a later start() begins again from nothing."""
        await self._projections.forget()
        self._started = False  # last: a start() now may build while nothing is reset

    async def close(self) -> None:
        """:meth:`stop`, then close the summaries' store: reads of summaries the engine
        does not hold in memory fail from then on."""
        await self.stop()
        await self._projections.close()

    async def stop(self) -> None:
        """Stop every running orchestration at its next step boundary (it resumes after a
        restart); after ``stop_grace_seconds`` in-flight steps are cancelled. Reads go
        on working (a server's requests still in flight), until :meth:`close`."""
        self._closing = True
        # Waits on runs no task here runs answer now, as those on its own runs do when
        # they stop: the shutdown would otherwise be held until each wait ran out.
        self._projections.end_waits()
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
        await self._projections.save()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has been called: no run is launched any more."""
        return self._closing

    @property
    def registry(self) -> Registry:
        """Every agent registration and workflow version, kept live from the log."""
        return self._projections.registry

    @property
    def summaries(self) -> Summaries:
        """Every orchestration's summary; in memory unless ``summaries`` stores them."""
        return self._projections.summaries

    @property
    def replayed_at_start(self) -> int:
        """How many events :meth:`start` folded into the registry after its snapshot."""
        return self._projections.replayed_at_start

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
            record = self.registry.agent(tenant_id, agent_id, revisions.get(agent_id))
            if record is not None:
                agents[agent_id] = record
        return Collaborators(
            tools=self.tools,
            provider_for=self._provider_for(tenant_id),
            now=self._now,
            sleep=self._sleep,
            agents=agents,
        )

    # -- registry --------------------------------------------------------------------

    async def register_agent(
        self,
        tenant_id: str,
        *,
        name: str,
        provider: Mapping[str, Any],
        model: str | None = None,
        tools: Sequence[str] = (),
        instructions: str | None = None,
        agent_id: str | None = None,
    ) -> AgentRecord:
        """Register (or, with an existing ``agent_id``, re-register) an agent."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise WorkflowValidationError("a name of 1-200 characters is required", field="name")
        config = parse_provider_config(dict(provider))
        if self._provider_policy is not None and isinstance(config, OpenAIConfig):
            self._provider_policy.check(config)
        for i, tool in enumerate(tools):
            if tool not in self.tools:
                raise WorkflowValidationError(f"unknown tool {tool!r}", field=f"tools[{i}]")
        if agent_id is None:
            agent_id = _uuid_from(self._new_ulid())
        else:
            agent_id = _check_uuid(agent_id, "agent_id")
        current = self.registry.agent(tenant_id, agent_id)
        payload = ev.AgentRegistered(
            agent_id=agent_id,
            name=name,
            provider=msgspec.to_builtins(config),
            model=model,
            tools=tuple(tools),
            instructions=instructions,
        )
        await self._log.append(
            tenant_id,
            f"agent:{agent_id}",
            current.revision if current else 0,
            [NewEvent(ev.AGENT_REGISTERED, payload, occurred_at=self._now())],
        )
        record = self.registry.agent(tenant_id, agent_id)
        assert record is not None
        return record

    async def register_workflow(
        self,
        tenant_id: str,
        *,
        name: str,
        definition: Any,
        workflow_id: str | None = None,
    ) -> WorkflowRecord:
        """Register a workflow version. An unchanged definition returns the latest version;
        a changed one becomes version ``latest + 1`` (versions are immutable)."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise WorkflowValidationError("a name of 1-200 characters is required", field="name")
        parsed = validate_definition(definition)
        for step in parsed.steps:
            # As an agent's tools are checked when it is registered: a name the registry
            # lacks would otherwise fail only once a run reaches the step.
            if step.tool is not None and step.tool not in self.tools:
                raise WorkflowValidationError(
                    f"unknown tool {step.tool!r}", step_id=step.id, field="tool"
                )
        data = parsed.to_json()
        digest = definition_hash(data)
        if workflow_id is None:
            workflow_id = _uuid_from(self._new_ulid())
        else:
            workflow_id = _check_uuid(workflow_id, "workflow_id")
        latest = self.registry.workflow(tenant_id, workflow_id)
        if latest is not None and latest.version_hash == digest and latest.name == name:
            return latest
        version = latest.version + 1 if latest else 1
        payload = ev.WorkflowRegistered(
            workflow_id=workflow_id,
            name=name,
            version=version,
            version_hash=digest,
            definition=msgspec.convert(data, dict[str, Any]),
        )
        await self._log.append(
            tenant_id,
            f"workflow:{workflow_id}",
            version - 1,
            [NewEvent(ev.WORKFLOW_REGISTERED, payload, occurred_at=self._now())],
        )
        record = self.registry.workflow(tenant_id, workflow_id, version)
        assert record is not None
        return record

    def get_agent(self, tenant_id: str, agent_id: str) -> AgentRecord:
        record = self.registry.agent(tenant_id, agent_id)
        if record is None:
            raise AgentNotFoundError(f"no agent {agent_id!r}")
        return record

    def list_agents(self, tenant_id: str) -> list[AgentRecord]:
        return self.registry.agents(tenant_id)

    def list_workflows(self, tenant_id: str) -> list[WorkflowRecord]:
        """The latest version of each workflow."""
        return self.registry.workflows(tenant_id)

    def get_workflow(
        self, tenant_id: str, workflow_id: str, version: int | None = None
    ) -> WorkflowRecord:
        record = self.registry.workflow(tenant_id, workflow_id, version)
        if record is None:
            what = f"workflow {workflow_id!r}" + (f" version {version}" if version else "")
            raise WorkflowNotFoundError(f"no {what}")
        return record

    # -- orchestrations --------------------------------------------------------------

    def new_orchestration_id(self) -> str:
        """A fresh orchestration id (a UUID of a ULID's 128 bits, as every run gets)."""
        return _uuid_from(self._new_ulid())

    async def execute(
        self,
        tenant_id: str,
        *,
        workflow_id: str | None = None,
        workflow_version: int | None = None,
        agent_id: str | None = None,
        agents: Sequence[str] = (),
        input: Any = None,
        parameters: Mapping[str, Any] | None = None,
        model: str | None = None,
        max_steps: int = 10,
        timeout_seconds: float = 300.0,
        started_by: str = "anonymous",
        request_shape: str | None = None,
        orchestration_id: str | None = None,
    ) -> OrchestrationState:
        """Validate, durably record ``created`` + ``started``, run in the background.

        Returns the state right after ``orchestration.started``. If :meth:`close` came
        meanwhile, the run is not launched: it is durable, and the next start resumes
        it. A caller that must
        never start the same work twice (an Idempotency-Key) mints the id first with
        :meth:`new_orchestration_id` and passes it: a second start under that id is a
        ``ConflictError`` from the log, never a second orchestration.
        """
        if self._closing:
            raise OrchestrationStateError("-", "closing", "start orchestrations")
        created = build_created(
            self.registry,
            tenant_id,
            orchestration_id or self.new_orchestration_id(),
            executor="engine",
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            agent_id=agent_id,
            agents=agents,
            input=input,
            parameters=parameters,
            model=model,
            max_steps=max_steps,
            timeout_seconds=timeout_seconds,
            started_by=started_by,
            request_shape=request_shape,
        )
        oid = created.orchestration_id
        # Kept only once its start is written: a refused start (an id already taken,
        # an input too large for a leaf) must not displace or leave behind a writer.
        writer = self._writer(tenant_id, oid, 0, keep=False)
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
            if self.closing:
                # close() came while the start was being made durable, and stopped only
                # the runs it found: launched now, this one would run after close()
                # returned. It is durable and unfinished, so the next start resumes it.
                _log.info("orchestration.deferred", orchestration_id=oid)
                return self._projections.state_now(tenant_id, oid)
            self._writers[key] = writer
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

    def _writer(self, tenant_id: str, oid: str, seq: int, *, keep: bool = True) -> StreamWriter:
        writer = StreamWriter(
            self._log, tenant_id, oid, seq, now=self._now, redaction=self._redaction
        )
        if keep:
            self._writers[(tenant_id, oid)] = writer
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
            self._writers.pop(key, None)
            if stalled and not self._closing:
                self._stalled.add(key)

    @property
    def stalled(self) -> int:
        """How many runs are waiting for storage to take writes again."""
        return len(self._stalled)

    @property
    def unresumable(self) -> int:
        """How many runs this process could not resume because their history did not
        read back whole (``maip-ledger fsck`` says where); they stay unfinished."""
        return self._unresumable

    async def resume_stalled(self) -> list[str]:
        """Resume, from the log, every run a storage failure stopped; call once storage
        takes writes again. Returns the orchestration ids resumed."""
        keys, self._stalled = self._stalled, set()
        resumed = []
        for key in sorted(keys):
            summary = await self.summaries.get(*key)
            if self._closing or key in self._tasks or summary is None:
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
        async with self._external_lock((summary.tenant_id, summary.orchestration_id)):
            return await self._resume_locked(summary)

    async def _resume_locked(self, summary: OrchestrationSummary) -> bool:
        tenant_id, oid = summary.tenant_id, summary.orchestration_id
        records = await self._projections.read_committed(tenant_id, oid)
        if self._closing:  # close() came during the read and found nothing to stop
            return False
        events = [r.event for r in records]
        if not events or not isinstance(events[0].payload, ev.OrchestrationCreated):
            return False
        created: ev.OrchestrationCreated = events[0].payload
        self._projections.refold((tenant_id, oid), events)
        writer = self._writer(tenant_id, oid, events[-1].stream_seq, keep=False)
        runner = Runner(writer, created, events, self._collaborators(tenant_id, created))
        if runner.was_terminal:
            return False  # kept no writer: no run would ever drop it
        self._writers[tenant_id, oid] = writer
        _log.info("orchestration.resuming", orchestration_id=oid, seq=events[-1].stream_seq)
        self._launch(tenant_id, oid, runner)
        return True

    def live_state(self, tenant_id: str, orchestration_id: str) -> OrchestrationState | None:
        """The state kept live from committed events (``None`` if not cached)."""
        return self._projections.live_state(tenant_id, orchestration_id)

    async def get_state(self, tenant_id: str, orchestration_id: str) -> OrchestrationState:
        """The state, by a fresh replay of the orchestration's stream."""
        if await self.summaries.get(tenant_id, orchestration_id) is None:
            raise OrchestrationNotFoundError(f"no orchestration {orchestration_id!r}")
        records = await self._projections.read_committed(tenant_id, orchestration_id)
        state = replay(r.event for r in records)
        if state is None:
            raise OrchestrationNotFoundError(f"no orchestration {orchestration_id!r}")
        return state

    async def wait(
        self, tenant_id: str, orchestration_id: str, max_wait: float | None = None
    ) -> OrchestrationState:
        """Wait until this process stops running the orchestration, or, for one it does
        not run (an external executor's), until it ends, at most ``max_wait`` seconds
        (without it, only a run of this process is waited for); then its state."""
        key = (tenant_id, orchestration_id)
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.wait({task}, timeout=max_wait)
        elif max_wait:
            await self._projections.await_end(key, max_wait)
        live = self.live_state(tenant_id, orchestration_id)
        if live is not None and live.terminal:
            return live  # folded from committed events: equal to a replay (tested)
        return await self.get_state(tenant_id, orchestration_id)

    async def list_orchestrations(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        agent_id: str | None = None,
        workflow_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[OrchestrationSummary], str | None]:
        return await self.summaries.page(
            tenant_id,
            PageQuery(
                status=status,
                agent_id=agent_id,
                workflow_id=workflow_id,
                cursor=cursor,
                limit=max(1, min(limit, 500)),
                examine=MAX_EXAMINED,
            ),
        )

    async def cancel(
        self,
        tenant_id: str,
        orchestration_id: str,
        *,
        reason: str = "cancelled",
        requested_by: str | None = None,
    ) -> OrchestrationState:
        """Cancel: in-flight calls are cancelled, ``orchestration.cancelled`` is recorded."""
        key = (tenant_id, orchestration_id)
        summary = await self.summaries.get(tenant_id, orchestration_id)
        if summary is None:
            raise OrchestrationNotFoundError(f"no orchestration {orchestration_id!r}")
        if summary.status in ("completed", "failed", "cancelled"):
            raise OrchestrationStateError(orchestration_id, summary.status, "cancel")
        starting = self._starting.get(key)
        if starting is not None:  # its execute() is about to launch it: cancel the runner
            await starting.wait()
        asked = False
        while True:
            async with self._external_lock(key):  # a resume launches its runner under it
                runner = self._runners.get(key)
                if runner is None:
                    # Not running here (external, not resumed, or its runner stopped
                    # before it reached a step boundary to honour the cancel: the engine
                    # closing, or storage failing): record it directly, unless it ended.
                    summary = await self.summaries.get(tenant_id, orchestration_id)
                    assert summary is not None
                    if summary.status in ("completed", "failed", "cancelled"):
                        if asked:  # its runner ended it, cancelled or otherwise
                            break
                        raise OrchestrationStateError(orchestration_id, summary.status, "cancel")
                    payload = ev.OrchestrationCancelled(
                        orchestration_id=orchestration_id, reason=reason, requested_by=requested_by
                    )
                    writer = self._writers.get(key) or self._writer(
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
        return await self.get_state(tenant_id, orchestration_id)

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

    # -- external executors ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _external_lock(self, key: tuple[str, str]) -> AsyncIterator[None]:
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

    async def create_external(
        self,
        tenant_id: str,
        *,
        workflow_id: str | None = None,
        workflow_version: int | None = None,
        agent_id: str | None = None,
        agents: Sequence[str] = (),
        input: Any = None,
        parameters: Mapping[str, Any] | None = None,
        model: str | None = None,
        max_steps: int = 1000,
        timeout_seconds: float = 86_400,
        started_by: str = "anonymous",
        request_shape: str = "external",
        orchestration_id: str | None = None,
    ) -> OrchestrationState:
        """An orchestration whose steps an outside framework records itself."""
        created = build_created(
            self.registry,
            tenant_id,
            orchestration_id or self.new_orchestration_id(),
            executor="external",
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            agent_id=agent_id,
            agents=agents,
            input=input,
            parameters=parameters,
            model=model,
            max_steps=max_steps,
            timeout_seconds=timeout_seconds,
            started_by=started_by,
            request_shape=request_shape,
        )
        oid = created.orchestration_id
        writer = self._writer(tenant_id, oid, 0, keep=False)
        await writer.append_now(
            [
                (ev.ORCHESTRATION_CREATED, created),
                (ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid)),
            ]
        )
        self._writers[(tenant_id, oid)] = writer
        return self._projections.state_now(tenant_id, oid)

    async def record_step(
        self,
        tenant_id: str,
        orchestration_id: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> list[Receipt]:
        """Record events of an external orchestration, in order; one receipt each.

        ``events`` are ``(type, payload)`` with payloads as in spec §7.2 (the
        ``orchestration_id`` field may be left out). Raises :class:`InvalidEventError` for a
        type not in :data:`EXTERNAL_EVENT_TYPES` or a bad payload.
        """
        key = (tenant_id, orchestration_id)
        summary = await self.summaries.get(tenant_id, orchestration_id)
        if summary is None:
            raise OrchestrationNotFoundError(f"no orchestration {orchestration_id!r}")
        if summary.executor != "external":
            raise OrchestrationStateError(orchestration_id, "engine-run", "record external steps")
        if not events:
            raise InvalidEventError("record_step needs at least one event")
        typed: list[tuple[str, Any]] = []
        ended: int | None = None
        for i, (event_type, payload) in enumerate(events):
            if event_type not in EXTERNAL_EVENT_TYPES:
                raise InvalidEventError(
                    f"events[{i}]: type {event_type!r} cannot be recorded",
                    field=f"events[{i}].type",
                )
            if ended is not None:
                # As a later request is refused once the run has ended: nothing follows
                # its end, in the same request either.
                raise InvalidEventError(
                    f"events[{i}]: the orchestration ends at events[{ended}]; "
                    "nothing can be recorded after it",
                    field=f"events[{i}].type",
                )
            if event_type in ev.TERMINAL_TYPES:
                ended = i
            body = {**payload, "orchestration_id": orchestration_id}
            try:
                typed.append((event_type, self._log.catalog.coerce(event_type, body)))
            except InvalidEventError as e:
                # msgspec's error, the catalog's cause, says where in the payload.
                cause = e.__cause__ if isinstance(e.__cause__, msgspec.ValidationError) else e
                raise InvalidEventError(
                    f"events[{i}]: {e}", field=f"events[{i}].payload"
                ) from cause
        async with self._external_lock(key):
            summary = await self.summaries.get(tenant_id, orchestration_id)
            assert summary is not None
            if summary.status in ("completed", "failed", "cancelled"):
                raise OrchestrationStateError(orchestration_id, summary.status, "record steps")
            await self._check_started(tenant_id, orchestration_id, typed)
            writer = self._writers.get(key)
            if writer is None:
                writer = self._writer(tenant_id, orchestration_id, summary.seq)
            try:
                return await writer.append_now(typed)
            except ConflictError:
                self._writers.pop(key, None)
                raise

    async def _check_started(
        self, tenant_id: str, orchestration_id: str, typed: Sequence[tuple[str, Any]]
    ) -> None:
        """Refuse a step's calls, decision, completion or failure before its
        ``step.started`` (in the stream or earlier in ``typed``): §7.2's causal order.
        The projections cannot place them (the verifier's replay rejects a completion
        of a step that never started), so the run's own bundle would not verify."""
        state = self.live_state(tenant_id, orchestration_id)
        if state is None:
            state = await self.get_state(tenant_id, orchestration_id)
        started = {s.step_id for s in state.steps if s.started_at is not None}
        for i, (event_type, payload) in enumerate(typed):
            step_id = getattr(payload, "step_id", None)
            if step_id is None or event_type == ev.STEP_SKIPPED:
                continue
            if event_type == ev.STEP_STARTED:
                started.add(step_id)
            elif step_id not in started:
                raise InvalidEventError(
                    f"events[{i}]: {event_type} for step {step_id!r}, which has not started "
                    "(record its step.started first)",
                    field=f"events[{i}].payload.step_id",
                )


def _check_uuid(value: str, field: str) -> str:
    try:
        return canonical_uuid(value)
    except (ValueError, TypeError):
        raise WorkflowValidationError("must be a UUID", field=field) from None
