"""The calls an interrupted ``llm`` step attempt completed, reused when it resumes.

An ``llm`` step is a loop of model calls and the tool calls the model asks for, all in
one attempt (``specs/workflows.md`` §2.1). If the process stops mid-loop, the calls the
attempt completed are in the log: each ``llm.requested`` with its ``llm.completed``,
each ``tool.invoked`` with its ``tool.completed``. As Temporal replays an activity's
recorded result instead of running it again, a resumed run continues that attempt and
answers each call it makes again from this journal, in order, without calling the
provider or the tool: a paid model call is not paid twice, and a tool's effect does not
happen twice. The journal is used up call by call; the calls after it are made live.

A call is answered from the journal only if it is the call the record says was made:
the same model, messages, tools and parameters, or the same tool, call id and
arguments. Anything else means the run no longer retraces its history (an agent
changed, say), and :class:`CallsDiverged` ends the attempt, which is then retried from
the start, as an attempt interrupted without a journal always was.

Pure functions over recorded payloads; the runner keeps one journal per attempt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

from ledger.orchestration import events as ev
from ledger.orchestration._json import decode_json
from ledger.orchestration.providers.base import LLMRequest, LLMResponse, ToolCall

__all__ = ["CallJournal", "CallsDiverged", "response_of"]

_CANONICAL = msgspec.json.Encoder(order="sorted")

_Request = ev.LLMRequested | ev.ToolInvoked
_Completion = ev.LLMCompleted | ev.ToolCompleted


class CallsDiverged(Exception):  # noqa: N818 — control flow: never escapes the runner
    """A resumed attempt made a call other than the one its history records next."""


def _same(a: Any, b: Any) -> bool:
    try:
        return _CANONICAL.encode(a) == _CANONICAL.encode(b)
    except (TypeError, ValueError, OverflowError):
        return False


def _pairs(calls: Iterable[Any]) -> list[tuple[_Request, _Completion]]:
    """Each completed call as (request, completion), in order. A request with no
    completion (in flight when the process stopped) is left out: the resumed attempt
    makes that call again, live."""
    pairs: list[tuple[_Request, _Completion]] = []
    pending: _Request | None = None
    for p in calls:
        if isinstance(p, ev.LLMRequested | ev.ToolInvoked):
            pending = p
        elif pending is not None and _completes(p, pending):
            pairs.append((pending, p))
            pending = None
    return pairs


def _completes(p: Any, pending: _Request) -> bool:
    if isinstance(pending, ev.LLMRequested):
        return isinstance(p, ev.LLMCompleted)
    return (
        isinstance(p, ev.ToolCompleted)
        and p.gen_ai_tool_call_id == pending.gen_ai_tool_call_id
        and p.gen_ai_tool_name == pending.gen_ai_tool_name
    )


def response_of(done: ev.LLMCompleted) -> LLMResponse:
    """The provider's response as the live run had it, from its ``llm.completed``
    (providers record ``assistant_message`` of the response as ``message``)."""
    message = done.message
    try:
        calls = tuple(
            ToolCall(
                id=c["id"],
                name=c["function"]["name"],
                arguments=decode_json(c["function"]["arguments"]),
            )
            for c in message.get("tool_calls") or ()
        )
        content = message.get("content")
    except (AttributeError, KeyError, TypeError, msgspec.DecodeError) as e:
        raise CallsDiverged(f"the recorded response cannot be read back: {e!r}") from None
    if content is not None and not isinstance(content, str):
        raise CallsDiverged("the recorded response's content is not text")
    reasons = done.gen_ai_response_finish_reasons
    return LLMResponse(
        message=message,
        content=content,
        tool_calls=calls,
        finish_reason=reasons[0] if reasons else None,
        input_tokens=done.gen_ai_usage_input_tokens,
        output_tokens=done.gen_ai_usage_output_tokens,
        response_id=done.gen_ai_response_id,
        response_model=done.gen_ai_response_model,
    )


class CallJournal:
    """The completed calls of one interrupted attempt, answered in order."""

    __slots__ = ("_pairs",)

    def __init__(self, calls: Iterable[Any]) -> None:
        self._pairs = deque(_pairs(calls))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def llm(self, request: LLMRequest) -> ev.LLMCompleted:
        """The recorded outcome of ``request``, which must be the next recorded call."""
        asked, done = self._next("a model call")
        if not (
            isinstance(asked, ev.LLMRequested)
            and isinstance(done, ev.LLMCompleted)
            and asked.gen_ai_request_model == request.model
            and _same(asked.messages, request.messages)
            and _same(asked.tools, request.tools)
            and _same(asked.parameters, request.parameters)
        ):
            raise self._diverged("a model call", asked)
        return done

    def tool(self, name: str, call_id: str | None, arguments: Any) -> ev.ToolCompleted:
        """The recorded outcome of this tool call, which must be the next recorded call."""
        asked, done = self._next(f"a call of tool {name!r}")
        if not (
            isinstance(asked, ev.ToolInvoked)
            and isinstance(done, ev.ToolCompleted)
            and asked.gen_ai_tool_name == name
            and asked.gen_ai_tool_call_id == call_id
            and _same(asked.arguments, arguments)
        ):
            raise self._diverged(f"a call of tool {name!r}", asked)
        return done

    def _next(self, what: str) -> tuple[_Request, _Completion]:
        if not self._pairs:  # the runner stops asking once the journal is used up
            raise CallsDiverged(f"the resumed attempt made {what} its history does not hold")
        return self._pairs.popleft()

    def _diverged(self, what: str, recorded: _Request) -> CallsDiverged:
        self._pairs.clear()
        if isinstance(recorded, ev.LLMRequested):
            then = "a model call"
        else:
            then = f"a call of tool {recorded.gen_ai_tool_name!r}"
        return CallsDiverged(
            f"the resumed attempt made {what} where its history records {then} with other "
            "inputs, so it cannot reuse the recorded calls"
        )
