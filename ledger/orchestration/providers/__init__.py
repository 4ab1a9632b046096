"""LLM providers: ``scripted`` (built in, deterministic) and ``openai`` (HTTP)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import aiohttp
import msgspec

from ledger.orchestration._net import url_host
from ledger.orchestration.errors import SSRFBlockedError, WorkflowValidationError
from ledger.orchestration.providers.base import LLMRequest, LLMResponse, Provider, ToolCall
from ledger.orchestration.providers.openai import OpenAIConfig, OpenAIProvider
from ledger.orchestration.providers.policy import ProviderPolicy
from ledger.orchestration.providers.scripted import (
    ScriptedConfig,
    ScriptedProvider,
    ScriptedResponse,
    ScriptedToolCall,
)

__all__ = [
    "LLMRequest",
    "LLMResponse",
    "OpenAIConfig",
    "OpenAIProvider",
    "Provider",
    "ProviderConfig",
    "ProviderPolicy",
    "ScriptedConfig",
    "ScriptedProvider",
    "ScriptedResponse",
    "ScriptedToolCall",
    "ToolCall",
    "make_provider",
    "parse_provider_config",
]

ProviderConfig = ScriptedConfig | OpenAIConfig
#: msgspec's "<message> - at `$<path>`", the path relative to the provider config.
_AT = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
#: A field msgspec names in the message, one level below the path it reports.
_NAMED = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def _invalid(e: msgspec.ValidationError) -> WorkflowValidationError:
    """msgspec's error as one about the field inside ``provider`` it is about: its own
    path is relative to the config, so it would read as a field of the request."""
    m = _AT.fullmatch(str(e))
    assert m is not None  # every part of the pattern is optional but the message
    field = "provider" + (m.group("path") or "")
    named = _NAMED.match(m.group("message"))
    if named is not None:
        field += "." + named.group(1)
    return WorkflowValidationError(m.group("message"), field=field)


def parse_provider_config(raw: object) -> ProviderConfig:
    """Validate a provider config (``{"kind": ...}``); errors name the field."""
    if isinstance(raw, ScriptedConfig | OpenAIConfig):
        return raw
    try:
        config: ProviderConfig = msgspec.convert(raw, ProviderConfig)
    except msgspec.ValidationError as e:
        raise _invalid(e) from None
    if isinstance(config, OpenAIConfig):
        try:  # scheme and host only: where it may connect is the policy's call
            url_host(config.base_url)
        except SSRFBlockedError as e:
            raise WorkflowValidationError(str(e), field="provider.base_url") from None
    return config


def make_provider(
    config: ProviderConfig,
    *,
    session: aiohttp.ClientSession | None,
    env: Mapping[str, str],
    policy: ProviderPolicy | None = None,
) -> Provider:
    if isinstance(config, ScriptedConfig):
        return ScriptedProvider(config)
    if session is None:
        raise WorkflowValidationError("the openai provider needs an HTTP session", field="provider")
    return OpenAIProvider(config, session, env, policy)
