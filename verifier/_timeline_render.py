"""The timeline's renderers (``maip-verify replay --format``): text, JSON, and one
self-contained HTML page (inline CSS/JS, no network) with the DAG of steps; everything
taken from events is escaped (``verifier._text``) and, in the page, HTML-escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

import msgspec

from verifier._text import visible
from verifier._timeline import Timeline, TimelineEvent, TimelineStep

__all__ = ["render"]


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
