"""An orchestration's summary: what a listing shows of it, folded from its stream.

Pure values and pure functions (spec §7.3: the summary is a fold, never the truth).
A summary is built from ``orchestration.created``; every later event of the stream is a
:class:`SummaryPatch`, and patches compose, so a store can apply the events it has not
seen as one patch to a row it has (``ledger/orchestration/summaries.py``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from ledger.events import Event
from ledger.orchestration import events as ev
from ledger.orchestration.state import Status

__all__ = [
    "STATUS_TYPES",
    "UNFINISHED",
    "OrchestrationSummary",
    "SummaryPatch",
    "created_summary",
    "is_engine_unfinished",
    "merge_patches",
    "patch_for",
    "patched",
]

#: The statuses of an orchestration that has not ended.
UNFINISHED: Final = ("pending", "running")

_TERMINAL_STATUS: dict[str, Status] = {
    ev.ORCHESTRATION_COMPLETED: "completed",
    ev.ORCHESTRATION_FAILED: "failed",
    ev.ORCHESTRATION_CANCELLED: "cancelled",
}


#: The events that change a summary's status (the rest move only its seq).
STATUS_TYPES: Final = frozenset(
    {ev.ORCHESTRATION_CREATED, ev.ORCHESTRATION_STARTED, *_TERMINAL_STATUS}
)


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


class SummaryPatch(msgspec.Struct, frozen=True, gc=False):
    """What events after ``orchestration.created`` change in a summary."""

    seq: int
    #: The last status an event set (``None``: no status event).
    status: Status | None = None
    #: ``(reason, completed_at)`` of the last terminal event (``None``: none).
    ended: tuple[str | None, str] | None = None


def created_summary(event: Event) -> OrchestrationSummary | None:
    """The summary ``orchestration.created`` starts, or ``None`` for any other event."""
    p = event.payload
    if not isinstance(p, ev.OrchestrationCreated):
        return None
    return OrchestrationSummary(
        orchestration_id=p.orchestration_id,
        tenant_id=event.tenant_id,
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


def patch_for(event: Event) -> SummaryPatch:
    """The change ``event`` (not a creation) makes to its stream's summary."""
    # As in the orchestration's own fold (state.py), the last status event wins, even
    # one after an end the engine itself never writes.
    if isinstance(event.payload, ev.OrchestrationStarted):
        return SummaryPatch(seq=event.stream_seq, status="running")
    terminal = _TERMINAL_STATUS.get(event.type)
    if terminal is not None:
        reason = getattr(event.payload, "reason", None)
        return SummaryPatch(
            seq=event.stream_seq, status=terminal, ended=(reason, event.occurred_at)
        )
    return SummaryPatch(seq=event.stream_seq)


def merge_patches(first: SummaryPatch, then: SummaryPatch) -> SummaryPatch:
    """One patch doing what ``first`` and then ``then`` do."""
    return SummaryPatch(
        seq=then.seq,
        status=then.status if then.status is not None else first.status,
        ended=then.ended if then.ended is not None else first.ended,
    )


def patched(summary: OrchestrationSummary, patch: SummaryPatch) -> OrchestrationSummary:
    reason, completed_at = (
        patch.ended if patch.ended is not None else (summary.reason, summary.completed_at)
    )
    return msgspec.structs.replace(
        summary,
        status=patch.status if patch.status is not None else summary.status,
        reason=reason,
        completed_at=completed_at,
        seq=patch.seq,
    )


def is_engine_unfinished(summary: OrchestrationSummary) -> bool:
    """Whether the engine would resume ``summary``'s run after a restart."""
    return summary.executor == "engine" and summary.status in UNFINISHED
