"""Workflow definitions: a DAG of ``llm``, ``tool`` and ``decision`` steps.

The format is documented in ``specs/workflows.md``. :func:`validate_definition` turns a
JSON-shaped mapping into a :class:`WorkflowDefinition` or raises
:class:`WorkflowValidationError` naming the step and the field. A definition's version
hash is ``sha256:<hex>`` of the canonical JSON (sorted keys, no whitespace) of the
*normalised* definition (every default filled in), which is what the
``workflow.registered`` event stores, so anyone can recompute it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from ledger.orchestration.conditions import condition_references
from ledger.orchestration.errors import ConditionError, TemplateError, WorkflowValidationError
from ledger.orchestration.templates import Reference, find_references

__all__ = [
    "MAX_STEPS_PER_WORKFLOW",
    "StepDef",
    "WorkflowDefinition",
    "canonical_json",
    "definition_hash",
    "validate_definition",
]

MAX_STEPS_PER_WORKFLOW: Final = 200
_STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_FIELD_IN_ERROR = re.compile(r"at `\$\.([A-Za-z_]+)")
_ENCODER = msgspec.json.Encoder(order="sorted")


class StepDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step. Fields not used by the step's ``action`` must be left unset."""

    id: str
    action: Literal["llm", "tool", "decision"]
    depends_on: tuple[str, ...] = ()
    #: Agent id or name (resolved among the orchestration's agents); default: the first.
    agent: str | None = None
    #: ``llm``: the user message template (default: the orchestration input as JSON).
    prompt: str | None = None
    #: ``tool``: the tool name.
    tool: str | None = None
    #: ``tool``: the arguments template (any JSON value).
    inputs: Any = None
    #: ``decision``: the condition (see ``conditions``).
    condition: Any = None
    then: tuple[str, ...] = ()
    else_: tuple[str, ...] = msgspec.field(name="else", default=())
    timeout_seconds: float | None = None
    max_attempts: int = 3
    backoff_seconds: float = 0.5


class WorkflowDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    steps: tuple[StepDef, ...]
    #: Template of the orchestration's results; default: every completed step's output.
    output: Any = None

    def step(self, step_id: str) -> StepDef:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data


def canonical_json(value: Any) -> bytes:
    return _ENCODER.encode(value)


def definition_hash(definition: WorkflowDefinition | Mapping[str, Any]) -> str:
    data = definition.to_json() if isinstance(definition, WorkflowDefinition) else definition
    return "sha256:" + hashlib.sha256(canonical_json(data)).hexdigest()


def _field_of(err: msgspec.ValidationError, default: str) -> str:
    match = _FIELD_IN_ERROR.search(str(err))
    return match.group(1) if match else default


def _convert_step(index: int, raw: Any) -> StepDef:
    step_id = raw.get("id") if isinstance(raw, Mapping) else None
    label = step_id if isinstance(step_id, str) else f"#{index}"
    if not isinstance(raw, Mapping):
        raise WorkflowValidationError("a step must be an object", step_id=label, field="")
    try:
        return msgspec.convert(raw, StepDef)
    except msgspec.ValidationError as e:
        field = _field_of(e, "")
        raise WorkflowValidationError(str(e), step_id=label, field=field) from None


def _ancestors(steps: Mapping[str, StepDef]) -> dict[str, set[str]]:
    memo: dict[str, set[str]] = {}

    def visit(sid: str) -> set[str]:
        if sid not in memo:
            acc: set[str] = set()
            for dep in steps[sid].depends_on:
                acc.add(dep)
                acc |= visit(dep)
            memo[sid] = acc
        return memo[sid]

    for sid in steps:
        visit(sid)
    return memo


def _check_cycles(steps: Mapping[str, StepDef]) -> None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(steps, white)

    def visit(sid: str) -> None:
        color[sid] = grey
        for dep in steps[sid].depends_on:
            if color[dep] == grey:
                raise WorkflowValidationError(
                    f"depends_on {dep!r} closes a cycle", step_id=sid, field="depends_on"
                )
            if color[dep] == white:
                visit(dep)
        color[sid] = black

    for sid in steps:
        if color[sid] == white:
            visit(sid)


def _check_refs(
    step: StepDef, field: str, refs: list[Reference], ancestors: set[str], ids: set[str]
) -> None:
    for ref in refs:
        target = ref.step_id
        if target is None:
            continue
        if target not in ids:
            raise WorkflowValidationError(
                f"reference {ref.text!r} names unknown step {target!r}",
                step_id=step.id,
                field=field,
            )
        if target not in ancestors:
            raise WorkflowValidationError(
                f"reference {ref.text!r} reads step {target!r}, which is not in depends_on "
                "(directly or transitively)",
                step_id=step.id,
                field=field,
            )


