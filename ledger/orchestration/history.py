"""A run's history, read back per step: what a resumed run starts from.

Replay-based resumption (as in Temporal): the runner is given the stream's events so
far, and :func:`read_history` folds them into each step's :class:`StepHistory` (its
attempts, status, output or error, its latest attempt's calls, a decision's branch).
Pure functions over recorded payloads; :mod:`ledger.orchestration.attempts` acts on
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.events import Event
from ledger.orchestration import events as ev
from ledger.orchestration._endings import Ending

__all__ = ["INTERRUPTED", "StepHistory", "ends_as", "read_history", "retried_at_once"]

#: The error of an attempt a resumed run found in flight; it is retried at once.
INTERRUPTED = "interrupted: the engine stopped while the step was in flight"


def ends_as(kind: ev.FailureKind | None) -> Ending:
    """The reason a run ends with when a step's recorded final failure ends it: the one
    the live run ended with, which the failure's ``kind`` records. A leaf written before
    ``kind`` was recorded ends it ``step_failed``, as such a run always did; so does an
    attempt the run's end aborted, which the run's terminal event follows in its batch."""
    if kind == "provider_error":
        return "provider_error"
    if kind == "interrupted":
        return "interrupted"
    return "step_failed"


def retried_at_once(action: ev.Action, error: str | None) -> bool:
    """Whether a ``step.failed`` with ``retrying=true`` and this error was followed by
    no backoff: an interrupted attempt's, or (only an llm step has a journal) the one
    of an attempt that could not retrace its recorded calls."""
    return error == INTERRUPTED or (
        action == "llm" and error is not None and error.startswith("interrupted: ")
    )


@dataclass
class StepHistory:
    attempts: int = 0
    status: str = "running"
    output: Any = None
    error: str | None = None
    #: The last ``step.failed``'s ``kind`` (``None`` in leaves written before it).
    kind: ev.FailureKind | None = None
    inputs: Any = None
    #: The step's last recorded tool call (its ``tool.completed``).
    tool_call: ev.ToolCompleted | None = None
    #: The latest attempt's call events (``llm.*`` and ``tool.*``), in log order.
    calls: list[Any] = field(default_factory=list)
    #: A decision's last recorded branch (its ``decision.made``).
    branch: str | None = None
    #: When the last ``step.failed`` with ``retrying=true`` was recorded (its
    #: ``occurred_at``): a resumed run waits out the rest of that backoff.
    failed_at: str | None = None


def read_history(events: list[Event]) -> tuple[dict[str, StepHistory], bool, bool]:
    """Per-step history, whether ``orchestration.started`` and a terminal event exist."""
    steps: dict[str, StepHistory] = {}
    started = terminal = False
    for e in events:
        p = e.payload
        if isinstance(p, ev.OrchestrationStarted):
            started = True
        elif e.type in ev.TERMINAL_TYPES:
            terminal = True
        elif isinstance(p, ev.StepStarted):
            h = steps.setdefault(p.step_id, StepHistory())
            h.attempts, h.status, h.inputs = p.attempt, "running", p.inputs
            h.calls = []
        elif isinstance(p, ev.StepCompleted):
            h = steps.setdefault(p.step_id, StepHistory())
            h.status, h.output = "completed", p.output
        elif isinstance(p, ev.StepFailed):
            h = steps.setdefault(p.step_id, StepHistory())
            h.attempts = max(h.attempts, p.attempt)
            h.error, h.kind = p.error, p.kind
            if not p.retrying:
                h.status = "failed"
            else:
                h.status, h.failed_at = "retrying", e.occurred_at
        elif isinstance(p, ev.StepSkipped):
            steps.setdefault(p.step_id, StepHistory()).status = "skipped"
        elif isinstance(p, ev.ToolCompleted):
            h = steps.setdefault(p.step_id, StepHistory())
            h.tool_call = p
            if p.attempt == h.attempts:
                h.calls.append(p)
        elif isinstance(p, ev.DecisionMade):
            steps.setdefault(p.step_id, StepHistory()).branch = p.branch
        elif isinstance(p, ev.LLMRequested | ev.LLMCompleted | ev.ToolInvoked):
            h = steps.setdefault(p.step_id, StepHistory())
            if p.attempt == h.attempts:
                h.calls.append(p)
    return steps, started, terminal
