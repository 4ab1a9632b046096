"""The auditor's timeline of one orchestration (``specs/log-format.md`` §7): its events,
each with its verified or failed mark, grouped under the steps they name, and each step's
agent, action, status, attempts, timing and tokens as §7.3's fold reads them.

The timeline is liberal: it shows every payload field present, whatever the event type.
:mod:`verifier._replay` decides which events it holds and whether each verified.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from verifier._wire import Envelope

__all__ = ["Timeline", "TimelineEvent", "TimelineStep", "assemble_timeline", "timeline_event"]


def _step_id(payload: Any) -> str | None:
    """The step an event is shown under: its payload's ``step_id`` when that is a string.
    Any other event (a ``step_id`` of another type included) is an orchestration event."""
    if isinstance(payload, dict):
        step_id = payload.get("step_id")
        if isinstance(step_id, str):
            return step_id
    return None


class TimelineEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int | None
    type: str
    occurred_at: str | None
    event_id: str | None
    leaf_index: int
    verified: bool
    problem: str | None
    payload: Any


class TimelineStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    step_id: str
    agent_id: str | None
    action: str | None
    status: str
    #: A failed step's last ``step.failed`` ``kind`` (§7.2: what failed it, the reason
    #: of a run it ended); ``None`` otherwise, or in leaves written before it.
    failure_kind: str | None
    attempts: int
    started_at: str | None
    completed_at: str | None
    duration_ms: float | None
    input_tokens: int
    output_tokens: int
    depends_on: tuple[str, ...]
    verified: bool
    events: tuple[TimelineEvent, ...]


class Timeline(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origin: str | None
    tenant_id: str | None
    orchestration_id: str | None
    tree_size: int | None
    status: str | None
    verified: bool
    failure: str | None
    orchestration: tuple[TimelineEvent, ...]
    steps: tuple[TimelineStep, ...]


def _payload(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return {"(undecodable payload)": raw.decode("utf-8", "replace")}


def _ms_between(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    try:
        t0 = datetime.fromisoformat(a.replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((t1 - t0).total_seconds() * 1000, 3)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def timeline_event(leaf_index: int, env: Envelope, problem: str | None) -> TimelineEvent:
    return TimelineEvent(
        env.stream_seq,
        env.type,
        env.occurred_at,
        env.event_id,
        leaf_index,
        problem is None,
        problem,
        _payload(env.payload),
    )


def assemble_timeline(
    *,
    origin: str | None,
    tenant_id: str | None,
    orchestration_id: str | None,
    tree_size: int | None,
    status: str | None,
    failure: str | None,
    events: list[TimelineEvent],
) -> Timeline:
    definition: dict[str, Any] | None = None
    for e in events:
        if e.type == "orchestration.created" and isinstance(e.payload, dict):
            d = e.payload.get("definition")
            definition = d if isinstance(d, dict) else None
    return Timeline(
        origin=origin,
        tenant_id=tenant_id,
        orchestration_id=orchestration_id,
        tree_size=tree_size,
        status=status,
        verified=failure is None,
        failure=failure,
        orchestration=tuple(e for e in events if _step_id(e.payload) is None),
        steps=_steps(events, definition),
    )


def _steps(
    events: list[TimelineEvent], definition: dict[str, Any] | None
) -> tuple[TimelineStep, ...]:
    deps: dict[str, tuple[str, ...]] = {}
    #: Each step's definition, found as §7.3's fold finds it (``Projection``).
    defined: dict[str, dict[str, Any]] = {}
    if definition and isinstance(definition.get("steps"), list):
        for s in definition["steps"]:
            if not isinstance(s, dict):
                continue
            sid = s.get("id")
            if isinstance(sid, str):
                defined.setdefault(sid, s)
                d = s.get("depends_on")
                deps[sid] = tuple(x for x in d if isinstance(x, str)) if isinstance(d, list) else ()
    grouped: dict[str, list[TimelineEvent]] = {}
    for e in events:
        step_id = _step_id(e.payload)
        if step_id is not None:
            grouped.setdefault(step_id, []).append(e)
    out = []
    for step_id, evs in grouped.items():
        # A step skipped before it started runs as the definition says (§7.3).
        d = defined.get(step_id, {})
        agent, action = d.get("agent"), d.get("action")
        started = completed = None
        status, attempts, tin, tout = "running", 0, 0, 0
        kind: Any = None
        for e in evs:
            p = e.payload
            if e.type == "step.started":
                agent, action = p.get("agent_id"), p.get("action")
                attempts = _int(p.get("attempt")) or attempts
                started, status, completed, kind = e.occurred_at, "running", None, None
            elif e.type == "step.completed":
                status, completed = "completed", e.occurred_at
            elif e.type == "step.failed" and p.get("retrying") is not True:
                status, completed, kind = "failed", e.occurred_at, p.get("kind")
            elif e.type == "step.skipped":
                status, completed = "skipped", e.occurred_at
            elif e.type == "llm.completed":
                tin += _int(p.get("gen_ai.usage.input_tokens"))
                tout += _int(p.get("gen_ai.usage.output_tokens"))
        out.append(
            TimelineStep(
                step_id=step_id,
                agent_id=agent if isinstance(agent, str) else None,
                action=action if isinstance(action, str) else None,
                status=status,
                failure_kind=kind if status == "failed" and isinstance(kind, str) else None,
                attempts=attempts,
                started_at=started,
                completed_at=completed,
                duration_ms=_ms_between(started, completed),
                input_tokens=tin,
                output_tokens=tout,
                depends_on=deps.get(step_id, ()),
                verified=all(e.verified for e in evs),
                events=tuple(evs),
            )
        )
    return tuple(out)
