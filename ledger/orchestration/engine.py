"""The orchestration :class:`Engine`: the impure shell around the pure parts.

It registers agents and workflows (each registration an event), starts orchestrations
(``orchestration.created`` and ``orchestration.started`` are durable before
:meth:`Engine.execute` returns), runs them in background tasks, cancels them, answers
state by replay, lists them from a projection, records steps of externally executed
orchestrations, and on :meth:`Engine.start` resumes every orchestration that was
running when the process last stopped. Every lookup takes a ``tenant_id``; another
tenant's ids are simply not found.

The work is done by what it composes: :class:`~.projections.Projections` follows the log
(registry, summaries, live states), :class:`~.runs.Runs` runs this process's
orchestrations, and :class:`~.external.ExternalRuns` records external executors' steps.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import structlog
from ulid import ULID

from ledger.events import NewEvent
from ledger.ids import canonical_uuid
from ledger.orchestration import events as ev
from ledger.orchestration.binding import build_created
from ledger.orchestration.engine_log import EngineLog
from ledger.orchestration.errors import (
    AgentNotFoundError,
    OrchestrationNotFoundError,
    OrchestrationStateError,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from ledger.orchestration.external import EXTERNAL_EVENT_TYPES, ExternalRuns
from ledger.orchestration.projections import Projections
from ledger.orchestration.providers import (
    OpenAIConfig,
    ProviderPolicy,
    parse_provider_config,
)
from ledger.orchestration.redaction import RedactionPolicy
from ledger.orchestration.registry import (
    MAX_EXAMINED,
    AgentRecord,
    Registry,
    WorkflowRecord,
)
from ledger.orchestration.runs import Runs
from ledger.orchestration.state import OrchestrationState, replay
from ledger.orchestration.summaries import Summaries
from ledger.orchestration.summary import OrchestrationSummary
from ledger.orchestration.summary_store import MemorySummaryStore, PageQuery, SummaryStore
from ledger.orchestration.tools import ToolRegistry
from ledger.orchestration.workflow import definition_hash, validate_definition
from ledger.receipt import Receipt

__all__ = ["EXTERNAL_EVENT_TYPES", "Engine", "EngineLog"]

_log = structlog.get_logger()


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
        self._now = now or (lambda: datetime.now(UTC))
        self._new_ulid = new_ulid
        #: Where agents' providers may connect and which keys they may send (``None``:
        #: whoever registers agents is trusted). An injected ``session`` should resolve
        #: through ``provider_policy.resolver()``, as the engine's own session does.
        self._provider_policy = provider_policy
        self._projections = Projections(
            log,
            summaries if summaries is not None else MemorySummaryStore(),
            closing=lambda: self._closing,
        )
        self._runs = Runs(
            log,
            self._projections,
            closing=lambda: self._closing,
            tools=self.tools,
            session=session,
            env=env if env is not None else os.environ,
            now=self._now,
            redaction=redaction,
            sleep=sleep,
            stop_grace_seconds=stop_grace_seconds,
            provider_policy=provider_policy,
        )
        self._external = ExternalRuns(log, self._projections, self._runs, get_state=self.get_state)
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
        return await self._runs.resume(self.summaries.unfinished())

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
        await self._runs.stop()
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
        return await self._runs.start(tenant_id, created)

    @property
    def stalled(self) -> int:
        """How many runs are waiting for storage to take writes again."""
        return self._runs.stalled

    @property
    def unresumable(self) -> int:
        """How many runs this process could not resume because their history did not
        read back whole (``maip-ledger fsck`` says where); they stay unfinished."""
        return self._runs.unresumable

    async def resume_stalled(self) -> list[str]:
        """Resume, from the log, every run a storage failure stopped; call once storage
        takes writes again. Returns the orchestration ids resumed."""
        return await self._runs.resume_stalled()

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
        task = self._runs.task(key)
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
        await self._runs.cancel(
            tenant_id, orchestration_id, reason=reason, requested_by=requested_by
        )
        return await self.get_state(tenant_id, orchestration_id)

    # -- external executors ----------------------------------------------------------

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
        return await self._external.create(tenant_id, created)

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
        return await self._external.record_step(tenant_id, orchestration_id, events)


def _check_uuid(value: str, field: str) -> str:
    try:
        return canonical_uuid(value)
    except (ValueError, TypeError):
        raise WorkflowValidationError("must be a UUID", field=field) from None
