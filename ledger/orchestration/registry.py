"""A projection over the whole log: registered agents and workflows, per tenant. A
pure fold of committed events, kept live by the engine's log listener; nothing here is
authoritative on its own. (Orchestrations are summarised apart, in a store:
``ledger/orchestration/summaries.py``; there are far more of them.)

:class:`RegistryProjection` snapshots the registry (``ledger/replay.py``), so a restart
folds only the events after the snapshot instead of the whole log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from ledger.events import Event
from ledger.orchestration import events as ev

__all__ = [
    "MAX_EXAMINED",
    "AgentRecord",
    "Registry",
    "RegistryProjection",
    "WorkflowRecord",
]


#: The most orchestrations one listing page examines (see
#: :meth:`~ledger.orchestration.summary_store.SummaryStore.page`).
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


class _RegistrySnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Every registration of every agent, with its tenant, in log order.
    agents: list[tuple[str, AgentRecord]]
    #: Every version of every workflow, with its tenant, in log order.
    workflows: list[tuple[str, WorkflowRecord]]


# JSON, as the leaves are: whatever a leaf can hold (an integer beyond 64 bits in a
# workflow definition, say), the snapshot can too. MessagePack cannot.
_SNAPSHOT_ENCODER = msgspec.json.Encoder()
_SNAPSHOT_DECODER = msgspec.json.Decoder(_RegistrySnapshot)


class Registry:
    """Agents and workflow versions, per tenant."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], AgentRecord] = {}
        #: Every registration of each agent, by revision: runs record the one they use.
        self._agent_revisions: dict[tuple[str, str], dict[int, AgentRecord]] = {}
        self._workflows: dict[tuple[str, str], list[WorkflowRecord]] = {}

    @property
    def records(self) -> int:
        """How many agent registrations and workflow versions the registry holds."""
        return sum(map(len, self._agent_revisions.values())) + sum(
            map(len, self._workflows.values())
        )

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

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The registry's whole state, for :meth:`from_snapshot`."""
        return b"".join(self.snapshot_parts())

    def snapshot_parts(self) -> Iterator[bytes]:
        """:meth:`snapshot`, as parts (the :class:`~ledger.replay.Projection` shape)."""
        yield _SNAPSHOT_ENCODER.encode(
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
            )
        )

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


class RegistryProjection:
    """The registry as a :class:`ledger.replay.Projection`, for snapshots.

    ``apply`` folds into the registry it is given and returns it: the fold owns its
    state, so nothing else can see the mutation. Bump ``name`` whenever
    :meth:`Registry.apply` or the snapshot's shape changes; an old snapshot is then
    ignored and the registry is rebuilt from the log.
    """

    name = "orchestration-registry/3"

    def initial(self) -> Registry:
        return Registry()

    def apply(self, state: Registry, event: Event) -> Registry:
        state.apply(event)
        return state

    def encode(self, state: Registry) -> Iterator[bytes]:
        return state.snapshot_parts()

    def decode(self, data: bytes) -> Registry:
        return Registry.from_snapshot(data)
