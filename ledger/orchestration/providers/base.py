"""What every LLM provider speaks: OpenAI-shaped chat messages in, one response out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

__all__ = ["LLMRequest", "LLMResponse", "Provider", "ToolCall", "assistant_message"]


class ToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    name: str
    arguments: Any


class LLMRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str | None
    #: OpenAI chat messages (``role``, ``content``, ``tool_calls``, ``tool_call_id``).
    messages: tuple[dict[str, Any], ...]
    #: OpenAI ``tools`` entries (``{"type": "function", "function": {...}}``).
    tools: tuple[dict[str, Any], ...] = ()
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class LLMResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: The assistant message as an OpenAI message (what is fed back next round).
    message: dict[str, Any]
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    #: Why the model stopped, as the provider reported it; ``None`` if it did not say.
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    response_id: str | None
    response_model: str | None


def assistant_message(content: str | None, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The OpenAI assistant message for a response: its content and (if any) its tool calls,
    with each call's arguments as JSON text."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": msgspec.json.encode(c.arguments).decode(),
                },
            }
            for c in calls
        ]
    return message


class Provider(Protocol):
    @property
    def name(self) -> str:
        """``gen_ai.provider.name``."""
        ...

    @property
    def deterministic(self) -> bool:
        """``True`` if a call has no effect outside the process and always gives the same
        answer: the engine may then buffer its events instead of writing ahead."""
        ...

    async def complete(self, request: LLMRequest, *, time_limit: float) -> LLMResponse: ...