def _check_action_fields(step: StepDef) -> None:
    unused: dict[str, tuple[str, ...]] = {
        "llm": ("tool", "inputs", "condition", "then", "else"),
        "tool": ("prompt", "condition", "then", "else"),
        "decision": ("prompt", "tool", "inputs"),
    }
    values = {
        "prompt": step.prompt,
        "tool": step.tool,
        "inputs": step.inputs,
        "condition": step.condition,
        "then": step.then or None,
        "else": step.else_ or None,
    }
    for name in unused[step.action]:
        if values[name] is not None:
            raise WorkflowValidationError(
                f"field is not allowed on a {step.action!r} step", step_id=step.id, field=name
            )
    if step.action == "tool" and not step.tool:
        raise WorkflowValidationError("a tool step names its tool", step_id=step.id, field="tool")
    if step.action == "decision" and step.condition is None:
        raise WorkflowValidationError(
            "a decision step needs a condition", step_id=step.id, field="condition"
        )
    if not 1 <= step.max_attempts <= 10:
        raise WorkflowValidationError("must be 1..10", step_id=step.id, field="max_attempts")
    if step.timeout_seconds is not None and not 0 < step.timeout_seconds <= 3600:
        raise WorkflowValidationError(
            "must be in (0, 3600]", step_id=step.id, field="timeout_seconds"
        )
    if not 0 <= step.backoff_seconds <= 60:
        raise WorkflowValidationError("must be 0..60", step_id=step.id, field="backoff_seconds")


def _check_decision(step: StepDef, steps: Mapping[str, StepDef]) -> list[Reference]:
    try:
        refs = condition_references(step.condition)
    except ConditionError as e:
        raise WorkflowValidationError(str(e), step_id=step.id, field="condition") from None
    for field, branch in (("then", step.then), ("else", step.else_)):
        for target in branch:
            if target not in steps:
                raise WorkflowValidationError(
                    f"unknown step {target!r}", step_id=step.id, field=field
                )
            if step.id not in steps[target].depends_on:
                raise WorkflowValidationError(
                    f"branch step {target!r} must list {step.id!r} in depends_on",
                    step_id=step.id,
                    field=field,
                )
    both = set(step.then) & set(step.else_)
    if both:
        raise WorkflowValidationError(
            f"step {sorted(both)[0]!r} is in both branches", step_id=step.id, field="else"
        )
    return refs


def validate_definition(raw: Any) -> WorkflowDefinition:
    """Parse and validate; raise :class:`WorkflowValidationError` naming step and field."""
    if isinstance(raw, WorkflowDefinition):
        raw = raw.to_json()
    if not isinstance(raw, Mapping):
        raise WorkflowValidationError("a workflow definition is an object", field="definition")
    unknown = set(raw) - {"steps", "output"}
    if unknown:
        raise WorkflowValidationError("unknown field", field=sorted(unknown)[0])
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list | tuple) or not raw_steps:
        raise WorkflowValidationError("a workflow needs a non-empty list of steps", field="steps")
    if len(raw_steps) > MAX_STEPS_PER_WORKFLOW:
        raise WorkflowValidationError(
            f"at most {MAX_STEPS_PER_WORKFLOW} steps are allowed", field="steps"
        )
    parsed = [_convert_step(i, s) for i, s in enumerate(raw_steps)]
    steps: dict[str, StepDef] = {}
    for step in parsed:
        if not _STEP_ID.fullmatch(step.id):  # `$` alone would let "a\n" through
            raise WorkflowValidationError(
                f"step id must match {_STEP_ID.pattern}", step_id=step.id, field="id"
            )
        if step.id in steps:
            raise WorkflowValidationError("duplicate step id", step_id=step.id, field="id")
        steps[step.id] = step
    for step in parsed:
        seen: set[str] = set()
        for dep in step.depends_on:
            if dep not in steps:
                raise WorkflowValidationError(
                    f"unknown step {dep!r}", step_id=step.id, field="depends_on"
                )
            if dep == step.id or dep in seen:
                raise WorkflowValidationError(
                    f"step {dep!r} is listed twice or is the step itself",
                    step_id=step.id,
                    field="depends_on",
                )
            seen.add(dep)
        _check_action_fields(step)
    _check_cycles(steps)
    ancestors = _ancestors(steps)
    ids = set(steps)
    for step in parsed:
        for field, value in (("prompt", step.prompt), ("inputs", step.inputs)):
            try:
                refs = find_references(value)
            except TemplateError as e:
                raise WorkflowValidationError(str(e), step_id=step.id, field=field) from None
            _check_refs(step, field, refs, ancestors[step.id], ids)
        if step.action == "decision":
            _check_refs(step, "condition", _check_decision(step, steps), ancestors[step.id], ids)
    try:
        out_refs = find_references(raw.get("output"))
    except TemplateError as e:
        raise WorkflowValidationError(str(e), field="output") from None
    for ref in out_refs:
        if ref.step_id is not None and ref.step_id not in ids:
            raise WorkflowValidationError(
                f"reference {ref.text!r} names unknown step {ref.step_id!r}", field="output"
            )
    return WorkflowDefinition(steps=tuple(parsed), output=raw.get("output"))
