"""Built-in tools, the calculator parser and redaction commitments."""

from __future__ import annotations

import functools
import hashlib
import re
import time
from typing import Any

import msgspec
import pytest
from engine_helpers import TENANT

from ledger.orchestration import (
    MAX_JSON_NESTING,
    OrchestrationError,
    RedactionPathError,
    RedactionPolicy,
    TemplateError,
    ToolError,
    ToolRegistry,
    commitment,
    decode_json,
)
from ledger.orchestration import events as ev
from ledger.orchestration.calculator import calculate
from ledger.orchestration.templates import render


@pytest.mark.parametrize(
    ("expr", "value"),
    [("1+2*3", 7), ("(1+2)*3", 9), ("2**10", 1024), ("-3 + 4", 1), ("7 // 2", 3), ("1/4", 0.25)],
)
def test_calculator_arithmetic(expr: str, value: float) -> None:
    assert calculate(expr) == value


@pytest.mark.parametrize(
    "expr",
    ["__import__('os')", "x + 1", "(1).__class__", "9**9**9", "1/0", "[1,2]", "'a'*3", "True+1"],
)
def test_calculator_rejects_unsafe_or_invalid(expr: str) -> None:
    with pytest.raises(ToolError):
        calculate(expr)


@pytest.mark.parametrize(
    "expr", ["1e999", "-1e999", "1e309 - 1e309", "1" + "0" * 101, "-" + "9" * 200, "1e101"]
)
def test_regression_calculator_bounds_number_literals(expr: str) -> None:
    # A literal is a value like any other: infinity (which JSON stores as null) and
    # magnitudes past the limit are errors, not results.
    with pytest.raises(ToolError, match=r"too large|not finite"):
        calculate(expr)


@pytest.mark.parametrize(
    "expr", ["-" * 998 + "1", "+-" * 499 + "1", "(" * 250 + "1" + ")" * 250, "1" + "+1" * 333]
)
def test_regression_calculator_bounds_nesting(expr: str) -> None:
    with pytest.raises(ToolError, match=r"nested|cannot parse"):
        calculate(expr)


def test_calculator_accepts_moderate_nesting() -> None:
    assert calculate("-" * 100 + "1") == 1
    assert calculate("1" + "+1" * 199) == 200


def test_regression_calculator_refuses_a_long_literal_before_raising_it_to_a_power() -> None:
    started = time.process_time()
    for expr in ("9" * 994 + "**999", "9" * 100 + "**999", "2**999 * 2**999"):
        with pytest.raises(ToolError, match="too large"):
            calculate(expr)
    assert time.process_time() - started < 0.1  # 0.5 s for the first alone, unbounded
    assert calculate("2**300 // 2**299") == 2


async def test_builtins() -> None:
    reg = ToolRegistry()
    assert await reg.get("echo").fn({"a": 1}) == {"a": 1}
    assert await reg.get("json_extract").fn({"data": {"a": [{"b": 2}]}, "path": "a[0].b"}) == 2
    assert await reg.get("calculator").fn({"expression": "6*7"}) == 42
    with pytest.raises(ToolError, match="nope"):
        await reg.get("json_extract").fn({"data": {}, "path": "nope"})
    with pytest.raises(ToolError, match="unknown tool"):
        reg.get("rm")


def test_redaction_replaces_paths_with_salted_commitment() -> None:
    salt = b"s" * 32
    policy = RedactionPolicy(["*:input.email", "tool.invoked:arguments.ssn"], lambda t: salt)
    created = ev.OrchestrationStarted(orchestration_id="o")
    assert policy.apply("t", "orchestration.started", created) is created
    inv = ev.ToolInvoked(
        orchestration_id="o",
        step_id="s",
        attempt=1,
        gen_ai_tool_name="x",
        gen_ai_tool_call_id=None,
        arguments={"ssn": "123-45-6789", "keep": 1},
    )
    out = policy.apply("t", "tool.invoked", inv)
    expected = "redacted:sha256:" + hashlib.sha256(salt + b'"123-45-6789"').hexdigest()
    assert out.arguments == {"ssn": expected, "keep": 1}
    assert commitment(salt, "123-45-6789") == expected
    assert b"123-45-6789" not in msgspec.json.encode(out)


def _invoked(arguments: Any) -> ev.ToolInvoked:
    return ev.ToolInvoked(
        orchestration_id="o",
        step_id="s",
        attempt=1,
        gen_ai_tool_name="echo",
        gen_ai_tool_call_id="call-1",
        arguments=arguments,
    )


