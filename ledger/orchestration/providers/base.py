"""What every LLM provider speaks: OpenAI-shaped chat messages in, one response out."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgspec

__all__ = [
    "MAX_RETRY_AFTER_SECONDS",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ToolCall",
    "assistant_message",
    "retry_after_note",
    "retry_after_of",
]

#: The longest wait before a retry that a provider's answer (``Retry-After``) can ask
#: for; a longer one is cut to this. The step's own backoff is waited if it is longer.
MAX_RETRY_AFTER_SECONDS: Final = 60.0

_RETRY_AFTER = re.compile(r"provider returned HTTP \d{3} \(retry after (\d+(?:\.\d+)?)s\)")


def retry_after_note(seconds: float | None) -> str:
    """What a transient provider error's text says after ``provider returned HTTP nnn``
    of the wait the server asked for (cut to :data:`MAX_RETRY_AFTER_SECONDS`): the
    recorded text is what the live run, a journal and a resumed run read the wait from."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = round(min(seconds, MAX_RETRY_AFTER_SECONDS), 3)
    return f" (retry after {seconds:g}s)" if seconds > 0 else ""


def retry_after_of(error: str | None) -> float:
    """The wait a recorded provider error asked for before the retry (0 if none)."""
    match = _RETRY_AFTER.match(error) if error else None
    return min(float(match.group(1)), MAX_RETRY_AFTER_SECONDS) if match else 0.0


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
