"""Orchestrations an outside framework runs: it records their steps itself.

:class:`ExternalRuns` writes such a run's start, and then the events its executor sends
(:data:`EXTERNAL_EVENT_TYPES` only, checked against the catalog and §7.2's causal order),
one request at a time per run, under the lock a cancel and a resume take too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from ledger.errors import ConflictError, InvalidEventError
from ledger.orchestration import events as ev
from ledger.orchestration.engine_log import EngineLog
from ledger.orchestration.errors import OrchestrationNotFoundError, OrchestrationStateError
from ledger.orchestration.projections import Projections
from ledger.orchestration.runs import Runs
from ledger.orchestration.state import OrchestrationState
from ledger.receipt import Receipt

__all__ = ["EXTERNAL_EVENT_TYPES", "ExternalRuns"]

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


class ExternalRuns:
    def __init__(
        self,
        log: EngineLog,
        projections: Projections,
        runs: Runs,
        *,
        get_state: Callable[[str, str], Awaitable[OrchestrationState]],
    ) -> None:
        self._log = log
        self._projections = projections
        self._runs = runs
        #: The state by a fresh replay (:meth:`Engine.get_state`).
        self._get_state = get_state

    async def create(self, tenant_id: str, created: ev.OrchestrationCreated) -> OrchestrationState:
        """Durably record an external run's ``created`` + ``started``; its state then."""
        oid = created.orchestration_id
        writer = self._runs.writer(tenant_id, oid, 0, keep=False)
        await writer.append_now(
            [
                (ev.ORCHESTRATION_CREATED, created),
                (ev.ORCHESTRATION_STARTED, ev.OrchestrationStarted(orchestration_id=oid)),
            ]
        )
        self._runs.writers[(tenant_id, oid)] = writer
        return self._projections.state_now(tenant_id, oid)

    async def record_step(
        self,
        tenant_id: str,
        orchestration_id: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> list[Receipt]:
        """:meth:`Engine.record_step`."""
        key = (tenant_id, orchestration_id)
        summary = await self._projections.summaries.get(tenant_id, orchestration_id)
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
        async with self._runs.lock(key):
            summary = await self._projections.summaries.get(tenant_id, orchestration_id)
            assert summary is not None
            if summary.status in ("completed", "failed", "cancelled"):
                raise OrchestrationStateError(orchestration_id, summary.status, "record steps")
            await self._check_started(tenant_id, orchestration_id, typed)
            writer = self._runs.writers.get(key)
            if writer is None:
                writer = self._runs.writer(tenant_id, orchestration_id, summary.seq)
            try:
                return await writer.append_now(typed)
            except ConflictError:
                self._runs.writers.pop(key, None)
                raise

    async def _check_started(
        self, tenant_id: str, orchestration_id: str, typed: Sequence[tuple[str, Any]]
    ) -> None:
        """Refuse a step's calls, decision, completion or failure before its
        ``step.started`` (in the stream or earlier in ``typed``): §7.2's causal order.
        The projections cannot place them (the verifier's replay rejects a completion
        of a step that never started), so the run's own bundle would not verify."""
        state = self._projections.live_state(tenant_id, orchestration_id)
        if state is None:
            state = await self._get_state(tenant_id, orchestration_id)
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
