"""The openai provider against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from engine_helpers import (
    TENANT,
    FakeOpenAI,
    Harness,
    append_run,
    completion,
    scripted,
    step_started,
)

from ledger.events import parse_time
from ledger.orchestration import Engine
from ledger.orchestration import events as ev

SECRET = "sk-test-SECRET-0123456789abcdef"


async def _engine(harness: Harness) -> Engine:
    return await harness.open(env={"MAIP_TEST_KEY": SECRET})


async def _agent(engine: Engine, server: FakeOpenAI, **provider: Any) -> str:
    config = {"kind": "openai", "base_url": server.url, "api_key_env": "MAIP_TEST_KEY", **provider}
    rec = await engine.register_agent(
        TENANT, name="gpt", provider=config, model="m1", tools=["calculator"]
    )
    return rec.agent_id


async def _events(harness: Harness, oid: str) -> list[Any]:
    assert harness.log is not None
    return [r.event for r in await harness.log.read_stream(TENANT, oid)]


async def test_plain_completion(harness: Harness, fake_openai: FakeOpenAI) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [completion("Paris")]
    started = await engine.execute(TENANT, agent_id=agent, input="Capital of France?")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed"
    assert state.results == {"content": "Paris", "json": None}
    assert fake_openai.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert fake_openai.requests[0]["model"] == "m1"
    assert fake_openai.requests[0]["messages"][-1] == {
        "role": "user",
        "content": "Capital of France?",
    }
    events = await _events(harness, started.orchestration_id)
    done = next(e.payload for e in events if e.type == "llm.completed")
    assert done.gen_ai_usage_input_tokens == 11
    assert done.gen_ai_usage_output_tokens == 7
    assert done.gen_ai_response_finish_reasons == ("stop",)
    assert done.gen_ai_response_model == "m1"
    assert done.latency_ms >= 0


async def test_multi_round_tool_calls(harness: Harness, fake_openai: FakeOpenAI) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [
        completion(None, [{"name": "calculator", "args": {"expression": "6*7"}}]),
        completion(None, [{"name": "calculator", "args": {"expression": "42+1"}}]),
        completion("The answer is 43"),
    ]
    started = await engine.execute(TENANT, agent_id=agent, input="compute")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert state.results["content"] == "The answer is 43"
    assert [s.step_id for s in state.steps] == ["llm-1", "tool-1-1", "llm-2", "tool-2-1", "llm-3"]
    assert state.step("tool-1-1").result == 42  # type: ignore[union-attr]
    # The tool result was fed back to the model with its call id.
    second = fake_openai.requests[1]["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "42"}
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert fake_openai.requests[0]["tools"][0]["function"]["name"] == "calculator"
    types = [e.type for e in await _events(harness, started.orchestration_id)]
    assert types.count("tool.invoked") == 2
    assert types.count("tool.completed") == 2


async def test_429_then_success_is_retried(harness: Harness, fake_openai: FakeOpenAI) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [429, completion("ok")]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed"
    assert state.steps[0].attempts == 2
    failed = [
        e.payload
        for e in await _events(harness, started.orchestration_id)
        if e.type == "step.failed"
    ]
    assert [(f.attempt, f.retrying) for f in failed] == [(1, True)]
    assert "429" in failed[0].error


async def test_429_500_timeout_retried_then_failed(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai, timeout_seconds=0.3)
    fake_openai.script = [429, 500, ("sleep", 2.0)]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.reason == "provider_error"
    assert state.steps[0].status == "failed"
    assert state.steps[0].attempts == 3
    events = await _events(harness, started.orchestration_id)
    failed = [e.payload for e in events if e.type == "step.failed"]
    assert [(f.attempt, f.retrying) for f in failed] == [(1, True), (2, True), (3, False)]
    assert "429" in failed[0].error
    assert "500" in failed[1].error
    assert "timed out" in failed[2].error
    llm_errors = [e.payload.error for e in events if e.type == "llm.completed"]
    assert all(llm_errors)
    assert len(llm_errors) == 3
    assert len(fake_openai.requests) == 3


async def test_malformed_responses_give_clear_step_error(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    cases = [
        (("raw", b"<html>not json"), "body is not JSON"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"message": {"role": "assistant"}}]}, "neither content nor tool_calls"),
        (
            {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "c",
                                    "function": {"name": "calculator", "arguments": "{oops"},
                                }
                            ],
                        }
                    }
                ]
            },
            "arguments is not JSON",
        ),
    ]
    for reply, message in cases:
        fake_openai.script = [reply]
        started = await engine.execute(TENANT, agent_id=agent, input="x")
        state = await engine.wait(TENANT, started.orchestration_id)
        assert state.status == "failed"
        step = state.steps[0]
        assert step.attempts == 1  # not transient: no retry
        assert "malformed provider response" in step.result["error"]
        assert message in step.result["error"]


DEEP = 10_000  # nesting msgspec refuses with RecursionError, not DecodeError


async def test_regression_json_msgspec_refuses_without_a_decode_error_fails_the_call(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A response nested deeper than the decoder goes (well within the size cap) raised
    RecursionError, which no handler took for a provider failure: the run crashed,
    stayed "running", and crashed again at every start."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    deep_arguments = completion(None, [{"name": "calculator", "args": {}}])
    deep_arguments["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = (
        "[" * DEEP + "]" * DEEP
    )
    cases = [
        (("raw", b'{"choices": ' + b"[" * DEEP + b"]" * DEEP + b"}"), "body is not JSON"),
        (deep_arguments, "arguments is not JSON"),
        # Not nesting, but the same escape: msgspec raises UnicodeDecodeError, not
        # DecodeError, for a string that is not UTF-8.
        (
            ("raw", b'{"choices": [{"message": {"role": "assistant", "content": "\xff"}}]}'),
            "body is not JSON",
        ),
    ]
    for reply, message in cases:
        fake_openai.script = [reply]
        started = await engine.execute(TENANT, agent_id=agent, input="x")
        state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
        assert state.status == "failed", state
        assert message in state.steps[0].result["error"]
    # Content that is deeply nested JSON text is an answer; it is just not usable as
    # JSON (its "json" is null), as any content that does not parse.
    fake_openai.script = [completion("[" * DEEP + "]" * DEEP)]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert state.status == "completed", (state.reason, state.steps)
    assert state.results["json"] is None


async def test_api_key_never_in_database_or_logs(
    harness: Harness, fake_openai: FakeOpenAI, capsys: Any
) -> None:
    with structlog.testing.capture_logs() as logs:
        engine = await _engine(harness)
        agent = await _agent(engine, fake_openai)
        fake_openai.script = [
            completion(None, [{"name": "calculator", "args": {"expression": "1+1"}}]),
            401,
        ]
        started = await engine.execute(TENANT, agent_id=agent, input="x")
        await engine.wait(TENANT, started.orchestration_id)
        await harness.close()
    assert fake_openai.headers[0]["Authorization"].endswith(SECRET)  # it was really used
    blob = b""
    for name in os.listdir(harness.path.parent):
        with open(harness.path.parent / name, "rb") as f:
            blob += f.read()
    assert len(blob) > 0
    assert SECRET.encode() not in blob
    assert b"MAIP_TEST_KEY" in blob  # the env var *name* is recorded, the value never
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in repr(logs)


async def test_regression_unexpected_provider_error_fails_the_step_not_the_run(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """An error the provider does not translate (here aiohttp's RuntimeError for a closed
    session) used to crash the run task and leave the orchestration "running" for ever,
    and crash again at every restart. It is a failed step now, recorded with its type."""
    session = aiohttp.ClientSession()
    await session.close()
    with structlog.testing.capture_logs() as logs:
        engine = await harness.open(env={"MAIP_TEST_KEY": SECRET}, session=session)
        agent = await _agent(engine, fake_openai)
        started = await engine.execute(TENANT, agent_id=agent, input="x")
        state = await engine.wait(TENANT, started.orchestration_id, max_wait=10)
    assert state.status == "failed", state
    assert state.reason == "provider_error"
    (step,) = state.steps
    assert step.status == "failed"
    events = await _events(harness, started.orchestration_id)
    done = next(e.payload for e in events if e.type == "llm.completed")
    assert done.error is not None
    assert done.error.startswith("internal error: RuntimeError")
    assert not done.transient  # a bug is not retried as if the network had blinked
    assert fake_openai.requests == []
    assert any(entry["event"] == "provider.internal_error" for entry in logs)
    assert SECRET not in repr(logs)


async def test_regression_a_finish_reason_the_provider_did_not_give_is_not_recorded(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A response without ``finish_reason`` was recorded as if the model had said
    ``stop`` (or ``tool_calls``): ``gen_ai.response.finish_reasons`` holds what the
    model reported, and an auditor could not tell a reported reason from a guessed one."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    reply = completion("Paris")
    del reply["choices"][0]["finish_reason"]
    fake_openai.script = [reply, completion("Rome")]
    outputs = []
    for question in ("Capital of France?", "Capital of Italy?"):
        started = await engine.execute(TENANT, agent_id=agent, input=question)
        state = await engine.wait(TENANT, started.orchestration_id)
        assert state.status == "completed"
        outputs.append(state.steps[0].result)
        events = await _events(harness, started.orchestration_id)
        done = next(e.payload for e in events if e.type == "llm.completed")
        outputs.append(done.gen_ai_response_finish_reasons)
    assert [outputs[0]["finish_reason"], outputs[1]] == [None, ()]
    assert [outputs[2]["finish_reason"], outputs[3]] == ["stop", ("stop",)]


def _recorder() -> tuple[list[float], Any]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


RATE_LIMITED = b'{"error": {"message": "Rate limit reached", "type": "requests"}}'


@pytest.mark.parametrize(
    "case",
    [
        (429, {"Retry-After": "7"}, [7.0], "retry after 7s"),
        # An HTTP-date counts from the server's own Date, so no clock skew enters.
        (
            503,
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:20 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            [20.0],
            "retry after 20s",
        ),
        (429, {"retry-after-ms": "2500", "Retry-After": "3"}, [2.5], "retry after 2.5s"),
        (429, {"Retry-After": "86400"}, [60.0], "retry after 60s"),  # capped
        # Less than the step's own backoff (0.5 s): the backoff is the wait.
        (429, {"Retry-After": "0"}, [0.5], None),
        (429, {"Retry-After": "soon"}, [0.5], None),  # unusable: ignored
    ],
)
async def test_regression_retry_after_is_the_least_wait_before_the_retry(
    harness: Harness,
    fake_openai: FakeOpenAI,
    case: tuple[int, dict[str, str], list[float], str | None],
) -> None:
    """A 429 or 503 saying how long to wait (Retry-After, in seconds or as an HTTP-date;
    OpenAI's retry-after-ms) was retried after the step's own backoff only (0.5 s),
    asking the server again while it had said it would refuse."""
    status, headers, waits, note = case
    slept, sleep = _recorder()
    engine = await harness.open(env={"MAIP_TEST_KEY": SECRET}, sleep=sleep)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [("status", status, RATE_LIMITED, headers), completion("ok")]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert slept == waits
    events = await _events(harness, started.orchestration_id)
    (failed,) = [e.payload for e in events if e.type == "step.failed"]
    llm_error = next(e.payload.error for e in events if e.type == "llm.completed")
    assert failed.error == llm_error
    assert failed.error.startswith(f"provider returned HTTP {status}")
    if note is None:
        assert "retry after" not in failed.error
    else:
        assert note in failed.error


async def test_regression_a_run_resumed_during_a_retry_after_wait_waits_out_the_rest(
    harness: Harness,
) -> None:
    """The wait the server asked for is recorded in the step.failed, so a run resumed
    during it waits what remains of it, not of the step's shorter backoff."""
    engine = await harness.open()
    assert harness.log is not None
    bot = await engine.register_agent(TENANT, name="bot", provider=scripted())
    steps = [{"id": "a", "action": "llm", "agent": bot.agent_id, "prompt": "hi"}]
    error = "provider returned HTTP 429 (retry after 20s): Rate limit reached"

    def history(oid: str) -> list[tuple[str, Any]]:
        failed = ev.StepFailed(
            orchestration_id=oid, step_id="a", attempt=1, error=error, retrying=True
        )
        return [step_started(oid, "a"), (ev.STEP_FAILED, failed)]

    oid = await append_run(engine, harness.log, {"steps": steps}, history, agents=[bot.agent_id])
    recorded = await harness.log.read_stream(TENANT, oid)
    failed_at = parse_time(recorded[-1].event.occurred_at)
    await harness.close()
    slept, sleep = _recorder()
    later = failed_at + timedelta(seconds=5)
    engine = await harness.open(now=lambda: later, sleep=sleep)
    state = await asyncio.wait_for(engine.wait(TENANT, oid), 10)
    assert (state.status, state.steps[0].attempts) == ("completed", 2), state
    assert slept == [15.0]


NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n" + b"<!-- a padding to defeat IE -->\r\n" * 20
)
LONG = "This model's maximum context length is 4096 tokens. " * 3 + "Please reduce it."


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        # OpenAI's (and LiteLLM's, Ollama's, llama.cpp's) shape, on a transient status.
        (
            (
                "status",
                500,
                b'{"error": {"message": "CUDA out of memory", "type": "server_error",'
                b' "code": null}}',
            ),
            "provider returned HTTP 500: CUDA out of memory (type server_error)",
        ),
        # A message longer than the raw snippet's 200 characters of JSON syntax.
        (
            (
                "status",
                400,
                msgspec.json.encode(
                    {
                        "error": {
                            "message": LONG,
                            "type": "invalid_request_error",
                            "param": "messages",
                            "code": "context_length_exceeded",
                        }
                    }
                ),
            ),
            f"provider returned HTTP 400: {LONG} (type invalid_request_error,"
            " code context_length_exceeded)",
        ),
        # vLLM's shape.
        (
            (
                "status",
                404,
                b'{"object": "error", "message": "The model `m1` does not exist.",'
                b' "type": "NotFoundError", "param": null, "code": 404}',
            ),
            "provider returned HTTP 404: The model `m1` does not exist."
            " (type NotFoundError, code 404)",
        ),
        # A proxy's HTML page: its text, not its markup.
        (
            ("status", 502, NGINX_502, {"Content-Type": "text/html"}),
            "provider returned HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx",
        ),
        # A debugging proxy that echoes the request's headers: never the key.
        (
            ("status", 503, f"upstream down; request had Authorization: Bearer {SECRET}".encode()),
            "provider returned HTTP 503: upstream down; request had Authorization: Bearer"
            " [redacted]",
        ),
    ],
)
async def test_regression_error_bodies_give_their_message(
    harness: Harness, fake_openai: FakeOpenAI, reply: Any, error: str
) -> None:
    """A 429 or 5xx was recorded as "provider returned HTTP 500" only, dropping the
    server's reason; any other status as the first 200 characters of its raw body, which
    for OpenAI's error shape is mostly JSON syntax and cut the message short, and for a
    proxy's HTML page mostly markup."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [reply] * 3
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    events = await _events(harness, started.orchestration_id)
    failed = next(e.payload for e in events if e.type == "step.failed")
    assert failed.error == error
    assert SECRET not in repr(events)


@pytest.mark.parametrize(
    ("body", "error", "attempts"),
    [
        # A proxy (OpenRouter, a LiteLLM router) that passes an upstream failure on in a
        # 200: its code says it is worth retrying.
        (
            {"error": {"message": "upstream connect error", "type": "server_error", "code": 502}},
            "provider returned an error with HTTP 200: upstream connect error"
            " (type server_error, code 502)",
            3,
        ),
        (
            {"error": {"message": "Rate limit exceeded", "code": "429"}},
            "provider returned an error with HTTP 200: Rate limit exceeded (code 429)",
            3,
        ),
        (
            {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}},
            "provider returned an error with HTTP 200: Incorrect API key (code invalid_api_key)",
            1,
        ),
    ],
)
async def test_regression_an_error_body_in_a_200_is_the_provider_s_error(
    harness: Harness, fake_openai: FakeOpenAI, body: Any, error: str, attempts: int
) -> None:
    """An error body sent with status 200 was recorded as "malformed provider response:
    no choices", the server's reason dropped, and never retried."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [body] * 3
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.steps[0].attempts == attempts
    events = await _events(harness, started.orchestration_id)
    failed = next(e.payload for e in events if e.type == "step.failed")
    assert failed.error == error


