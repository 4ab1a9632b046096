"""The ``scripted`` provider: deterministic responses taken from the agent's config.

Config (``provider`` of ``agent.registered``)::

    {"kind": "scripted", "responses": [
        {"content": "hello"},
        {"when": "weather", "tool_calls": [{"name": "echo", "arguments": {"x": 1}}]},
        {"content": "{\\"label\\": \\"spam\\"}", "delay_seconds": 0.0}
    ]}

Choice: the first response whose ``when`` is a substring of the last message's content;
otherwise the responses without ``when``, indexed by the number of assistant turns so
far (the last one repeats). No network, no randomness.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from ledger.orchestration.errors import ProviderError
from ledger.orchestration.providers.base import (
    LLMRequest,
    LLMResponse,
    ToolCall,
    assistant_message,
)

__all__ = ["ScriptedConfig", "ScriptedProvider", "ScriptedResponse", "ScriptedToolCall"]


class ScriptedToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    arguments: Any = msgspec.field(default_factory=dict)


class ScriptedResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content: str | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    when: str | None = None
    #: Simulated latency (for timeout and cancellation demos); the answer is unchanged.
    delay_seconds: float = 0.0


class ScriptedConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="scripted", tag_field="kind"
):
    responses: tuple[ScriptedResponse, ...] = ()


class ScriptedProvider:
    name = "scripted"

    def __init__(self, config: ScriptedConfig) -> None:
        self._config = config
        self._default = tuple(r for r in config.responses if r.when is None)
        self._conditional = tuple(r for r in config.responses if r.when is not None)

    @property
    def deterministic(self) -> bool:
        return all(r.delay_seconds == 0 for r in self._config.responses)

    def _choose(self, request: LLMRequest) -> ScriptedResponse:
        last = request.messages[-1].get("content") if request.messages else None
        if isinstance(last, str):
            for r in self._conditional:
                if r.when is not None and r.when in last:
                    return r
        if not self._default:
            raise ProviderError("scripted provider has no response for this turn", transient=False)
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        return self._default[min(turn, len(self._default) - 1)]

    async def complete(self, request: LLMRequest, *, time_limit: float) -> LLMResponse:
        chosen = self._choose(request)
        if chosen.delay_seconds:
            await asyncio.sleep(chosen.delay_seconds)
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        calls = tuple(
            ToolCall(id=f"call_{turn}_{i}", name=c.name, arguments=c.arguments)
            for i, c in enumerate(chosen.tool_calls)
        )
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in request.messages)
        return LLMResponse(
            message=assistant_message(chosen.content, calls),
            content=chosen.content,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            input_tokens=prompt_words,
            output_tokens=len((chosen.content or "").split()),
            response_id=f"scripted-{turn}",
            response_model=request.model,
        )
