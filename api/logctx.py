"""The per-request log context: request id, tenant and orchestration id.

They are structlog's own context variables (``structlog.contextvars``, merged into every
log line by the processor :func:`api.cli.configure_logging` installs), set directly:
``bind_contextvars`` builds a name and a dict per call and ``clear_contextvars`` walks
the whole context, which adds up at thousands of requests a second.

aiohttp runs each request in its own task, so what a request sets here never reaches
another request; :func:`start_request` still unsets the tenant and orchestration id, so
a request's log lines can only carry what that request bound.
"""

from __future__ import annotations

import contextvars
import itertools
import secrets
from typing import Any

import structlog

__all__ = ["bind_orchestration", "bind_tenant", "new_request_id", "start_request"]

# structlog treats a variable holding Ellipsis as unbound.
_UNSET: Any = ...


def _structlog_var(name: str) -> contextvars.ContextVar[Any]:
    # bind_contextvars creates structlog's variable for a key once and hands back a
    # token naming it; the binding itself is undone at once.
    token = structlog.contextvars.bind_contextvars(**{name: _UNSET})[name]
    token.var.reset(token)
    return token.var


_REQUEST_ID = _structlog_var("request_id")
_TENANT_ID = _structlog_var("tenant_id")
_ORCHESTRATION_ID = _structlog_var("orchestration_id")

# Request ids correlate log lines; they must be unique, not unpredictable, so a random
# per-process prefix and a counter do (uuid4 costs a getrandom call per request).
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count()


def new_request_id() -> str:
    """32 hex digits, unique within this process and, by its random prefix, across runs."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


def start_request(request_id: str) -> None:
    _REQUEST_ID.set(request_id)
    _TENANT_ID.set(_UNSET)
    _ORCHESTRATION_ID.set(_UNSET)


def bind_tenant(tenant_id: str) -> None:
    _TENANT_ID.set(tenant_id)


def bind_orchestration(orchestration_id: str) -> None:
    _ORCHESTRATION_ID.set(orchestration_id)