def _tool_call_with(arguments: Any) -> dict[str, Any]:
    reply = completion(None, [{"name": "calculator", "args": {}}])
    reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    return reply


@pytest.mark.parametrize(
    ("arguments", "recorded"),
    [
        ("", {}),  # a function without parameters, as some servers send it
        (None, {}),
        ("{}", {}),
        ({"expression": "1+2"}, {"expression": "1+2"}),  # an object, not JSON text
        ('{"expression": "1+2"}', {"expression": "1+2"}),
    ],
)
async def test_regression_empty_tool_call_arguments_are_no_arguments(
    harness: Harness, fake_openai: FakeOpenAI, arguments: Any, recorded: Any
) -> None:
    """A tool call whose arguments were the empty string (or null) failed the step as
    "arguments is not JSON" (or called the tool with null): servers send a call of a
    function without parameters so."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    fake_openai.script = [_tool_call_with(arguments), completion("done")]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    events = await _events(harness, started.orchestration_id)
    invoked = next(e.payload for e in events if e.type == "tool.invoked")
    assert invoked.arguments == recorded
    # Fed back to the model as OpenAI's JSON text, whatever the server sent.
    fed_back = fake_openai.requests[1]["messages"][-2]["tool_calls"][0]["function"]
    assert msgspec.json.decode(fed_back["arguments"]) == recorded


@pytest.mark.parametrize("finish_reason", ["content_filter", "length"])
async def test_regression_a_reply_stopped_without_content_names_its_finish_reason(
    harness: Harness, fake_openai: FakeOpenAI, finish_reason: str
) -> None:
    """A reply with no content because the model was stopped (Azure's content filter; a
    reasoning model out of tokens) was recorded as a malformed response ("neither
    content nor tool_calls"), as if the server had broken the protocol."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    reply = completion(None)
    reply["choices"][0]["finish_reason"] = finish_reason
    fake_openai.script = [reply]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.steps[0].attempts == 1
    error = state.steps[0].result["error"]
    assert "malformed" not in error
    assert error == f"the model stopped without content (finish_reason {finish_reason!r})"


async def test_regression_content_sent_as_text_parts_is_their_text(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """Content as a list of parts (``[{"type": "text", "text": ...}]``, as some
    OpenAI-compatible servers send it) was called malformed and failed the step."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    reply = completion(None)
    reply["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "Par"},
        {"type": "output_text", "text": "is"},
    ]
    not_text = completion(None)
    not_text["choices"][0]["message"]["content"] = [{"type": "image_url", "image_url": {}}]
    fake_openai.script = [reply, not_text]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.results["content"]) == ("completed", "Paris")
    started = await engine.execute(TENANT, agent_id=agent, input="y")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert "content[0] is not a text part" in state.steps[0].result["error"]


async def test_regression_a_structured_refusal_is_recorded_as_the_models_refusal(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """OpenAI's ``refusal`` (content null, the model declining) was recorded as a model
    stopped without content, the refusal's own words lost."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    reply = completion(None)
    reply["choices"][0]["message"]["refusal"] = "I can't help with that."
    fake_openai.script = [reply]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.steps[0].attempts == 1
    assert state.steps[0].result["error"] == "the model refused: I can't help with that."


async def test_gzip_responses_are_read_and_capped_decompressed(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai, max_response_bytes=64 * 1024)
    fake_openai.script = [("gzip", msgspec.json.encode(completion("zipped")))]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.results["content"]) == ("completed", "zipped")
    # Small on the wire, past the cap once decompressed.
    fake_openai.script = [("gzip", msgspec.json.encode(completion("z" * 200_000)))]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.steps[0].result["error"] == "provider response is too large"


async def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    elsewhere = FakeOpenAI()
    await elsewhere.start()
    try:
        engine = await _engine(harness)
        agent = await _agent(engine, fake_openai)
        target = elsewhere.url + "/chat/completions"
        fake_openai.script = [("status", code, b"", {"Location": target}) for code in (307, 308)]
        for code in (307, 308):
            started = await engine.execute(TENANT, agent_id=agent, input="x")
            state = await engine.wait(TENANT, started.orchestration_id)
            assert state.status == "failed"
            assert state.steps[0].attempts == 1
            assert state.steps[0].result["error"] == f"provider returned HTTP {code}"
        assert elsewhere.requests == []
    finally:
        await elsewhere.stop()


async def test_what_servers_vary_is_recorded_as_sent(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """The model a server names (an alias resolved), a missing usage, several choices
    (the first is the answer) and a truncated answer (finish_reason length)."""
    engine = await _engine(harness)
    agent = await _agent(engine, fake_openai)
    reply = completion("first", model="m1-2024-08-06")
    del reply["usage"]
    second = {**reply["choices"][0], "index": 1, "message": {"role": "assistant", "content": "2"}}
    reply["choices"].append(second)
    reply["choices"][0]["finish_reason"] = "length"
    fake_openai.script = [reply]
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert (state.status, state.results["content"]) == ("completed", "first")
    events = await _events(harness, started.orchestration_id)
    requested = next(e.payload for e in events if e.type == "llm.requested")
    done = next(e.payload for e in events if e.type == "llm.completed")
    assert requested.gen_ai_request_model == "m1"
    assert done.gen_ai_response_model == "m1-2024-08-06"
    assert done.gen_ai_response_finish_reasons == ("length",)
    assert (done.gen_ai_usage_input_tokens, done.gen_ai_usage_output_tokens) == (None, None)


async def test_regression_a_key_read_with_a_trailing_newline_is_used_without_it(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A key read from a secret file ends in a newline: aiohttp refused the header
    ("Forbidden control character"), and every call failed as an "internal error"."""
    engine = await harness.open(env={"MAIP_TEST_KEY": f" {SECRET}\n"})
    agent = await _agent(engine, fake_openai)
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "completed", state
    assert fake_openai.headers[0]["Authorization"] == f"Bearer {SECRET}"
    # A control character inside it is the operator's mistake, said as such.
    await harness.close()
    engine = await harness.open(env={"MAIP_TEST_KEY": "sk-a\nb"})
    started = await engine.execute(TENANT, agent_id=agent, input="x")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    assert state.steps[0].attempts == 1
    error = state.steps[0].result["error"]
    assert error == "the API key in MAIP_TEST_KEY holds a control character"