def test_regression_a_value_that_only_starts_like_a_commitment_is_still_redacted() -> None:
    policy = RedactionPolicy(["tool.invoked:arguments.ssn"], lambda t: b"salt")
    secret = "redacted:sha256: my real ssn is 078-05-1120"
    out = policy.apply(TENANT, "tool.invoked", _invoked({"ssn": secret}))
    assert out.arguments["ssn"] == commitment(b"salt", secret)
    # A whole commitment (a resumed run re-recording what the log holds) is kept.
    again = policy.apply(TENANT, "tool.invoked", out)
    assert again.arguments == out.arguments


def test_regression_redaction_paths_can_address_keys_with_dots() -> None:
    policy = RedactionPolicy(
        [
            'tool.invoked:arguments["user.email"]',
            'tool.invoked:["gen_ai.tool.call.id"]',
            'tool.invoked:arguments["a.b"]["*"].c',
            'tool.invoked:arguments["say \\"hi\\""]',
        ],
        lambda t: b"salt",
    )
    args = {
        "user.email": "bob@example.com",
        "user": {"email": "kept"},
        "a.b": {"*": {"c": "star", "d": "kept"}, "x": {"c": "kept"}},
        'say "hi"': "quoted",
    }
    out = policy.apply(TENANT, "tool.invoked", _invoked(args))
    c = functools.partial(commitment, b"salt")
    assert out.arguments == {
        "user.email": c("bob@example.com"),
        "user": {"email": "kept"},
        "a.b": {"*": {"c": c("star"), "d": "kept"}, "x": {"c": "kept"}},
        'say "hi"': c("quoted"),
    }
    assert out.gen_ai_tool_call_id == c("call-1")


@pytest.mark.parametrize(
    "path",
    [
        "tool.invoked:arguments..x",
        "tool.invoked:arguments.",
        'tool.invoked:arguments["x"',
        'tool.invoked:arguments["x"]y',
        "tool.invoked:arguments[x]",
        'tool.invoked:arguments["\\q"]',
    ],
)
def test_malformed_redaction_paths_are_rejected(path: str) -> None:
    with pytest.raises(RedactionPathError, match="syntax") as info:
        RedactionPolicy([path], lambda t: b"salt")
    assert isinstance(info.value, OrchestrationError)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("decision.made:values", "holds an object"),
        ("orchestration.created:parameters", "holds an object"),
        ("*:parameters", "holds an object"),
        ("step.started:attempt", "holds an integer"),
        ("orchestration.failed:reason", "holds one of"),
        ('llm.completed:["gen_ai.usage.input_tokens"]', "holds an integer or null"),
        ("llm.requested:messages", "holds an array"),
        ("step.failed:*", "holds an integer"),
        ("step.failed:retrying", "holds a boolean"),
        # Read back by a resumed run: a commitment would not decode as a kind.
        ("step.failed:kind", "holds one of"),
        ("decision.made:attempt", "holds an integer or null"),
        ("tool.invoked:argumentz.ssn", "addresses no field"),
        ("*:nope", "addresses no field"),
        ("tool.called:arguments", "unknown event type"),
        ("agent.registered:instructions", "not written through"),
    ],
)
def test_regression_a_redaction_path_that_cannot_hold_a_commitment_is_rejected(
    path: str, why: str
) -> None:
    # Replacing such a value by a string made every emit of the event fail to convert,
    # crashing the run, which then stayed "running" for ever.
    with pytest.raises(RedactionPathError, match=re.escape(why)) as info:
        RedactionPolicy([path], lambda t: b"salt")
    assert path in str(info.value)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("orchestration.created:definition.steps", "definition"),
        ("orchestration.created:definition.*", "definition"),
        ("*:definition.steps.0.id", "definition"),
        ("orchestration.created:agent_id", "agent_id"),
        ("orchestration.created:agents.*", "agents"),
        ("orchestration.created:workflow_id", "workflow_id"),
        ("orchestration.created:workflow_hash", "workflow_hash"),
        ("orchestration.created:model", "model"),
        ("step.started:agent_id", "agent_id"),
        ("step.completed:step_id", "step_id"),
        ("*:step_id", "step_id"),
        ("*:orchestration_id", "orchestration_id"),
    ],
)
def test_regression_a_redaction_path_into_what_a_resumed_run_reads_back_is_rejected(
    path: str, field: str
) -> None:
    # `orchestration.created:definition.steps` was accepted (the definition is an
    # object of any JSON): a resumed run then read a commitment as its steps, failed to
    # decode its definition and stayed "running" for ever.
    with pytest.raises(RedactionPathError, match=f"reaches '{field}'") as info:
        RedactionPolicy([path], lambda t: b"salt")
    assert path in str(info.value)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("step.completed:output", "in step.completed it replaces 'output' whole"),
        ("*:output", "in step.completed it replaces 'output' whole"),
        ("step.completed:output.skipped", "in step.completed it reaches 'output.skipped'"),
        ("step.completed:output.skipped.0", "in step.completed it reaches 'output.skipped'"),
        ("step.completed:output.branch", "in step.completed it reaches 'output.branch'"),
        ("step.completed:output.tool_calls", "in step.completed it reaches 'output.tool_calls'"),
        ("*:output.tool_calls.*.arguments", "in step.completed it reaches 'output.tool_calls'"),
        ("step.completed:output.*", "in step.completed it "),
        ("step.completed:*.skipped", "in step.completed it reaches 'output.skipped'"),
        ("decision.made:branch", "in decision.made it reaches 'branch'"),
        ("decision.made:skipped.*", "in decision.made it reaches 'skipped'"),
        ("*:skipped.0", "in decision.made it reaches 'skipped'"),
        ("tool.completed:result", "in tool.completed it replaces 'result' whole"),
        ("step.completed:output.message", "in step.completed it replaces 'output.message' whole"),
        ("*:output.message", "in step.completed it replaces 'output.message' whole"),
        ("step.completed:output.message.role", "it reaches 'output.message.role'"),
        ("*:output.*.tool_calls", "in step.completed it reaches 'output."),
        ("*:result", "in tool.completed it replaces 'result' whole"),
    ],
)
def test_regression_a_redaction_path_that_would_replace_what_a_resumed_run_reads_is_rejected(
    path: str, problem: str
) -> None:
    # `step.completed:output` was accepted (an output is any JSON): a resumed run then
    # read a decision's output as a string and skipped nothing, running a step of the
    # branch not taken, and could not read an agent loop's round back at all.
    with pytest.raises(RedactionPathError, match=re.escape(problem)) as info:
        RedactionPolicy([path], lambda t: b"salt")
    assert path in str(info.value)


