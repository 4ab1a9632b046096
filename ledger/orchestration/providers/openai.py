"""The ``openai`` provider: OpenAI-compatible ``POST {base_url}/chat/completions``.

Works with OpenAI, vLLM, Ollama, llama.cpp server and LiteLLM. Config::

    {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1",
     "api_key_env": "OPENAI_API_KEY", "timeout_seconds": 60}

The API key is read from the named environment variable at call time; it is sent only
in the ``Authorization`` header and never enters an event, an error or a log line (error
texts are scrubbed of it). 429, 5xx, timeouts and connection errors are transient
(:class:`ProviderError` with ``transient=True``); other 4xx and malformed responses are
not. A transient answer's ``Retry-After`` (or ``retry-after-ms``) is written into the
error (``(retry after Ns)``), where the runner reads the least wait before the retry.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import structlog

from ledger.orchestration._json import decode_json
from ledger.orchestration._net import read_capped
from ledger.orchestration.errors import (
    ProviderError,
    SSRFBlockedError,
    WorkflowValidationError,
)
from ledger.orchestration.providers.base import (
    LLMRequest,
    LLMResponse,
    ToolCall,
    assistant_message,
    retry_after_note,
)

if TYPE_CHECKING:
    from ledger.orchestration.providers.policy import ProviderPolicy

__all__ = ["OpenAIConfig", "OpenAIProvider"]

_log = structlog.get_logger()
#: The most of a response body any agent's provider reads, whatever its
#: ``max_response_bytes`` says: the body is held in memory whole, and whoever registers
#: the agent (a tenant) chooses both the cap and the host that answers.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class OpenAIConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="openai", tag_field="kind"
):
    base_url: str
    api_key_env: str | None = None
    timeout_seconds: float = 60.0
    max_response_bytes: int = 4 * 1024 * 1024


class OpenAIProvider:
    name = "openai"
    deterministic = False

    def __init__(
        self,
        config: OpenAIConfig,
        session: aiohttp.ClientSession,
        env: Mapping[str, str],
        policy: ProviderPolicy | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._env = env
        self._policy = policy

    def _key(self) -> str | None:
        if self._config.api_key_env is None:
            return None
        # Read from a secret file, a key often ends in a newline; no key holds whitespace.
        return self._env.get(self._config.api_key_env, "").strip() or None

    def _scrub(self, text: str, *, limit: int | None = None) -> str:
        """``text`` without the key, cut to ``limit`` characters: cut only after the key
        is replaced, so the cut cannot leave part of it behind."""
        key = self._key()
        if key:
            text = text.replace(key, "[redacted]")
        if limit is None or len(text) <= limit:
            return text
        text = text[:limit]
        # A key that went on past the cap of the body read is still cut off at its end.
        for n in range(min(len(key or ""), len(text)), 0, -1):
            if key and text.endswith(key[:n]):
                return text[:-n]
        return text

    async def complete(self, request: LLMRequest, *, time_limit: float) -> LLMResponse:
        if self._policy is not None:
            # Checked again here: the policy may have tightened since registration.
            try:
                self._policy.check(self._config)
            except WorkflowValidationError as e:
                raise ProviderError(str(e), transient=False) from None
        url = self._config.base_url.rstrip("/") + "/chat/completions"
        body: dict[str, Any] = {**request.parameters, "messages": list(request.messages)}
        if request.model is not None:
            body["model"] = request.model
        if request.tools:
            body["tools"] = list(request.tools)
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            if any(c < " " or c == "\x7f" for c in key):  # aiohttp refuses such a header
                raise ProviderError(
                    f"the API key in {self._config.api_key_env} holds a control character",
                    transient=False,
                )
            headers["Authorization"] = f"Bearer {key}"
        limit = min(time_limit, self._config.timeout_seconds)
        started = time.monotonic()
        try:
            async with self._session.post(
                url,
                data=msgspec.json.encode(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
            ) as resp:
                raw = await read_capped(
                    resp, min(self._config.max_response_bytes, MAX_RESPONSE_BYTES)
                )
                status = resp.status
                asked = _retry_after(resp.headers) if status == 429 or status >= 500 else None
        except TimeoutError:
            raise ProviderError(f"provider timed out after {limit:g}s", transient=True) from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, SSRFBlockedError):  # the policy's resolver refused
                raise ProviderError(str(e.os_error), transient=False) from None
            raise ProviderError(
                self._scrub(f"provider connection failed: {type(e).__name__}"), transient=True
            ) from None
        except aiohttp.InvalidURL as e:
            raise ProviderError(
                f"provider URL is unusable: {type(e).__name__}", transient=False
            ) from None
        except aiohttp.ClientError as e:
            raise ProviderError(
                self._scrub(f"provider connection failed: {type(e).__name__}"), transient=True
            ) from None
        _log.debug("llm.http", status=status, latency_ms=(time.monotonic() - started) * 1000)
        try:
            data = decode_json(raw) if raw is not None else None
        except msgspec.DecodeError:
            data = None
        if status == 429 or status >= 500:
            raise ProviderError(
                f"provider returned HTTP {status}{retry_after_note(asked)}"
                + self._detail(data, raw),
                transient=True,
                status=status,
            )
        if raw is None:
            raise ProviderError("provider response is too large", transient=False)
        if status >= 300:
            raise ProviderError(
                f"provider returned HTTP {status}{self._detail(data, raw)}",
                transient=False,
                status=status,
            )
        if data is None:
            raise _malformed("body is not JSON")
        if isinstance(data, dict) and "choices" not in data and "error" in data:
            # A proxy passing an upstream failure on in a 200 (OpenRouter, LiteLLM).
            raise ProviderError(
                f"provider returned an error with HTTP {status}{self._detail(data, raw)}",
                transient=_transient_code(data["error"]),
                status=status,
            )
        return _parse(data)

    def _detail(self, data: Any, raw: bytes | None) -> str:
        """``": "`` and what an error body says, bounded and without the key."""
        detail = self._scrub(_error_text(data, raw, self._scrub), limit=MAX_DETAIL_CHARS)
        return f": {detail}" if detail else ""


#: The most of an error body's message that an error records.
MAX_DETAIL_CHARS = 500
_MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.DOTALL | re.IGNORECASE)


def _error_text(data: Any, raw: bytes | None, scrub: Callable[[str], str]) -> str:
    """What an error body says: the message, type and code of OpenAI's shape
    (``{"error": {"message", "type", "code"}}``, also LiteLLM's, Ollama's and llama.cpp
    server's), of vLLM's (``{"object": "error", "message", "type", "code"}``), of
    ``{"error": "text"}`` or of FastAPI's ``{"detail": "text"}``; else the body's text,
    without markup if it is a (proxy's) HTML page, whitespace collapsed. A body's text is
    ``scrub``-bed whole, then cut to what can matter before any pattern runs over it (a
    body may be many MiB)."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    elif error is None and isinstance(data, dict):
        if isinstance(data.get("message"), str):
            error = data
        elif isinstance(data.get("detail"), str):  # FastAPI's, as in front of many servers
            error = {"message": data["detail"]}
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        notes = [
            f"{name} {value}"
            for name in ("type", "code")
            if isinstance(value := error.get(name), str | int) and not isinstance(value, bool)
        ]
        text = error["message"][: 16 * MAX_DETAIL_CHARS] + (
            f" ({', '.join(notes)})" if notes else ""
        )
    elif raw:
        text = scrub(raw.decode("utf-8", "replace"))[: 16 * MAX_DETAIL_CHARS]
        if text.lstrip()[:1] == "<":
            text = _MARKUP.sub(" ", text)
    else:
        return ""
    return " ".join(text.split())


def _transient_code(error: Any) -> bool:
    """Whether an error body's ``code`` is an HTTP status a retry may outlast."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdecimal():
        code = int(code)
    return isinstance(code, int) and (code == 429 or 500 <= code <= 599)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a transient answer asks for, in seconds: OpenAI's ``retry-after-ms``, or
    ``Retry-After`` (RFC 9110 §10.2.3) as seconds or as an HTTP-date, counted from the
    answer's own ``Date`` (the server's clock, not ours), else from now. ``None`` if
    neither is there or usable."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("Retry-After")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
        date = headers.get("Date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return (when - now).total_seconds()
    except (TypeError, ValueError):  # not a date, or one without a zone against one with
        return None


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _malformed(why: str) -> ProviderError:
    return ProviderError(f"malformed provider response: {why}", transient=False)


def _parse(data: Any) -> LLMResponse:
    if not isinstance(data, dict):
        raise _malformed("body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _malformed("choices[0].message is missing")
    content = message.get("content")
    if isinstance(content, list):
        content = _text_of_parts(content)
    if content is not None and not isinstance(content, str):
        raise _malformed("choices[0].message.content is not a string")
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _malformed("tool_calls is not a list")
    for i, c in enumerate(raw_calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _malformed(f"tool_calls[{i}].function.name is missing")
        args_text = fn.get("arguments")
        if args_text is None or (isinstance(args_text, str) and not args_text.strip()):
            args_text = "{}"  # a function without parameters, as some servers send it
        try:
            # Text, as OpenAI sends it; an object, as some servers do.
            args = decode_json(args_text) if isinstance(args_text, str) else args_text
        except msgspec.DecodeError:
            raise _malformed(f"tool_calls[{i}].function.arguments is not JSON") from None
        call_id = c.get("id") if isinstance(c.get("id"), str) else f"call_{i}"
        calls.append(ToolCall(id=call_id, name=fn["name"], arguments=args))
    finish = choices[0].get("finish_reason")
    refusal = message.get("refusal")
    if content is None and not calls and isinstance(refusal, str) and refusal:
        # OpenAI's structured refusal: the model declined, the server kept the protocol.
        raise ProviderError(f"the model refused: {refusal[:MAX_DETAIL_CHARS]}", transient=False)
    if content is None and not calls:
        if isinstance(finish, str):  # a well-formed reply: the model was stopped
            # (content_filter, as Azure's filter does; length, a reasoning model out of
            # tokens), not a server breaking the protocol.
            raise ProviderError(
                f"the model stopped without content (finish_reason {finish[:100]!r})",
                transient=False,
            )
        raise _malformed("message has neither content nor tool_calls")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return LLMResponse(
        message=assistant_message(content, calls),
        content=content,
        tool_calls=tuple(calls),
        finish_reason=finish if isinstance(finish, str) else None,
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        response_id=data.get("id") if isinstance(data.get("id"), str) else None,
        response_model=data.get("model") if isinstance(data.get("model"), str) else None,
    )


def _text_of_parts(parts: list[Any]) -> str | None:
    """Content sent as a list of parts (as some OpenAI-compatible servers send it): their
    text joined, ``None`` if there is none; ``_malformed`` for a part that is not text."""
    texts = []
    for i, part in enumerate(parts):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str) or part.get("type") not in ("text", "output_text"):
            raise _malformed(f"choices[0].message.content[{i}] is not a text part")
        texts.append(text)
    return "".join(texts) if texts else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
