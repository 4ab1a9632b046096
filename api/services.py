"""The per-app services handlers use, and JSON response helpers."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from api.auth import Authenticator, Principal
from api.config import Config
from api.keys import KeyStore
from api.logctx import bind_tenant
from api.metrics import Metrics
from api.sse import StreamHub
from api.tenant_limit import TenantRequests
from ledger.log import Log
from ledger.orchestration import Engine
from ledger.receipt import Receipt
from ledger.witnessing import Witnessing

__all__ = ["METRICS", "SERVICES", "KeyLock", "Services", "encode", "json_response"]


@dataclass(slots=True)
class KeyLock:
    """One Idempotency-Key's lock, and how many requests hold or await it: the lock is
    dropped from the map at zero, and not when it merely looks unlocked, which it does
    between a release and the woken waiter taking it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Services:
    """Everything a handler needs, opened by :func:`create_app`'s cleanup context."""

    config: Config
    keys: KeyStore
    auth: Authenticator
    log: Log
    engine: Engine
    metrics: Metrics
    hub: StreamHub
    tenant_requests: TenantRequests
    #: The background submitter to the configured witnesses; None without any.
    witnessing: Witnessing | None = None
    shutting_down: bool = False
    #: By (tenant, receipt id): the encoded answer, or the receipt as the log issued it
    #: (with its orchestration id), encoded on first fetch. Receipts are immutable.
    receipts: OrderedDict[tuple[str, str], bytes | tuple[str, Receipt]] = field(
        default_factory=OrderedDict
    )
    #: By (tenant, route, Idempotency-Key), while a request holds or awaits it.
    idempotency_locks: dict[tuple[str, str, str], KeyLock] = field(default_factory=dict)

    def authorize(self, request: web.Request, *scopes: str) -> Principal:
        """The caller, if it has any of ``scopes``; binds its tenant to the log context
        and counts the request against the tenant's limit (429 at it)."""
        principal = self.auth.authorize(request, *scopes)
        bind_tenant(principal.tenant_id)
        self.tenant_requests.enter(request, principal.tenant_id)
        return principal

    def cache_receipt(self, key: tuple[str, str], body: bytes) -> None:
        self.receipts[key] = body
        self._trim_receipts()

    def receipts_issued(self, issued: Sequence[tuple[str, str, Receipt]]) -> None:
        """Keep receipts as they are issued: clients and auditors fetch recent ones
        first, and each would otherwise cost a ledger read and a proof."""
        receipts = self.receipts
        for tenant, stream, receipt in issued:
            receipts[(tenant, receipt.receipt_id)] = (stream, receipt)
        self._trim_receipts()

    def _trim_receipts(self) -> None:
        """Drop the oldest entries beyond ``receipt_cache_entries``."""
        receipts, cap = self.receipts, self.config.receipt_cache_entries
        while len(receipts) > cap:
            receipts.popitem(last=False)


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


_ENCODER = msgspec.json.Encoder()


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(value),
        status=status,
        content_type="application/json",
        headers=headers,
    )
