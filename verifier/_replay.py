"""The auditor's timeline of a bundle (``maip-verify replay``), ``specs/log-format.md`` §6-§7.

:func:`build_timeline` verifies the bundle (§6.1, :func:`verify_bundle`). A verified
bundle's timeline holds exactly the events verify_bundle verified, handed over by its
``on_event`` hook. A bundle that fails gets a second, tolerant pass over the same lines
(:func:`bundle_lines`, split at LF only) that checks each event on its own (inclusion in
the header checkpoint, its receipt against its checkpoint line, belonging), so that
every step of the timeline carries its own verified or failed mark.

The timeline is liberal: it shows every payload field present, whatever the event type.
Renderers: text, JSON, and one self-contained HTML page (inline CSS/JS, no network)
with the DAG of steps; everything taken from events is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime
from typing import Any

import msgspec

from verifier._bundle import BUNDLE_FORMAT, LINE_LIMIT, bundle_lines, verify_bundle
from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._errors import MalformedInput, ProofInvalid, ReceiptMismatch, VerificationError
from verifier._ids import receipt_id_for
from verifier._leaf import decode_leaf, is_canonical
from verifier._merkle import decode_proof, leaf_hash, verify_consistency, verify_inclusion
from verifier._note import VerifierKey, parse_vkey
from verifier._text import visible
from verifier._wire import (
    BundleCheckpoint,
    BundleEvent,
    BundleHeader,
    BundleLine,
    BundleState,
    Envelope,
)

__all__ = ["Timeline", "TimelineEvent", "TimelineStep", "build_timeline", "render"]

_LINE = msgspec.json.Decoder(BundleLine)


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


def _check_event(
    line: BundleEvent,
    header: BundleHeader,
    head: Checkpoint | None,
    roots: dict[int, bytes],
) -> tuple[Any, str | None]:
    """Per-event checks of §6.1 steps 2-3; returns (envelope or None, problem or None)."""
    env = None
    if head is None:
        try:
            env = decode_leaf(line.leaf)
        except VerificationError:
            env = None
        return env, "the header checkpoint does not verify"
    try:
        lh = leaf_hash(line.leaf)
        proof = decode_proof(line.inclusion_proof, "inclusion proof")
        verify_inclusion(lh, line.leaf_index, head.size, proof, head.root)
        r = line.receipt
        if r.leaf_index != line.leaf_index or r.leaf_hash != lh:
            raise ReceiptMismatch("the receipt is for another leaf")
        root = roots.get(r.tree_size)
        if root is None:
            raise ProofInvalid(f"no verified checkpoint of size {r.tree_size} for the receipt")
        rproof = decode_proof(r.inclusion_proof, "receipt proof")
        verify_inclusion(lh, r.leaf_index, r.tree_size, rproof, root)
        env = decode_leaf(line.leaf)
        if (env.tenant_id, env.stream_id) != (header.tenant_id, header.orchestration_id):
            raise ReceiptMismatch("the event belongs to another tenant or orchestration")
        if env.event_id != r.event_id or r.receipt_id != receipt_id_for(env.event_id):
            raise ReceiptMismatch("the receipt's ids do not match the event")
    except VerificationError as e:
        if env is None:
            try:
                env = decode_leaf(line.leaf)
            except VerificationError:
                env = None
        return env, e.message
    return env, None


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


def _event(leaf_index: int, env: Envelope, problem: str | None) -> TimelineEvent:
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


def build_timeline(bundle: bytes, vkey: str | VerifierKey) -> Timeline:
    """Verify ``bundle`` and build its timeline; ``failure`` names the first failing step.

    A verified bundle's timeline is made of exactly the events :func:`verify_bundle`
    verified (its ``on_event`` hook), so it cannot show any other. Only a bundle that
    fails gets the tolerant second pass, over the same lines (:func:`bundle_lines`).
    """
    key = parse_vkey(vkey)
    verified: list[TimelineEvent] = []

    def shown(line: BundleEvent, env: Envelope) -> None:
        # verify_bundle reads only the payloads it folds; this shows every one, so each
        # must read the same to every JSON reader (§2) before it is shown as verified.
        if not is_canonical(env.payload):
            raise MalformedInput(
                f"event {env.stream_seq} ({env.type}): the payload is not the canonical "
                "encoding (§2: sorted keys, each once, no whitespace)"
            )
        verified.append(_event(line.leaf_index, env, None))

    try:
        report = verify_bundle(bundle, key, on_event=shown)
    except VerificationError as e:
        return _tolerant_timeline(bundle, key, str(e))
    return _timeline(
        origin=report.origin,
        tenant_id=report.tenant_id,
        orchestration_id=report.orchestration_id,
        tree_size=report.tree_size,
        status=report.status,
        failure=None,
        events=verified,
    )


def _timeline(
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


def _tolerant_timeline(bundle: bytes, key: VerifierKey, failure: str) -> Timeline:
    """The timeline of a bundle that failed: each event checked on its own."""
    header: BundleHeader | None = None
    head: Checkpoint | None = None
    roots: dict[int, bytes] = {}
    events: list[TimelineEvent] = []
    for item in bundle_lines(bundle):
        if isinstance(item, bytes):
            raw = item
        else:
            # A line longer than LINE_LIMIT: verify_bundle allows only the state trailer
            # to be that long, and the timeline does not show the trailer.
            raw = b"".join(item)
            try:
                long_line = _LINE.decode(raw)
            except (msgspec.DecodeError, ValueError, RecursionError):
                long_line = None
            if not isinstance(long_line, BundleState):
                events.append(
                    TimelineEvent(
                        None,
                        "(unreadable line)",
                        None,
                        None,
                        -1,
                        False,
                        f"a line longer than {LINE_LIMIT} bytes that is not the state trailer",
                        None,
                    )
                )
            continue
        if not raw.strip():
            continue
        try:
            line = _LINE.decode(raw)
        except (msgspec.DecodeError, ValueError, RecursionError) as e:
            events.append(
                TimelineEvent(None, "(unreadable line)", None, None, -1, False, str(e), None)
            )
            continue
        if isinstance(line, BundleHeader) and header is not None:
            # verify_bundle reads the first header and fails at another: so does this.
            events.append(
                TimelineEvent(
                    None,
                    "(second header)",
                    None,
                    None,
                    -1,
                    False,
                    "a second header line: the timeline keeps the first",
                    None,
                )
            )
        elif isinstance(line, BundleHeader):
            header = line
            if line.format != BUNDLE_FORMAT:
                raise MalformedInput(f"bundle format {line.format!r} is not {BUNDLE_FORMAT!r}")
            try:
                head = verify_checkpoint(line.checkpoint, key)
                roots[head.size] = head.root
            except VerificationError:
                head = None
        elif isinstance(line, BundleCheckpoint) and head is not None:
            try:
                cp = verify_checkpoint(line.checkpoint, key)
                verify_consistency(cp.size, cp.root, head.size, head.root, line.consistency_proof)
                roots[cp.size] = cp.root
            except VerificationError:
                pass
        elif isinstance(line, BundleEvent) and header is not None:
            env, problem = _check_event(line, header, head, roots)
            if env is None:
                events.append(
                    TimelineEvent(
                        None,
                        "(undecodable leaf)",
                        None,
                        None,
                        line.leaf_index,
                        False,
                        problem,
                        base64.b64encode(line.leaf).decode(),
                    )
                )
            else:
                events.append(_event(line.leaf_index, env, problem))
    if header is None:
        raise MalformedInput("the bundle has no header line")
    return _timeline(
        origin=header.origin,
        tenant_id=header.tenant_id,
        orchestration_id=header.orchestration_id,
        tree_size=head.size if head else None,
        status=None,
        failure=failure,
        events=events,
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


# ---- renderers ----------------------------------------------------------------------


def render(timeline: Timeline, fmt: str) -> str:
    if fmt == "json":
        return msgspec.json.encode(timeline).decode() + "\n"
    if fmt == "html":
        return _html(timeline)
    return _text(timeline)


def _compact(value: Any, indent: int | None = None) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, indent=indent)
    except (RecursionError, ValueError):
        return "(value nested too deeply to show)"


def _fields(payload: dict[str, Any], orchestration_id: str | None) -> list[tuple[str, Any]]:
    """The payload fields a renderer shows: all but an ``orchestration_id`` that is the
    timeline's (its heading) and a string ``step_id`` (the step the event is under)."""
    return [
        (k, v)
        for k, v in payload.items()
        if not (k == "orchestration_id" and v == orchestration_id)
        and not (k == "step_id" and isinstance(v, str))
    ]


