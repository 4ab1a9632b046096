"""Recording LLM and tool calls: ``llm.requested``/``llm.completed`` and
``tool.invoked``/``tool.completed``, with write-ahead flushes around outside effects.

:class:`CallRecorder` is one per :class:`~ledger.orchestration.runner.Runner`, shared by
the parts of the run that record calls; it holds what every recorded call needs (the
stream writer, the orchestration's ``orchestration.created`` payload and the injected
collaborators).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

import msgspec
import structlog

from ledger.errors import InvalidEventError
from ledger.orchestration import events as ev
from ledger.orchestration._json import MAX_JSON_NESTING, decode_json
from ledger.orchestration.errors import ProviderError, ToolError
from ledger.orchestration.journal import CallJournal, response_of
from ledger.orchestration.providers.base import LLMRequest, LLMResponse, Provider
from ledger.orchestration.registry import AgentRecord
from ledger.orchestration.stream import StreamWriter
from ledger.orchestration.tools import Tool, ToolRegistry

__all__ = ["MAX_ERROR_CHARS", "CallRecorder", "Collaborators", "as_text", "bounded", "const"]

#: Recorded error texts are cut to this length: an exception's message is anyone's (a
#: tool's, a server's), and an event that holds it must still fit in a leaf.
MAX_ERROR_CHARS: Final = 4000

_P = TypeVar("_P", bound=msgspec.Struct)

_log = structlog.get_logger()


@dataclass
class Collaborators:
    tools: ToolRegistry
    provider_for: Callable[[AgentRecord], Provider]
    now: Callable[[], datetime]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    agents: Mapping[str, AgentRecord] = field(default_factory=dict)


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return decode_json(text)
    except msgspec.DecodeError:
        return None


def bounded(error: str) -> str:
    if len(error) <= MAX_ERROR_CHARS:
        return error
    return f"{error[:MAX_ERROR_CHARS]}… ({len(error) - MAX_ERROR_CHARS} more characters)"


def _check_json(result: Any) -> None:
    """Raise :class:`ToolError` if ``result`` holds inf or nan, which JSON cannot hold
    (they would be stored as null, and the run would go on with a value no replay sees),
    or nests deeper than any JSON from outside may (``_json.py``)."""
    stack = [(result, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError(f"the result holds {value}, which is not a JSON number")
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth >= MAX_JSON_NESTING:
            raise ToolError(f"the result nests more than {MAX_JSON_NESTING} levels deep")
        stack.extend((child, depth + 1) for child in children)


def const(value: Any) -> Callable[[], Any]:
    return lambda: value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


class CallRecorder:
    def __init__(
        self, writer: StreamWriter, created: ev.OrchestrationCreated, deps: Collaborators
    ) -> None:
        self.writer = writer
        self.created = created
        self.oid = created.orchestration_id
        self.deps = deps
        #: Each (step id, attempt)'s recorded tool call, until :meth:`recorded_call`.
        self._calls: dict[tuple[str, int], ev.ToolCompleted] = {}
        #: The calls a resumed attempt completed before the process stopped, answered
        #: from the log instead of made again (``ledger/orchestration/journal.py``).
        self.journals: dict[tuple[str, int], CallJournal] = {}
        #: Each (step id, attempt)'s recorded request whose outcome is not recorded yet:
        #: (tool name, or ``None`` for a model call; tool call id; start), so a step
        #: timeout that cuts the call off can record its outcome (:meth:`cut_off`).
        self._open: dict[tuple[str, int], tuple[str | None, str | None, float]] = {}
        #: Each (step id, attempt)'s model call whose outcome (a response, or the error
        #: raised) is recorded and being made durable, for :meth:`recorded_reply`.
        self._replies: dict[tuple[str, int], LLMResponse | ProviderError] = {}

    def _journal(self, step_id: str, attempt: int) -> CallJournal | None:
        journal = self.journals.get((step_id, attempt))
        if journal is None:
            return None
        if not journal:
            del self.journals[step_id, attempt]
            return None
        return journal

    def emit(self, event_type: str, payload: _P, *, normalize: bool = False) -> _P:
        return self.writer.emit(event_type, payload, normalize=normalize)

    def agent(self, agent_id: str | None) -> AgentRecord:
        agent = self.deps.agents.get(agent_id) if agent_id else None
        if agent is None:
            raise ProviderError(f"agent {agent_id!r} is not registered", transient=False)
        return agent

    async def llm_call(
        self, step_id: str, attempt: int, agent: AgentRecord, messages: list[dict[str, Any]]
    ) -> LLMResponse:
        provider = self.deps.provider_for(agent)
        model = self.created.model or agent.model
        schemas = tuple(self.deps.tools.get(n).schema() for n in agent.tools)
        request = LLMRequest(model=model, messages=tuple(messages), tools=schemas)
        journal = self._journal(step_id, attempt)
        if journal is not None:
            done = journal.llm(request)
            if done.error is not None:
                raise ProviderError(done.error, transient=done.transient)
            return response_of(done)
        self.emit(
            ev.LLM_REQUESTED,
            ev.LLMRequested(
                orchestration_id=self.oid,
                step_id=step_id,
                attempt=attempt,
                gen_ai_operation_name="chat",
                gen_ai_provider_name=provider.name,
                gen_ai_request_model=model,
                messages=request.messages,
                tools=schemas,
                parameters=request.parameters,
            ),
        )
        self._open[step_id, attempt] = (None, None, time.monotonic())
        if not provider.deterministic:
            await self.writer.flush()
        started = time.monotonic()
        try:
            response = await provider.complete(request, time_limit=self.created.timeout_seconds)
        except ProviderError as e:
            failure = e
        except Exception as e:  # noqa: BLE001 — a provider's own bug must end the step, not the run
            # Untranslated, it would crash the run task and leave the orchestration
            # running for ever, crashing again at every restart. Not transient: a retry
            # would meet the same bug.
            _log.exception("provider.internal_error", provider=provider.name)
            failure = ProviderError(
                bounded(f"internal error: {type(e).__name__}: {e}"), transient=False
            )
        else:
            del self._open[step_id, attempt]
            try:
                self._llm_completed(step_id, attempt, response, started, None)
            except InvalidEventError as e:
                failure = ProviderError(f"the response cannot be recorded: {e}", transient=False)
            else:
                if not provider.deterministic:
                    await self._durable(step_id, attempt, response)
                return response
        self._open.pop((step_id, attempt), None)
        self._llm_completed(
            step_id, attempt, None, started, str(failure), transient=failure.transient
        )
        # A failed call may still have been paid for: its record is made durable before
        # the run goes on, as a successful one's is.
        if not provider.deterministic:
            await self._durable(step_id, attempt, failure)
        raise failure

    async def _durable(
        self, step_id: str, attempt: int, outcome: LLMResponse | ProviderError
    ) -> None:
        """Flush a paid model call's ``llm.completed``. A step timeout may fire during
        the flush: the outcome is kept meanwhile, so the step can end with it
        (:meth:`recorded_reply`) rather than pay for the call again."""
        self._replies[step_id, attempt] = outcome
        await self.writer.flush()
        del self._replies[step_id, attempt]

    def recorded_reply(self, step_id: str, attempt: int) -> LLMResponse | ProviderError | None:
        """The outcome of the attempt's model call whose ``llm.completed`` was being made
        durable when the step was cut off, if any; forgotten once read."""
        return self._replies.pop((step_id, attempt), None)

    def _llm_completed(
        self,
        step_id: str,
        attempt: int,
        r: LLMResponse | None,
        started: float,
        error: str | None,
        *,
        transient: bool = False,
    ) -> None:
        self.emit(
            ev.LLM_COMPLETED,
            ev.LLMCompleted(
                orchestration_id=self.oid,
                step_id=step_id,
                attempt=attempt,
                gen_ai_response_model=r.response_model if r else None,
                gen_ai_response_id=r.response_id if r else None,
                gen_ai_response_finish_reasons=(r.finish_reason,)
                if r and r.finish_reason is not None
                else (),
                gen_ai_usage_input_tokens=r.input_tokens if r else None,
                gen_ai_usage_output_tokens=r.output_tokens if r else None,
                message=r.message if r else None,
                latency_ms=round((time.monotonic() - started) * 1000, 3),
                error=bounded(error) if error is not None else None,
                transient=transient,
            ),
        )

    async def tool_call(
        self,
        step_id: str,
        attempt: int,
        name: str,
        call_id: str | None,
        arguments: Any,
        *,
        granted: tuple[str, ...] | None = None,
    ) -> Any:
        """Invoke a tool, recording invocation and result; raises :class:`ToolError`.

        ``granted``: for a call a model asked for, the tools its agent was given. Any
        other tool is refused like an unknown one (recorded, never called): the model's
        output is not trusted to pick from everything the process has registered.
        """
        journal = self._journal(step_id, attempt)
        if journal is not None:
            done = journal.tool(name, call_id, arguments)
            if done.error is not None:
                raise ToolError(done.error, transient=done.transient)
            return done.result
        self.emit(
            ev.TOOL_INVOKED,
            ev.ToolInvoked(
                orchestration_id=self.oid,
                step_id=step_id,
                attempt=attempt,
                gen_ai_tool_name=name,
                gen_ai_tool_call_id=call_id,
                arguments=arguments,
            ),
        )
        started = time.monotonic()
        self._open[step_id, attempt] = (name, call_id, started)
        pure = True  # an unknown or ungranted tool is never called
        try:
            tool = self._tool(name, granted)
            pure = tool.pure
            if not pure:
                await self.writer.flush()
            result = await tool.fn(arguments)
            _check_json(result)
        except ToolError as e:
            error, transient = bounded(str(e)), e.transient
        except Exception as e:  # noqa: BLE001 — user tool code may raise anything: record it
            error, transient = bounded(f"{type(e).__name__}: {e}"), False
        else:
            del self._open[step_id, attempt]
            try:
                done = self._tool_completed(step_id, attempt, name, call_id, result, None, started)
            except InvalidEventError as e:  # not JSON, or too large for a leaf
                error, transient = bounded(f"the result cannot be recorded: {e}"), False
            else:
                await self._after_call(step_id, attempt, done, pure=pure)
                # As recorded, so the run goes on with what a replay or a resumed run reads.
                return done.result
        self._open.pop((step_id, attempt), None)
        done = self._tool_completed(
            step_id, attempt, name, call_id, None, error, started, transient=transient
        )
        await self._after_call(step_id, attempt, done, pure=pure)
        raise ToolError(error, transient=transient)

    def _tool(self, name: str, granted: tuple[str, ...] | None) -> Tool:
        if granted is not None and name not in granted:
            raise ToolError(f"tool {name!r} is not one of this agent's tools")
        return self.deps.tools.get(name)

    async def _after_call(
        self, step_id: str, attempt: int, done: ev.ToolCompleted, *, pure: bool
    ) -> None:
        """Make a non-pure call's outcome durable before anything else runs: its effect
        happened, and a crash must find it recorded (a resumed run then decides from
        the record rather than calling again). The outcome is also kept for
        :meth:`recorded_call`, as a step timeout may fire during this flush."""
        self._calls[step_id, attempt] = done
        if not pure:
            await self.writer.flush()

    def cut_off(self, step_id: str, attempt: int, error: str | None) -> None:
        """Forget the attempt's call in flight; if ``error`` (a step timeout cut the call
        off, and the step is retried), record its outcome as that transient error first:
        the request is in the log, and its effect or its cost may have happened."""
        call = self._open.pop((step_id, attempt), None)
        if call is None or error is None:
            return
        name, call_id, started = call
        if name is None:
            self._llm_completed(step_id, attempt, None, started, error, transient=True)
        else:
            self._tool_completed(
                step_id, attempt, name, call_id, None, error, started, transient=True
            )

    def recorded_call(self, step_id: str, attempt: int) -> ev.ToolCompleted | None:
        """The ``tool.completed`` this process recorded for the attempt, if any (the last,
        for an ``llm`` step's loop); forgotten once read."""
        return self._calls.pop((step_id, attempt), None)

    def _tool_completed(  # noqa: PLR0917 — one positional per recorded field
        self,
        step_id: str,
        attempt: int,
        name: str,
        call_id: str | None,
        result: Any,
        error: str | None,
        started: float,
        *,
        transient: bool = False,
    ) -> ev.ToolCompleted:
        return self.emit(
            ev.TOOL_COMPLETED,
            ev.ToolCompleted(
                orchestration_id=self.oid,
                step_id=step_id,
                attempt=attempt,
                gen_ai_tool_name=name,
                gen_ai_tool_call_id=call_id,
                result=result,
                error=error,
                latency_ms=round((time.monotonic() - started) * 1000, 3),
                transient=transient,
            ),
            normalize=True,  # a tool's result is the caller's Python value
        )

    def llm_output(self, r: LLMResponse) -> dict[str, Any]:
        return {
            "content": r.content,
            "json": _json_or_none(r.content),
            "finish_reason": r.finish_reason,
            "message": r.message,
        }

    def base_messages(self, agent: AgentRecord, prompt: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if agent.instructions:
            messages.append({"role": "system", "content": agent.instructions})
        messages.append({"role": "user", "content": prompt})
        return messages
