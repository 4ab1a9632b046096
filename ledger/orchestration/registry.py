"""Projections over the whole log: registered agents and workflows, and an index of
orchestrations per tenant for listing. All are pure folds of committed events, kept
live by the engine's log listener; nothing here is authoritative on its own.

:class:`RegistryProjection` snapshots the registry (``ledger/replay.py``), so a restart
folds only the events after the snapshot instead of the whole log.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from ledger.events import Event
from ledger.orchestration import events as ev
from ledger.orchestration.state import Status

__all__ = [
    "MAX_EXAMINED",
    "AgentRecord",
    "OrchestrationSummary",
    "Registry",
    "RegistryProjection",
    "WorkflowRecord",
]


#: The most orchestrations one listing page examines (see
#: :meth:`Registry.list_orchestrations`): a few milliseconds of the event loop.
MAX_EXAMINED = 5_000


class AgentRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    agent_id: str
    name: str
    provider: dict[str, Any]
    model: str | None
    tools: tuple[str, ...]
    instructions: str | None
    #: The agent stream's sequence number of this registration.
    revision: int
    registered_at: str


class WorkflowRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    name: str
    version: int
    version_hash: str
    definition: dict[str, Any]
    registered_at: str


class OrchestrationSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    orchestration_id: str
    tenant_id: str
    executor: str
    status: Status
    reason: str | None
    agent_id: str | None
    agents: tuple[str, ...]
    workflow_id: str | None
    workflow_version: int | None
    created_at: str
    completed_at: str | None
    #: The stream's last sequence number folded into this summary.
    seq: int


_TERMINAL_STATUS: dict[str, Status] = {
    ev.ORCHESTRATION_COMPLETED: "completed",
    ev.ORCHESTRATION_FAILED: "failed",
    ev.ORCHESTRATION_CANCELLED: "cancelled",
}


class _RegistrySnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Every registration of every agent, with its tenant, in log order.
    agents: list[tuple[str, AgentRecord]]
    #: Every version of every workflow, with its tenant, in log order.
    workflows: list[tuple[str, WorkflowRecord]]
    orchestrations: list[OrchestrationSummary]


# JSON, as the leaves are: whatever a leaf can hold (an integer beyond 64 bits in a
# workflow definition, say), the snapshot can too. MessagePack cannot.
_SNAPSHOT_ENCODER = msgspec.json.Encoder()
#: Orchestration summaries per part of a snapshot (see :meth:`Registry.snapshot_parts`):
#: a few milliseconds of encoding each on the bench machine.
_SUMMARIES_PER_PART = 5000
_SNAPSHOT_DECODER = msgspec.json.Decoder(_RegistrySnapshot)


class Registry:
    """Agents, workflow versions and orchestration summaries, per tenant."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], AgentRecord] = {}
        #: Every registration of each agent, by revision: runs record the one they use.
        self._agent_revisions: dict[tuple[str, str], dict[int, AgentRecord]] = {}
        self._workflows: dict[tuple[str, str], list[WorkflowRecord]] = {}
        self._orchs: dict[tuple[str, str], OrchestrationSummary] = {}
        #: Per tenant, orchestration ids in ascending order (ULID-derived: creation order).
        self._order: dict[str, list[str]] = {}
        #: Engine-run orchestrations still pending or running: the few a restart resumes
        #: and a metrics scrape counts, found without a pass over every summary.
        self._unfinished: set[tuple[str, str]] = set()
        #: Each distinct ``agents`` tuple once (see :meth:`_compact`).
        self._agent_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}

    def _compact(self, summary: OrchestrationSummary) -> OrchestrationSummary:
        """``summary`` holding one shared copy of each value that repeats across
        orchestrations (a tenant, an agent, a workflow, a status): every leaf or
        snapshot decodes into strings of its own, and these were half of the ~900 bytes
        a summary kept in memory for as long as the process runs."""
        share = sys.intern
        agents = summary.agents
        shared_agents = self._agent_tuples.get(agents)
        if shared_agents is None:
            shared_agents = self._agent_tuples[agents] = tuple(share(a) for a in agents)
        return msgspec.structs.replace(
            summary,
            tenant_id=share(summary.tenant_id),
            executor=share(summary.executor),
            status=share(summary.status),
            agent_id=share(summary.agent_id) if summary.agent_id is not None else None,
            agents=shared_agents,
            workflow_id=share(summary.workflow_id) if summary.workflow_id is not None else None,
        )

    @property
    def orchestration_count(self) -> int:
        """How many orchestrations the registry holds a summary of."""
        return len(self._orchs)

    # -- folding ---------------------------------------------------------------------

    def apply_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        p = event.payload
        tenant = event.tenant_id
        if isinstance(p, ev.AgentRegistered):
            record = AgentRecord(
                agent_id=p.agent_id,
                name=p.name,
                provider=p.provider,
                model=p.model,
                tools=p.tools,
                instructions=p.instructions,
                revision=event.stream_seq,
                registered_at=event.occurred_at,
            )
            self._agents[(tenant, p.agent_id)] = record
            self._agent_revisions.setdefault((tenant, p.agent_id), {})[record.revision] = record
        elif isinstance(p, ev.WorkflowRegistered):
            self._workflows.setdefault((tenant, p.workflow_id), []).append(
                WorkflowRecord(
                    workflow_id=p.workflow_id,
                    name=p.name,
                    version=p.version,
                    version_hash=p.version_hash,
                    definition=p.definition,
                    registered_at=event.occurred_at,
                )
            )
        elif isinstance(p, ev.OrchestrationCreated):
            key = (tenant, p.orchestration_id)
            self._orchs[key] = self._compact(
                OrchestrationSummary(
                    orchestration_id=p.orchestration_id,
                    tenant_id=tenant,
                    executor=p.executor,
                    status="pending",
                    reason=None,
                    agent_id=p.agent_id,
                    agents=tuple(p.agents),
                    workflow_id=p.workflow_id,
                    workflow_version=p.workflow_version,
                    created_at=event.occurred_at,
                    completed_at=None,
                    seq=event.stream_seq,
                )
            )
            bisect.insort(self._order.setdefault(tenant, []), p.orchestration_id)
            if p.executor == "engine":
                self._unfinished.add(key)
        else:
            key = (tenant, event.stream_id)
            old = self._orchs.get(key)
            if old is None:
                return
            rep = msgspec.structs.replace
            if isinstance(p, ev.OrchestrationStarted):
                # As in the orchestration's own fold (state.py), the last status event
                # wins, even one after an end the engine itself never writes.
                self._orchs[key] = rep(old, status="running", seq=event.stream_seq)
                if old.executor == "engine":
                    self._unfinished.add(key)
            elif event.type in _TERMINAL_STATUS:
                self._unfinished.discard(key)
                reason = getattr(p, "reason", None)
                self._orchs[key] = rep(
                    old,
                    status=_TERMINAL_STATUS[event.type],
                    reason=reason,
                    completed_at=event.occurred_at,
                    seq=event.stream_seq,
                )
            else:
                self._orchs[key] = rep(old, seq=event.stream_seq)

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The registry's whole state, for :meth:`from_snapshot`."""
        return b"".join(self.snapshot_parts())

    def snapshot_parts(self) -> Iterator[bytes]:
        """:meth:`snapshot` in parts, so a caller can let other work run between them
        (encoding 100,000 summaries at once held the event loop for ~90 ms). The state
        is captured when the first part is taken: every record is frozen, and the
        containers are copied then."""
        head = _SNAPSHOT_ENCODER.encode(
            _RegistrySnapshot(
                agents=[
                    (tenant, record)
                    for (tenant, _), revisions in self._agent_revisions.items()
                    for record in revisions.values()
                ],
                workflows=[
                    (tenant, record)
                    for (tenant, _), versions in self._workflows.items()
                    for record in versions
                ],
                orchestrations=[],
            )
        )
        summaries = list(self._orchs.values())
        assert head.endswith(b"[]}")  # the last field: its items go in between
        yield head[:-2]
        for i in range(0, len(summaries), _SUMMARIES_PER_PART):
            items = _SNAPSHOT_ENCODER.encode(summaries[i : i + _SUMMARIES_PER_PART])
            yield (b"," if i else b"") + items[1:-1]
        yield b"]}"

    @classmethod
    def from_snapshot(cls, data: bytes) -> Registry:
        snapshot = _SNAPSHOT_DECODER.decode(data)
        registry = cls()
        for tenant, agent in snapshot.agents:
            key = (tenant, agent.agent_id)
            registry._agent_revisions.setdefault(key, {})[agent.revision] = agent
            registry._agents[key] = agent  # in log order, so the last one is the latest
        for tenant, workflow in snapshot.workflows:
            registry._workflows.setdefault((tenant, workflow.workflow_id), []).append(workflow)
        for decoded in snapshot.orchestrations:
            summary = registry._compact(decoded)
            key = (summary.tenant_id, summary.orchestration_id)
            registry._orchs[key] = summary
            registry._order.setdefault(summary.tenant_id, []).append(summary.orchestration_id)
            if summary.executor == "engine" and summary.status in ("pending", "running"):
                registry._unfinished.add(key)
        for ids in registry._order.values():
            ids.sort()
        return registry

    # -- queries ---------------------------------------------------------------------

    def agent(
        self, tenant_id: str, agent_id: str, revision: int | None = None
    ) -> AgentRecord | None:
        """The agent's latest registration, or the one at ``revision``."""
        if revision is None:
            return self._agents.get((tenant_id, agent_id))
        return self._agent_revisions.get((tenant_id, agent_id), {}).get(revision)

    def agents(self, tenant_id: str) -> list[AgentRecord]:
        return sorted(
            (a for (t, _), a in self._agents.items() if t == tenant_id), key=lambda a: a.agent_id
        )

    def agent_by_name(self, tenant_id: str, name: str) -> AgentRecord | None:
        found = [a for (t, _), a in self._agents.items() if t == tenant_id and a.name == name]
        return found[0] if len(found) == 1 else None

    def workflow(
        self, tenant_id: str, workflow_id: str, version: int | None = None
    ) -> WorkflowRecord | None:
        versions = self._workflows.get((tenant_id, workflow_id))
        if not versions:
            return None
        if version is None:
            return versions[-1]
        for w in versions:
            if w.version == version:
                return w
        return None

    def workflows(self, tenant_id: str) -> list[WorkflowRecord]:
        return sorted(
            (v[-1] for (t, _), v in self._workflows.items() if t == tenant_id),
            key=lambda w: w.workflow_id,
        )

    def orchestration(self, tenant_id: str, orchestration_id: str) -> OrchestrationSummary | None:
        return self._orchs.get((tenant_id, orchestration_id))

    def unfinished(self) -> list[OrchestrationSummary]:
        """Engine-run orchestrations that are pending or running, in creation order."""
        return sorted(
            (self._orchs[key] for key in self._unfinished), key=lambda s: s.orchestration_id
        )

    def list_orchestrations(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        agent_id: str | None = None,
        workflow_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        examine: int = MAX_EXAMINED,
    ) -> tuple[list[OrchestrationSummary], str | None]:
        """Newest first. ``cursor`` is the next cursor of the previous page; returns the
        page and the next cursor (``None`` at the end).

        A page examines at most ``examine`` orchestrations: a filter that few match
        would otherwise walk a tenant's whole history on the event loop, in one call.
        So a filtered page can hold fewer than ``limit`` (even none) and still have a
        next cursor; the listing is at its end only when the cursor is ``None``.
        """
        order = self._order.get(tenant_id, [])
        end = bisect.bisect_left(order, cursor) if cursor is not None else len(order)
        page: list[OrchestrationSummary] = []
        i = end - 1
        stop = max(-1, end - 1 - max(limit, examine))
        while i > stop and len(page) < limit:
            s = self._orchs[(tenant_id, order[i])]
            if (
                (status is None or s.status == status)
                and (agent_id is None or s.agent_id == agent_id or agent_id in s.agents)
                and (workflow_id is None or s.workflow_id == workflow_id)
            ):
                page.append(s)
            i -= 1
        # Everything above ``i`` was examined; the next page starts below it.
        return page, (order[i + 1] if i >= 0 else None)


class RegistryProjection:
    """The registry as a :class:`ledger.replay.Projection`, for snapshots.

    ``apply`` folds into the registry it is given and returns it: the fold owns its
    state, so nothing else can see the mutation. Bump ``name`` whenever
    :meth:`Registry.apply` or the snapshot's shape changes; an old snapshot is then
    ignored and the registry is rebuilt from the log.
    """

    name = "orchestration-registry/2"

    def initial(self) -> Registry:
        return Registry()

    def apply(self, state: Registry, event: Event) -> Registry:
        state.apply(event)
        return state

    def encode(self, state: Registry) -> Iterator[bytes]:
        return state.snapshot_parts()

    def decode(self, data: bytes) -> Registry:
        return Registry.from_snapshot(data)