def test_redaction_paths_that_can_hold_a_commitment_are_accepted() -> None:
    RedactionPolicy(
        [
            "*:input.email",
            "*:input",
            "llm.requested:messages.*.content",
            "llm.completed:message",
            "decision.made:values.*",
            "orchestration.created:parameters.secret",
            'llm.requested:["gen_ai.request.model"]',
            "step.failed:error",
            "orchestration.failed:error",
            "step.completed:output.content",
            "step.completed:output.message.content",
            "*:output.json.*",
            "step.completed:output.result",
            "tool.completed:result.ssn",
            "tool.completed:result.*",
        ],
        lambda t: b"salt",
    )


def test_regression_a_fallback_literal_nests_at_most_as_deep_as_any_outside_json() -> None:
    """JSON's decoder refuses nesting near 1,000 levels less the call stack under it: a
    fallback literal that decoded when its template was checked could raise
    RecursionError when rendered from deeper in the stack, and crash the run. Literals
    are held to MAX_JSON_NESTING, far from that."""
    deepest = "[" * MAX_JSON_NESTING + "]" * MAX_JSON_NESTING
    template = "{{ input.missing ?? " + deepest + " }}"

    def deeper(levels: int) -> Any:
        return render(template, {"input": {}}) if levels == 0 else deeper(levels - 1)

    assert deeper(700) == msgspec.json.decode(deepest)
    with pytest.raises(TemplateError, match="is not a reference or a JSON literal"):
        render("{{ input.missing ?? [" + deepest + "] }}", {"input": {}})


@pytest.mark.parametrize("as_text", [False, True])
def test_outside_json_nests_at_most_max_json_nesting(as_text: bool) -> None:
    def nested(levels: int) -> Any:
        text = "[" * levels + "]" * levels
        return text if as_text else text.encode()

    assert decode_json(nested(MAX_JSON_NESTING)) is not None
    for too_deep in (MAX_JSON_NESTING + 1, 5000):  # ours, then the decoder's own limit
        with pytest.raises(msgspec.DecodeError, match="nests more than 128 levels"):
            decode_json(nested(too_deep))


@pytest.mark.parametrize("text", [b'{"a": "\xff"}', b'"\xed\xa0\x80"', '{"a": "\udcff"}'])
def test_regression_outside_json_that_is_not_utf8_is_a_decode_error(text: bytes | str) -> None:
    # msgspec (0.22) raises UnicodeDecodeError (bytes) or UnicodeEncodeError (a str
    # holding a surrogate) for these, not DecodeError: from a model's response it
    # escaped the run. Later versions raise DecodeError themselves, in their own words.
    with pytest.raises(msgspec.DecodeError, match=r"(?i)(not valid|invalid) UTF-8"):
        decode_json(text)
