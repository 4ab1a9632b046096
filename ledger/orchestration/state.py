"""``OrchestrationState``: a pure projection of one orchestration's stream (spec §7.3).

:func:`apply` is a pure function of (state, event); :func:`replay` folds a stream. The
verifier re-implements exactly this fold, so any change here is a change to §7.3.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from ledger.events import Event
from ledger.ids import canonical_uuid, ulid_bytes, ulid_str
from ledger.orchestration import events as ev
from ledger.receipt import receipt_id_for

__all__ = [
    "OrchestrationProjection",
    "OrchestrationState",
    "Status",
    "StepState",
    "apply",
    "orchestration_display_id",
    "parse_orchestration_id",
    "receipt_id_for",
    "replay",
]

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
StepStatus = Literal["running", "completed", "failed", "skipped"]


_DISPLAY_PREFIX = "maip-orch:"


def orchestration_display_id(orchestration_id: str) -> str:
    """§7.3: ``maip-orch:`` + the ULID with the same 128 bits as the orchestration UUID."""
    return _DISPLAY_PREFIX + ulid_str(uuid.UUID(orchestration_id).bytes)


def parse_orchestration_id(text: str) -> str:
    """The canonical (lower-case) UUID of an orchestration named by its UUID, in any
    case, or by its display id (:func:`orchestration_display_id`); ``ValueError`` if
    ``text`` is neither."""
    if text.startswith(_DISPLAY_PREFIX):
        return str(uuid.UUID(bytes=ulid_bytes(text[len(_DISPLAY_PREFIX) :])))
    return canonical_uuid(text)


class StepState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    step_id: str
    agent_id: str | None
    action: str | None
    status: StepStatus
    result: Any
    started_at: str | None
    completed_at: str | None
    attempts: int


class OrchestrationState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    orchestration_id: str
    id: str
    tenant_id: str
    workflow_id: str | None
    workflow_version: int | None
    agent_id: str | None
    agents: tuple[str, ...]
    parameters: dict[str, Any]
    input: Any
    model: str | None
    executor: str
    status: Status
    reason: str | None
    steps: tuple[StepState, ...]
    results: Any
    receipts: tuple[str, ...]
    created_at: str
    started_at: str | None
    completed_at: str | None

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def step(self, step_id: str) -> StepState | None:
        for s in self.steps:
            if s.step_id == step_id:
                return s
        return None


def _replace_step(steps: tuple[StepState, ...], new: StepState) -> tuple[StepState, ...]:
    for i, s in enumerate(steps):
        if s.step_id == new.step_id:
            return (*steps[:i], new, *steps[i + 1 :])
    return (*steps, new)


def _definition_step(created_def: dict[str, Any] | None, step_id: str) -> dict[str, Any]:
    if not created_def:
        return {}
    for s in created_def.get("steps", ()):
        if isinstance(s, dict) and s.get("id") == step_id:
            return s
    return {}


def _created(
    event: Event, p: ev.OrchestrationCreated, receipt_id: str | None
) -> OrchestrationState:
    return OrchestrationState(
        orchestration_id=p.orchestration_id,
        id=orchestration_display_id(p.orchestration_id),
        tenant_id=event.tenant_id,
        workflow_id=p.workflow_id,
        workflow_version=p.workflow_version,
        agent_id=p.agent_id,
        agents=tuple(p.agents),
        parameters=dict(p.parameters),
        input=p.input,
        model=p.model,
        executor=p.executor,
        status="pending",
        reason=None,
        steps=(),
        results=None,
        receipts=(receipt_id or receipt_id_for(event.event_id),),
        created_at=event.occurred_at,
        started_at=None,
        completed_at=None,
    )


def apply(
    state: OrchestrationState | None,
    event: Event,
    definition: dict[str, Any] | None = None,
    receipt_id: str | None = None,
) -> OrchestrationState | None:
    """The state after ``event``. ``definition`` is the one ``orchestration.created``
    recorded (callers that fold a whole stream get it from :class:`OrchestrationProjection`).
    ``receipt_id``, when the caller has it, saves deriving it from the event id.
    """
    p = event.payload
    if state is None:
        if isinstance(p, ev.OrchestrationCreated):
            return _created(event, p, receipt_id)
        return None
    receipts = (*state.receipts, receipt_id or receipt_id_for(event.event_id))
    at = event.occurred_at
    rep = msgspec.structs.replace
    if isinstance(p, ev.OrchestrationStarted):
        return rep(state, status="running", started_at=at, receipts=receipts)
    if isinstance(p, ev.StepStarted):
        step = StepState(
            step_id=p.step_id,
            agent_id=p.agent_id,
            action=p.action,
            status="running",
            result=None,
            started_at=at,
            completed_at=None,
            attempts=p.attempt,
        )
        return rep(state, steps=_replace_step(state.steps, step), receipts=receipts)
    if isinstance(p, ev.StepCompleted | ev.StepFailed | ev.StepSkipped):
        old = state.step(p.step_id)
        if isinstance(p, ev.StepSkipped):
            d = _definition_step(definition, p.step_id)
            base = old or StepState(
                step_id=p.step_id,
                agent_id=d.get("agent"),
                action=d.get("action"),
                status="skipped",
                result=None,
                started_at=None,
                completed_at=None,
                attempts=0,
            )
            new = rep(base, status="skipped", completed_at=at)
        elif old is None:
            return rep(state, receipts=receipts)
        elif isinstance(p, ev.StepCompleted):
            new = rep(old, status="completed", result=p.output, completed_at=at)
        elif p.retrying:
            new = old
        else:
            new = rep(old, status="failed", result={"error": p.error}, completed_at=at)
        return rep(state, steps=_replace_step(state.steps, new), receipts=receipts)
    if isinstance(p, ev.OrchestrationCompleted):
        return rep(state, status="completed", results=p.results, completed_at=at, receipts=receipts)
    if isinstance(p, ev.OrchestrationFailed):
        return rep(state, status="failed", reason=p.reason, completed_at=at, receipts=receipts)
    if isinstance(p, ev.OrchestrationCancelled):
        return rep(state, status="cancelled", reason=p.reason, completed_at=at, receipts=receipts)
    return rep(state, receipts=receipts)


class OrchestrationProjection:
    """The fold as a projection object (``initial``/``apply``) for ``ledger.replay``.

    Its state carries the definition from ``orchestration.created`` alongside the
    public state, since ``step.skipped`` reads it; :attr:`FoldState.state` is §7.3's.
    """

    class FoldState(msgspec.Struct, frozen=True):
        state: OrchestrationState | None = None
        definition: dict[str, Any] | None = None

    def initial(self) -> OrchestrationProjection.FoldState:
        return OrchestrationProjection.FoldState()

    def apply(
        self,
        fold: OrchestrationProjection.FoldState,
        event: Event,
        receipt_id: str | None = None,
    ) -> OrchestrationProjection.FoldState:
        definition = fold.definition
        if fold.state is None and isinstance(event.payload, ev.OrchestrationCreated):
            definition = event.payload.definition
        return OrchestrationProjection.FoldState(
            state=apply(fold.state, event, definition, receipt_id), definition=definition
        )


def replay(events: Iterable[Event]) -> OrchestrationState | None:
    """Fold a stream, in ``stream_seq`` order, into its state (``None`` if not created)."""
    projection = OrchestrationProjection()
    fold = projection.initial()
    for event in events:
        fold = projection.apply(fold, event)
    return fold.state
