"""Workflow validation, templates and conditions: the pure parts."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import TENANT

from ledger.errors import LedgerError
from ledger.orchestration import (
    ConditionError,
    Engine,
    TemplateError,
    WorkflowValidationError,
    definition_hash,
    validate_definition,
)
from ledger.orchestration.conditions import evaluate
from ledger.orchestration.templates import render


def _wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"steps": list(steps), **extra}


def _invalid(defn: dict[str, Any]) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as info:
        validate_definition(defn)
    assert isinstance(info.value, LedgerError)
    return info.value


def test_valid_three_step_workflow_has_stable_hash() -> None:
    d = _wf(
        {"id": "classify", "action": "llm", "prompt": "Classify: {{ input.text }}"},
        {
            "id": "route",
            "action": "decision",
            "depends_on": ["classify"],
            "condition": {"eq": ["steps.classify.output.json.label", "spam"]},
            "then": ["drop"],
            "else": ["reply"],
        },
        {"id": "drop", "action": "tool", "tool": "echo", "depends_on": ["route"]},
        {
            "id": "reply",
            "action": "tool",
            "tool": "echo",
            "depends_on": ["route"],
            "inputs": {"label": "{{ steps.classify.output.json.label }}"},
        },
    )
    a, b = validate_definition(d), validate_definition(d)
    assert definition_hash(a) == definition_hash(b)
    assert definition_hash(a).startswith("sha256:")
    d["steps"][0]["prompt"] = "changed {{ input.text }}"
    assert definition_hash(validate_definition(d)) != definition_hash(a)


def test_cycle_is_rejected_naming_step_and_field() -> None:
    err = _invalid(
        _wf(
            {"id": "a", "action": "llm", "depends_on": ["b"]},
            {"id": "b", "action": "llm", "depends_on": ["a"]},
        )
    )
    assert err.field == "depends_on"
    assert err.step_id in {"a", "b"}
    assert "cycle" in str(err)


def test_duplicate_id_is_rejected() -> None:
    err = _invalid(_wf({"id": "a", "action": "llm"}, {"id": "a", "action": "llm"}))
    assert (err.step_id, err.field) == ("a", "id")


def test_unknown_dependency_is_rejected() -> None:
    err = _invalid(_wf({"id": "a", "action": "llm", "depends_on": ["ghost"]}))
    assert (err.step_id, err.field) == ("a", "depends_on")
    assert "ghost" in str(err)


def test_bad_action_names_the_field() -> None:
    err = _invalid(_wf({"id": "a", "action": "shell"}))
    assert (err.step_id, err.field) == ("a", "action")


def test_template_reading_unknown_step_is_rejected() -> None:
    err = _invalid(_wf({"id": "a", "action": "llm", "prompt": "{{ steps.nope.output }}"}))
    assert (err.step_id, err.field) == ("a", "prompt")
    assert "nope" in str(err)


def test_template_reading_non_ancestor_is_rejected() -> None:
    err = _invalid(
        _wf(
            {"id": "a", "action": "llm"},
            {"id": "b", "action": "tool", "tool": "echo", "inputs": {"x": "{{ steps.a.output }}"}},
        )
    )
    assert (err.step_id, err.field) == ("b", "inputs")


def test_bad_template_syntax_is_rejected() -> None:
    err = _invalid(_wf({"id": "a", "action": "llm", "prompt": "{{ os.system }}"}))
    assert (err.step_id, err.field) == ("a", "prompt")
    err = _invalid(_wf({"id": "a", "action": "llm", "prompt": "{{ input.x "}))
    assert err.field == "prompt"


def test_decision_branch_must_depend_on_decision() -> None:
    err = _invalid(
        _wf(
            {"id": "a", "action": "llm"},
            {
                "id": "d",
                "action": "decision",
                "depends_on": ["a"],
                "condition": {"exists": "steps.a.output"},
                "then": ["a"],
            },
        )
    )
    assert (err.step_id, err.field) == ("d", "then")


def test_bad_condition_is_rejected() -> None:
    err = _invalid(
        _wf(
            {
                "id": "d",
                "action": "decision",
                "condition": {"matches": ["input.x", "y"]},
                "then": [],
            }
        )
    )
    assert (err.step_id, err.field) == ("d", "condition")


def test_tool_step_needs_tool() -> None:
    err = _invalid(_wf({"id": "t", "action": "tool"}))
    assert (err.step_id, err.field) == ("t", "tool")


def test_unknown_step_field_is_rejected() -> None:
    err = _invalid(_wf({"id": "t", "action": "tool", "tool": "echo", "shell": "rm"}))
    assert err.step_id == "t"
    assert "shell" in str(err)


CTX = {
    "input": {"text": "hi", "n": 3, "obj": {"a": [1, 2]}},
    "parameters": {"limit": 5},
    "steps": {"s": {"output": {"label": "spam", "score": 0.9}}},
}


def test_whole_string_template_keeps_json_type() -> None:
    assert render("{{ input.n }}", CTX) == 3
    assert render("{{ input.obj }}", CTX) == {"a": [1, 2]}
    assert render("{{ input.obj.a[1] }}", CTX) == 2
    assert render("n={{ input.n }} o={{input.obj}}", CTX) == 'n=3 o={"a":[1,2]}'
    assert render({"k": ["{{ parameters.limit }}"]}, CTX) == {"k": [5]}


def test_missing_reference_names_it() -> None:
    with pytest.raises(TemplateError) as info:
        render("x {{ steps.s.output.nothing }}", CTX)
    assert info.value.reference == "steps.s.output.nothing"
    assert "steps.s.output.nothing" in str(info.value)


def test_fallback_alternatives() -> None:
    assert render("{{ steps.gone.output ?? steps.s.output.label }}", CTX) == "spam"
    assert render("{{ steps.gone.output ?? null }}", CTX) is None
    assert render('{{ input.none ?? "dflt" }}', CTX) == "dflt"


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"eq": ["steps.s.output.label", "spam"]}, True),
        ({"ne": ["steps.s.output.label", "spam"]}, False),
        ({"gt": ["steps.s.output.score", 0.5]}, True),
        ({"le": ["input.n", 2]}, False),
        ({"in": ["steps.s.output.label", ["ham", "spam"]]}, True),
        ({"in": ["input.text", "this"]}, True),
        ({"exists": "input.obj.a[1]"}, True),
        ({"exists": "input.obj.a[5]"}, False),
        ({"and": [{"exists": "input.n"}, {"not": {"eq": ["input.n", 4]}}]}, True),
        ({"or": [{"eq": ["input.n", 1]}, {"lt": ["input.n", {"path": "parameters.limit"}]}]}, True),
        ({"eq": ["input.n", True]}, False),
    ],
)
def test_conditions(cond: dict[str, Any], expected: bool) -> None:
    values: dict[str, Any] = {}
    assert evaluate(cond, CTX, values) is expected


def test_condition_records_values_read() -> None:
    values: dict[str, Any] = {}
    evaluate({"gt": ["steps.s.output.score", 0.5]}, CTX, values)
    assert values == {"steps.s.output.score": 0.9}


def test_condition_type_mismatch_and_missing_path_are_errors() -> None:
    with pytest.raises(ConditionError):
        evaluate({"lt": ["input.text", 3]}, CTX, {})
    with pytest.raises(ConditionError, match=r"input\.missing"):
        evaluate({"eq": ["input.missing", 3]}, CTX, {})


def test_regression_a_cached_fallback_literal_is_never_shared_between_renders() -> None:
    """Placeholders are parsed once and cached; a JSON fallback must still be a fresh
    value each time, or one step mutating it would change what the next step sees."""
    first = render('{{ input.absent ?? {"tags": []} }}', CTX)
    first["tags"].append("mutated")
    assert render('{{ input.absent ?? {"tags": []} }}', CTX) == {"tags": []}


def test_a_bad_placeholder_fails_every_time_not_only_the_first() -> None:
    for _ in range(2):
        with pytest.raises(TemplateError, match="must start with one of"):
            render("{{ nowhere.x }}", CTX)


@pytest.mark.parametrize("step_id", ["a\n", "a\nb", "\na"])
def test_regression_a_step_id_with_a_newline_is_rejected(step_id: str) -> None:
    # `$` also matches before a trailing newline: the id must match as a whole.
    err = _invalid(_wf({"id": step_id, "action": "tool", "tool": "echo"}))
    assert (err.step_id, err.field) == (step_id, "id")


def _nested(leaf: Any, wrap: Any, depth: int) -> Any:
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize("depth", [65, 3000])
def test_regression_a_deeply_nested_condition_is_a_validation_error(depth: int) -> None:
    cond = _nested({"exists": "input.x"}, lambda c: {"not": c}, depth)
    err = _invalid(_wf({"id": "d", "action": "decision", "condition": cond}))
    assert (err.step_id, err.field) == ("d", "condition")
    assert "nested" in err.detail


@pytest.mark.parametrize("depth", [65, 3000])
def test_regression_deeply_nested_inputs_and_output_are_validation_errors(depth: int) -> None:
    deep = _nested("{{ input.x }}", lambda v: [v], depth)
    err = _invalid(_wf({"id": "t", "action": "tool", "tool": "echo", "inputs": deep}))
    assert (err.step_id, err.field) == ("t", "inputs")
    err = _invalid(_wf({"id": "t", "action": "tool", "tool": "echo"}, output=deep))
    assert (err.step_id, err.field) == (None, "output")


def test_nesting_up_to_the_limit_is_accepted() -> None:
    cond = _nested({"exists": "input.x"}, lambda c: {"not": c}, 63)
    inputs = _nested("{{ input.x }}", lambda v: {"k": v}, 63)
    validate_definition(
        _wf(
            {"id": "d", "action": "decision", "condition": cond},
            {"id": "t", "action": "tool", "tool": "echo", "inputs": inputs},
        )
    )
    assert evaluate(cond, {"input": {"x": 1}}, {}) is False
    assert render(inputs, {"input": {"x": 1}}) == _nested(1, lambda v: {"k": v}, 63)


def test_regression_a_deeply_nested_condition_literal_is_a_validation_error() -> None:
    cond = {"eq": ["input.x", _nested(1, lambda v: [v], 3000)]}
    err = _invalid(_wf({"id": "d", "action": "decision", "condition": cond}))
    assert (err.step_id, err.field) == ("d", "condition")


async def test_a_tool_step_naming_an_unknown_tool_is_rejected_at_registration(
    engine: Engine,
) -> None:
    """As an agent's tools are: the run used to fail only once it reached the step."""
    with pytest.raises(WorkflowValidationError) as refused:
        await engine.register_workflow(
            TENANT,
            name="w",
            definition=_wf({"id": "t", "action": "tool", "tool": "no_such_tool"}),
        )
    assert (refused.value.step_id, refused.value.field) == ("t", "tool")
    assert "no_such_tool" in str(refused.value)