def _status(step: TimelineStep) -> str:
    """A step's status, with what failed it if its ``step.failed`` says."""
    return f"{step.status} ({step.failure_kind})" if step.failure_kind else step.status


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _event_text(e: TimelineEvent, indent: str, orchestration_id: str | None) -> list[str]:
    lines = [f"{indent}{_mark(e.verified)} #{e.seq} {e.occurred_at} {e.type}"]
    if e.problem:
        lines.append(f"{indent}    FAILED: {e.problem}")
    if isinstance(e.payload, dict):
        for k, v in _fields(e.payload, orchestration_id):
            lines.append(f"{indent}    {k}: {_compact(v)}")
    elif e.payload is not None:
        lines.append(f"{indent}    {_compact(e.payload)}")
    return lines


def _text(t: Timeline) -> str:
    out = [
        f"orchestration {t.orchestration_id} (tenant {t.tenant_id}) in {t.origin}, "
        f"tree size {t.tree_size}",
        "bundle: VERIFIED" + (f" (status {t.status})" if t.status else "")
        if t.verified
        else f"bundle: NOT VERIFIED: {t.failure}",
        "",
        "orchestration events:",
    ]
    for e in t.orchestration:
        out += _event_text(e, "  ", t.orchestration_id)
    for s in t.steps:
        timing = f", {s.duration_ms} ms" if s.duration_ms is not None else ""
        tokens = (
            f", tokens {s.input_tokens} in / {s.output_tokens} out"
            if s.input_tokens or s.output_tokens
            else ""
        )
        deps = f", after {', '.join(s.depends_on)}" if s.depends_on else ""
        out.append("")
        out.append(
            f"{_mark(s.verified)} step {s.step_id}: agent {s.agent_id}, action {s.action}, "
            f"{_status(s)}, attempts {s.attempts}{timing}{tokens}{deps}"
        )
        for e in s.events:
            out += _event_text(e, "    ", t.orchestration_id)
    return "\n".join(visible(line) for line in out) + "\n"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
