"""The aiohttp application: resources, middleware and routes.

``create_app(config)`` builds an :class:`aiohttp.web.Application` whose resources —
the key store, the SQLite event store, the :class:`~ledger.log.Log` and the
:class:`~ledger.orchestration.Engine` — are opened in a ``cleanup_ctx`` and closed in
reverse order, so shutdown finishes in-flight appends and stops running
orchestrations at a step boundary (they resume on the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from api.auth import Authenticator
from api.config import Config
from api.errors import ProblemError
from api.keys import KeyStore
from api.logctx import new_request_id, start_request
from api.metrics import Metrics, TimedLog
from api.problems import from_ledger_error, problem_response
from api.routes import register_routes
from api.services import METRICS, SERVICES, Services
from api.sse import StreamHub
from api.tenant_limit import TenantRequests
from ledger.cosignature_store import SQLiteCosignatureStore
from ledger.errors import LedgerError
from ledger.keys import load_or_create_signer
from ledger.log import Log
from ledger.orchestration import ORCHESTRATION_EVENTS, Engine, SQLiteSummaryStore, ToolRegistry
from ledger.sqlite_store import SQLiteEventStore
from ledger.witness_client import http_post
from ledger.witnessing import Witnessing

__all__ = ["create_app"]

_log = structlog.get_logger("api")
#: While storage refuses writes, how often it is probed (a small durable write).
STORAGE_RECHECK_SECONDS = 1.0
#: With nothing written for this long, the server probes storage itself (one small
#: durable write), so /readyz turns false on a medium that failed while idle.
STORAGE_IDLE_PROBE_SECONDS = 5.0
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_name(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    return info.route.resource.canonical if info.route.resource is not None else "unmatched"


def _http_problem(e: web.HTTPException) -> ProblemError:
    status = e.status
    headers = {}
    if status == 405 and "Allow" in e.headers:
        headers["Allow"] = e.headers["Allow"]
    slug, title, detail = {
        404: ("not-found", "Not found", "no such route"),
        405: ("method-not-allowed", "Method not allowed", "this route does not take that method"),
        413: (
            "payload-too-large",
            "Payload too large",
            "the request body exceeds the configured limit",
        ),
    }.get(status, ("http-error", e.reason, e.text or e.reason))
    return ProblemError(status, slug, title, detail, headers=headers)


_SHUTTING_DOWN = ProblemError(
    503,
    "unavailable",
    "Service unavailable",
    "the server is shutting down",
    headers={"Retry-After": "5", "Connection": "close"},
)


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-ID")
    if request_id is None or not _REQUEST_ID_RE.match(request_id):
        request_id = new_request_id()
    start_request(request_id)
    metrics = request.app[METRICS]
    services = request.app.get(SERVICES)
    start = time.perf_counter()
    response: web.StreamResponse
    try:
        if services is None or services.shutting_down:
            response = problem_response(_SHUTTING_DOWN)
        else:
            try:
                response = await handler(request)
            finally:
                services.tenant_requests.leave(request)
    except ProblemError as p:
        response = problem_response(p)
    except web.HTTPException as e:
        response = problem_response(_http_problem(e))
    except LedgerError as e:
        problem = from_ledger_error(e)
        if problem.status >= 500:
            _log.error("request.ledger_error", error=repr(e), status=problem.status)
        response = problem_response(problem)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 — the catch-all: no client input may reach it
        _log.exception("request.unhandled", method=request.method, route=_route_name(request))
        response = problem_response(
            ProblemError(500, "internal", "Internal server error", "an unexpected error occurred")
        )
    elapsed = time.perf_counter() - start
    route = _route_name(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    status = response.status
    metrics.observe_request(request.method, route, status, elapsed)
    _log.info(
        "request",
        method=request.method,
        route=route,
        status=status,
        ms=round(elapsed * 1000, 2),
    )
    return response


@contextlib.asynccontextmanager
async def _witnessing(
    config: Config, log: Log, backoff: tuple[float, float] | None
) -> AsyncIterator[Witnessing | None]:
    """The submitter to the configured witnesses (none: nothing runs), its cosignature
    store and HTTP client, closed in reverse order before the log is."""
    endpoints = config.witness_endpoints()
    if not endpoints:
        yield None
        return
    store = SQLiteCosignatureStore(config.cosignatures_path)
    await store.open()
    try:
        async with aiohttp.ClientSession(
            # An operator's witness URLs: no proxy from the environment, no cookies.
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            options: dict[str, Any] = {} if backoff is None else {"backoff": backoff}
            witnessing = Witnessing(log, store, endpoints, http_post(session), **options)
            await witnessing.start()
            log.add_listener(witnessing.wake)
            try:
                yield witnessing
            finally:
                log.remove_listener(witnessing.wake)
                await witnessing.close()
    finally:
        await store.close()


async def _watch_storage(log: Log, engine: Engine) -> None:
    """Recovery without a restart: once a commit failed for lack of storage (disk full,
    read-only, I/O error), probe it every ``STORAGE_RECHECK_SECONDS``. When a probe
    commits, ``/readyz`` turns true again and the runs the failure stopped resume,
    whether or not any client write arrives meanwhile. Detection without a write: an
    idle server probes every ``STORAGE_IDLE_PROBE_SECONDS``."""
    while True:
        await asyncio.sleep(STORAGE_RECHECK_SECONDS)
        try:
            if await log.check_storage(STORAGE_IDLE_PROBE_SECONDS) and engine.stalled:
                await engine.resume_stalled()
        except Exception:  # noqa: BLE001 — the watch must outlive any one failed round
            _log.exception("storage.watch_failed")


def create_app(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    now: Callable[[], datetime] | None = None,
    tools: ToolRegistry | None = None,
    on_ready: Callable[[Services], Awaitable[None]] | None = None,
    witness_backoff: tuple[float, float] | None = None,
) -> web.Application:
    """The application. ``env`` (provider keys), ``now`` and ``tools`` are injected into
    the engine; ``on_ready`` runs once resources are open (``serve --demo`` seeds there);
    ``witness_backoff`` (first and largest retry delay, seconds) into the submitter."""
    app = web.Application(middlewares=[_middleware], client_max_size=config.max_body_bytes)
    app[METRICS] = Metrics()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        metrics = app[METRICS]
        config.data_dir.mkdir(parents=True, exist_ok=True)
        keys = KeyStore(config.keys_path)
        try:
            auth = Authenticator(config, keys)
            signer = load_or_create_signer(config.data_dir, config.origin, config.key_file)
            log = await Log.open(
                SQLiteEventStore(config.ledger_path),
                signer,
                ORCHESTRATION_EVENTS,
                hash_cache_bytes=config.hash_cache_mib << 20,
            )
        except BaseException:
            keys.close()
            raise
        hub = StreamHub()
        engine_options: dict[str, Any] = {
            "stop_grace_seconds": config.shutdown_grace_seconds,
            "provider_policy": config.provider_policy(),
            "summaries": SQLiteSummaryStore(config.summaries_path),
        }
        if env is not None:
            engine_options["env"] = env
        if now is not None:
            engine_options["now"] = now
        if tools is not None:
            engine_options["tools"] = tools
        engine = Engine(TimedLog(log, metrics.append_latency), **engine_options)
        log.add_listener(hub.on_commit)
        metrics.attach(log, engine)
        watch: asyncio.Task[None] | None = None
        witnesses = contextlib.AsyncExitStack()
        try:
            witnessing = await witnesses.enter_async_context(
                _witnessing(config, log, witness_backoff)
            )
            if witnessing is not None:
                metrics.attach_witnessing(witnessing)
            resumed = await engine.start()
            services = Services(
                config,
                keys,
                auth,
                log,
                engine,
                metrics,
                hub,
                TenantRequests(config.max_requests_per_tenant),
                witnessing=witnessing,
            )
            log.add_receipt_listener(services.receipts_issued)
            app[SERVICES] = services
            watch = asyncio.create_task(_watch_storage(log, engine), name="storage-watch")
            _log.info("server.ready", tree_size=log.size, resumed=len(resumed))
            if on_ready is not None:
                await on_ready(services)
            yield
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            hub.close()
            try:
                try:
                    # First: the submitter reads the log, and stops at once.
                    await witnesses.aclose()
                finally:
                    await engine.close()
            finally:
                # Whatever the engine's stop raised, the log still finishes what it
                # accepted and closes its files.
                try:
                    await log.close()
                finally:
                    keys.close()
            _log.info("server.stopped")

    async def on_shutdown(app: web.Application) -> None:
        services = app.get(SERVICES)
        if services is not None:
            services.shutting_down = True
            services.hub.close()
            # Running orchestrations stop at their next step boundary (they resume on the
            # next start); requests waiting on them (Prefer: wait) answer now. Those still
            # in flight read on: the cleanup closes the engine once they are done.
            await services.engine.stop()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(on_shutdown)
    register_routes(app)
    return app