.ok{color:#17692b}.bad{color:#b00020}
main{display:flex;gap:16px;padding:16px}
#dag{flex:0 0 auto;background:#fff;border:1px solid #ddd;overflow:auto;max-height:90vh}
#details{flex:1 1 auto;min-width:0}
section.step{background:#fff;border:1px solid #ddd;margin:0 0 12px;padding:8px 12px}
section.step.sel{outline:3px solid #3d6bd6}
pre{white-space:pre-wrap;word-break:break-word;background:#f3f3f3;padding:6px;margin:4px 0}
.node rect{fill:#fff;stroke:#888;rx:6}
.node.completed rect{stroke:#17692b}.node.failed rect{stroke:#b00020}
.node.skipped rect{stroke:#aaa;stroke-dasharray:4}.node.bad rect{fill:#fde7ea}
.node text{font-size:12px}.edge{stroke:#999;fill:none;marker-end:url(#arrow)}
summary{cursor:pointer}
"""

_JS = """
document.querySelectorAll('.node').forEach(function(n){n.addEventListener('click',function(){
document.querySelectorAll('section.step').forEach(function(s){s.classList.remove('sel')});
var s=document.getElementById(n.dataset.target);if(s){s.classList.add('sel');s.scrollIntoView();}
});});
"""


def _esc(value: Any) -> str:
    return html.escape(visible(value if isinstance(value, str) else _compact(value)), quote=True)


def _event_html(e: TimelineEvent, orchestration_id: str | None) -> str:
    rows = []
    if isinstance(e.payload, dict):
        for k, v in _fields(e.payload, orchestration_id):
            pretty = html.escape(visible(_compact(v, indent=2), newlines=True))
            rows.append(f"<div><b>{_esc(k)}</b><pre>{pretty}</pre></div>")
    elif e.payload is not None:
        rows.append(f"<pre>{_esc(e.payload)}</pre>")
    problem = f'<div class="bad">FAILED: {_esc(e.problem)}</div>' if e.problem else ""
    cls = "ok" if e.verified else "bad"
    return (
        f'<details><summary><span class="{cls}">{_mark(e.verified)}</span> '
        f"#{_esc(str(e.seq))} {_esc(e.occurred_at or '')} <b>{_esc(e.type)}</b></summary>"
        f"{problem}{''.join(rows)}</details>"
    )


def _layers(steps: tuple[TimelineStep, ...]) -> list[int]:
    index = {s.step_id: i for i, s in enumerate(steps)}
    layer = [0] * len(steps)
    for i, s in enumerate(steps):  # steps are in causal order: dependencies come first
        for d in s.depends_on:
            j = index.get(d)
            if j is not None and j < i:
                layer[i] = max(layer[i], layer[j] + 1)
        if not s.depends_on and i and not any(x.depends_on for x in steps):
            layer[i] = layer[i - 1] + 1  # no definition: a chain in causal order
    return layer


def _dag_svg(steps: tuple[TimelineStep, ...]) -> str:
    if not steps:
        return "<p>no steps</p>"
    w, h, gx, gy = 150, 34, 40, 24
    layer = _layers(steps)
    rows: dict[int, int] = {}
    pos = []
    for lv in layer:
        r = rows.get(lv, 0)
        rows[lv] = r + 1
        pos.append((10 + lv * (w + gx), 10 + r * (h + gy)))
    width = 20 + (max(layer) + 1) * (w + gx)
    height = 20 + max(rows.values()) * (h + gy)
    index = {s.step_id: i for i, s in enumerate(steps)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="#999"/></marker></defs>'
    ]
    for i, s in enumerate(steps):
        deps = s.depends_on or (
            (steps[i - 1].step_id,) if i and not any(x.depends_on for x in steps) else ()
        )
        for d in deps:
            j = index.get(d)
            if j is not None:
                (x0, y0), (x1, y1) = pos[j], pos[i]
                parts.append(
                    f'<path class="edge" d="M{x0 + w},{y0 + h / 2} C{x0 + w + gx / 2},{y0 + h / 2} '
                    f'{x1 - gx / 2},{y1 + h / 2} {x1},{y1 + h / 2}"/>'
                )
    for i, s in enumerate(steps):
        x, y = pos[i]
        label = s.step_id if len(s.step_id) <= 18 else s.step_id[:17] + "…"
        cls = f"node {_esc(s.status)}" + ("" if s.verified else " bad")
        parts.append(
            f'<g class="{cls}" data-target="step-{i}">'
            f"<title>{_esc(s.step_id)}: {_esc(s.status)}</title>"
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}"/>'
            f'<text x="{x + 8}" y="{y + 21}">{_mark(s.verified)} {_esc(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _html(t: Timeline) -> str:
    verdict = (
        f'<span class="ok">VERIFIED</span> (status {_esc(t.status or "")})'
        if t.verified
        else f'<span class="bad">NOT VERIFIED: {_esc(t.failure)}</span>'
    )
    sections = [
        '<section class="step" id="orchestration"><h3>orchestration</h3>'
        + "".join(_event_html(e, t.orchestration_id) for e in t.orchestration)
        + "</section>"
    ]
    for i, s in enumerate(t.steps):
        facts = (
            f"agent <b>{_esc(s.agent_id or '-')}</b>, action <b>{_esc(s.action or '-')}</b>, "
            f"{_esc(_status(s))}, attempts {s.attempts}"
            + (f", {s.duration_ms} ms" if s.duration_ms is not None else "")
            + (
                f", tokens {s.input_tokens} in / {s.output_tokens} out"
                if s.input_tokens or s.output_tokens
                else ""
            )
            + (f", after {_esc(', '.join(s.depends_on))}" if s.depends_on else "")
        )
        sections.append(
            f'<section class="step" id="step-{i}">'
            f'<h3><span class="{"ok" if s.verified else "bad"}">'
            f"{_mark(s.verified)}</span> step {_esc(s.step_id)}</h3><p>{facts}</p>"
            + "".join(_event_html(e, t.orchestration_id) for e in s.events)
            + "</section>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>maip-verify replay {_esc(t.orchestration_id or '')}</title>"
        f"<style>{_CSS}</style></head><body><header><h2>Orchestration "
        f"{_esc(t.orchestration_id or '')}</h2><div>tenant {_esc(t.tenant_id or '')} · log "
        f"{_esc(t.origin or '')} · tree size {_esc(str(t.tree_size))}</div>"
        f"<div>bundle: {verdict}</div>"
        f'</header><main><div id="dag">{_dag_svg(t.steps)}</div><div id="details">'
        + "".join(sections)
        + f"</div></main><script>{_JS}</script></body></html>\n"
    )
