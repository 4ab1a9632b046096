"""Orchestrations: execute (both documented shapes), create (external executor), get,
list, events, SSE stream, cancel, external steps and the offline bundle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from typing import Any

import msgspec
from aiohttp import web

from api.auth import Principal, single_header
from api.errors import ProblemError
from api.logctx import bind_orchestration
from api.problems import bad_request, from_ledger_error
from api.routes._common import (
    convert,
    decimal,
    int_query,
    orchestration_id,
    query_param,
    read_json,
    services,
    while_connected,
    witnessed_checkpoint,
)
from api.services import KeyLock, Services, encode, json_response
from api.sse import format_sse
from api.wire import (
    CancelRequest,
    CreateOrchestrationRequest,
    EventOut,
    ExecuteAgentRequest,
    ExecuteWorkflowRequest,
    LeafPayload,
    StepsRequest,
)
from ledger.bundle import write_bundle
from ledger.errors import LedgerError, NotFoundError, StorageUnavailableError
from ledger.ids import canonical_uuid
from ledger.log import RecordedEvent
from ledger.orchestration import OrchestrationState
from ledger.orchestration.errors import OrchestrationNotFoundError

__all__ = ["routes"]

routes = web.RouteTableDef()

_READ = "orchestrations:read"
_WRITE = "orchestrations:write"
_IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,255}\Z")
_PREFER_WAIT_RE = re.compile(r"(?:^|[,;\s])wait=([0-9]{1,6})(?:$|[,;\s])")
_MAX_WAIT_SECONDS = 60
_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_SSE_HEARTBEAT_SECONDS = 15.0
_TERMINAL = frozenset(
    {"orchestration.completed", "orchestration.failed", "orchestration.cancelled"}
)
_ENDED = frozenset({"completed", "failed", "cancelled"})
_LEAF_PAYLOAD = msgspec.json.Decoder(LeafPayload)
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _location(state: OrchestrationState) -> dict[str, str]:
    return {"Location": f"/v1/orchestrations/{state.orchestration_id}"}


def _prefer_wait(request: web.Request) -> int | None:
    """RFC 7240 ``Prefer: wait=N``: hold the answer up to N seconds for completion."""
    prefer = request.headers.get("Prefer")
    if prefer is None:
        return None
    m = _PREFER_WAIT_RE.search(prefer.lower())
    return min(int(m.group(1)), _MAX_WAIT_SECONDS) if m else None


def _body_hash(route: str, body: Any) -> bytes:
    return hashlib.sha256(
        route.encode() + b"\n" + msgspec.json.encode(body, order="sorted")
    ).digest()


async def _answer(
    s: Services, request: web.Request, tenant: str, state: OrchestrationState, replayed: bool
) -> web.Response:
    headers = _location(state)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    # An external executor's run ends when that executor says so, and it is the one
    # asking: holding its own request until then would only stall it.
    wait = _prefer_wait(request) if state.executor == "engine" else None
    if wait and not state.terminal:
        state = await while_connected(
            request, s.engine.wait(tenant, state.orchestration_id, max_wait=wait)
        )
        headers["Preference-Applied"] = f"wait={wait}"
    return json_response(state, status=200 if state.terminal and wait else 202, headers=headers)


async def _idempotent(
    request: web.Request, tenant: str, route: str, body: Any, start: Any
) -> web.Response:
    """Run ``start()`` once per ``Idempotency-Key`` (same key, same body → same orchestration;
    same key, other body → 409).

    The key is reserved with a freshly minted orchestration id *before* anything starts,
    so a crash or a refused write between the two can never lead a retry to start a
    second orchestration: the retry finds the reservation and either answers with that
    orchestration or, if it never became durable, starts it under the reserved id.
    """
    s = services(request)
    key = single_header(request, "Idempotency-Key")
    if key is None:
        state = await start(None)
        bind_orchestration(state.orchestration_id)
        return await _answer(s, request, tenant, state, replayed=False)
    if not _IDEMPOTENCY_RE.match(key):
        raise bad_request(
            "Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key"
        )
    digest = _body_hash(route, body)
    lock_key = (tenant, route, key)
    held = s.idempotency_locks.get(lock_key)
    if held is None:
        held = s.idempotency_locks[lock_key] = KeyLock()
    held.users += 1
    try:
        async with held.lock:
            seen = s.keys.idempotency(tenant, route, key)
            if seen is not None:
                if seen.body_hash != digest:
                    raise ProblemError(
                        409,
                        "idempotency-conflict",
                        "Conflict",
                        "this Idempotency-Key was used with a different request body",
                    )
                bind_orchestration(seen.orchestration_id)
                try:
                    state = await s.engine.get_state(tenant, seen.orchestration_id)
                except NotFoundError:
                    state = await _start_reserved(s, lock_key, seen.orchestration_id, start)
                    return await _answer(s, request, tenant, state, replayed=False)
                return await _answer(s, request, tenant, state, replayed=True)
            reserved = s.engine.new_orchestration_id()
            s.keys.remember(tenant, route, key, digest, reserved)
            state = await _start_reserved(s, lock_key, reserved, start)
    finally:
        held.users -= 1
        if held.users == 0:
            del s.idempotency_locks[lock_key]
    bind_orchestration(state.orchestration_id)
    return await _answer(s, request, tenant, state, replayed=False)


async def _start_reserved(
    s: Services, idempotency: tuple[str, str, str], reserved: str, start: Any
) -> OrchestrationState:
    """``start(reserved)``; if it refuses the request (404, 422) and nothing was started,
    the key's reservation is released, so the corrected request may use the same key."""
    try:
        state: OrchestrationState = await start(reserved)
    except LedgerError as e:
        refused = from_ledger_error(e).status in (404, 422)
        tenant = idempotency[0]
        if refused and await s.engine.summaries.get(tenant, reserved) is None:
            # Not being able to release costs only that: the key stays with this body.
            with contextlib.suppress(StorageUnavailableError):
                s.keys.forget(*idempotency, reserved)
        raise
    return state


@routes.post("/v1/orchestrations/execute")
async def execute(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, _WRITE)
    raw = await read_json(request)
    body: ExecuteWorkflowRequest | ExecuteAgentRequest
    if isinstance(raw, dict) and ("agent_id" in raw or "input" in raw):
        body = convert(raw, ExecuteAgentRequest)
    else:
        body = convert(raw, ExecuteWorkflowRequest)
    tenant = principal.tenant_id

    async def start(orchestration_id: str | None) -> OrchestrationState:
        if isinstance(body, ExecuteWorkflowRequest):
            return await s.engine.execute(
                tenant,
                workflow_id=body.workflow_id.lower(),
                agents=[a.lower() for a in body.agents],
                parameters=body.parameters,
                started_by=principal.subject,
                request_shape="workflow",
                orchestration_id=orchestration_id,
            )
        return await s.engine.execute(
            tenant,
            agent_id=body.agent_id.lower(),
            workflow_id=body.workflow_id.lower() if body.workflow_id else None,
            input=body.input,
            model=body.model,
            max_steps=body.max_steps,
            timeout_seconds=body.timeout_seconds,
            started_by=principal.subject,
            request_shape="agent",
            orchestration_id=orchestration_id,
        )

    return await _idempotent(request, tenant, "execute", raw, start)


@routes.route("*", "/v1/orchestrations/execute")
async def execute_other_methods(request: web.Request) -> web.Response:
    # Without this, GET and HEAD fall through to /v1/orchestrations/{id} (a 404 for an
    # orchestration named "execute"), and other methods get an Allow merged from both.
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


@routes.post("/v1/orchestrations")
async def create(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, _WRITE)
    raw = await read_json(request)
    body = convert(raw, CreateOrchestrationRequest)
    tenant = principal.tenant_id
    options: dict[str, Any] = {}
    if body.max_steps is not None:
        options["max_steps"] = body.max_steps
    if body.timeout_seconds is not None:
        options["timeout_seconds"] = body.timeout_seconds

    async def start(orchestration_id: str | None) -> OrchestrationState:
        common: dict[str, Any] = {
            "workflow_id": body.workflow_id.lower() if body.workflow_id else None,
            "agent_id": body.agent_id.lower() if body.agent_id else None,
            "agents": [a.lower() for a in body.agents],
            "input": body.input,
            "parameters": body.parameters,
            "model": body.model,
            "started_by": principal.subject,
            "orchestration_id": orchestration_id,
            **options,
        }
        if body.executor == "external":
            return await s.engine.create_external(tenant, **common)
        return await s.engine.execute(tenant, **common)

    return await _idempotent(request, tenant, "create", raw, start)


@routes.get("/v1/orchestrations")
async def list_orchestrations(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, _READ)
    status = query_param(request, "status")
    if status is not None and status not in _STATUSES:
        raise bad_request(f"status must be one of {', '.join(_STATUSES)}", field="status")
    cursor = query_param(request, "cursor")
    if cursor is not None and not _UUID_RE.match(cursor):
        raise bad_request("cursor must be a next_cursor value from a previous page", field="cursor")
    limit = int_query(request, "limit", default=50, low=1, high=500)
    page, next_cursor = await s.engine.list_orchestrations(
        principal.tenant_id,
        status=status,
        agent_id=_uuid_query(request, "agent_id", "agent"),
        workflow_id=_uuid_query(request, "workflow_id", "workflow"),
        cursor=cursor,
        limit=limit,
    )
    return json_response({"items": page, "next_cursor": next_cursor})


def _uuid_query(request: web.Request, name: str, alias: str) -> str | None:
    """The id filter ``name`` (or ``alias``) as a canonical UUID: ids are stored lower-case,
    so an upper-case one would silently match nothing."""
    field, raw = name, query_param(request, name)
    if not raw:
        field, raw = alias, query_param(request, alias)
    elif query_param(request, alias):
        raise bad_request(f"give {name} or {alias}, not both", field=alias)
    if not raw:
        return None
    try:
        return canonical_uuid(raw)
    except ValueError:
        raise bad_request(f"{field} must be a UUID", field=field) from None


def _on_orchestration(request: web.Request, scope: str) -> tuple[Services, Principal, str]:
    """Authorize a call on the orchestration in the path; its id joins the log context."""
    s = services(request)
    principal = s.authorize(request, scope)
    oid = orchestration_id(request)
    bind_orchestration(oid)
    return s, principal, oid


@routes.get("/v1/orchestrations/{id}")
async def get(request: web.Request) -> web.Response:
    s, principal, oid = _on_orchestration(request, _READ)
    wait = int_query(request, "wait", default=0, high=_MAX_WAIT_SECONDS)
    if wait:
        state = await while_connected(
            request, s.engine.wait(principal.tenant_id, oid, max_wait=wait)
        )
    else:
        state = await s.engine.get_state(principal.tenant_id, oid)
    return json_response(state)


def _event_out(rec: RecordedEvent) -> EventOut:
    e = rec.event
    return EventOut(
        event_id=e.event_id,
        stream_seq=e.stream_seq,
        type=e.type,
        occurred_at=e.occurred_at,
        payload=_LEAF_PAYLOAD.decode(rec.leaf).payload,
        leaf_index=rec.leaf_index,
        receipt_id=rec.receipt_id,
        tree_size=rec.tree_size,
        leaf=rec.leaf,
    )


async def _known(s: Services, tenant: str, oid: str) -> None:
    if await s.engine.summaries.get(tenant, oid) is None:
        raise OrchestrationNotFoundError(f"no orchestration {oid!r}")


@routes.get("/v1/orchestrations/{id}/events")
async def events(request: web.Request) -> web.Response:
    s, principal, oid = _on_orchestration(request, _READ)
    await _known(s, principal.tenant_id, oid)
    records = await s.log.read_stream(principal.tenant_id, oid)
    return json_response({"orchestration_id": oid, "events": [_event_out(r) for r in records]})


def _last_event_id(request: web.Request) -> int:
    # The header is what a reconnecting EventSource sends; the parameter is for clients
    # that cannot set headers. The error names the one the value came from.
    field, raw = "Last-Event-ID", single_header(request, "Last-Event-ID")
    if not raw:
        field, raw = "last_event_id", query_param(request, "last_event_id")
    seq = decimal(raw or "0", 12)
    if seq is None:
        raise bad_request(f"{field} must be a stream_seq (a non-negative integer)", field=field)
    return seq


@routes.get("/v1/orchestrations/{id}/events/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    s = services(request)
    principal = s.authorize(request, _READ)
    oid = orchestration_id(request)
    tenant = principal.tenant_id
    await _known(s, tenant, oid)
    last = _last_event_id(request)
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if request.method == "HEAD":
        # No body follows, so nothing to wait for: the stream would hold the connection.
        return web.Response(headers=headers)
    sub = s.hub.subscribe(tenant, oid)

    def allowed() -> bool:
        # The credential was checked when the stream connected; a key revoked (or a JWT
        # expired) since must not go on receiving it.
        return s.auth.still_authorized(request, principal, _READ)

    try:
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        done = False
        backlog = await s.log.read_stream(tenant, oid, after_seq=last)
        for rec in backlog:
            if not allowed():
                done = True
                break
            await response.write(_sse(rec))
            last = rec.event.stream_seq
            done = rec.event.type in _TERMINAL
        if not done:
            # A client resuming from the terminal event (or from past the head) gets no
            # backlog and no live event: without this it would get keep-alives forever.
            summary = await s.engine.summaries.get(tenant, oid)
            done = summary is not None and summary.status in _ENDED and last >= summary.seq
        while not done:
            item: RecordedEvent | None
            try:
                if not sub.queue.empty():
                    # A batch's events are queued at once: reading them through the
                    # presence check cost two tasks an event.
                    item = sub.queue.get_nowait()
                else:
                    # A dropped stream lived on until a heartbeat write failed, holding
                    # its subscription and its tenant's slot: a client reconnecting every
                    # few seconds piled up streams nobody read.
                    item = await while_connected(
                        request, asyncio.wait_for(sub.queue.get(), _SSE_HEARTBEAT_SECONDS)
                    )
            except TimeoutError:
                if not allowed():
                    break
                await response.write(b": keep-alive\n\n")
                continue
            if item is None or sub.overflowed:
                break
            done = item.event.type in _TERMINAL
            if item.event.stream_seq <= last:
                # Already sent, or the client claims to be past it: the stream still
                # ends with the run.
                continue
            if not allowed():
                break
            await response.write(_sse(item))
            last = item.event.stream_seq
        await response.write_eof()
        return response
    finally:
        sub.close()


def _sse(rec: RecordedEvent) -> bytes:
    return format_sse(rec.event.stream_seq, rec.event.type, encode(_event_out(rec)))


@routes.post("/v1/orchestrations/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    s, principal, oid = _on_orchestration(request, _WRITE)
    raw = await read_json(request, optional=True)
    reason = "cancelled" if raw is None else convert(raw, CancelRequest).reason
    state = await s.engine.cancel(
        principal.tenant_id, oid, reason=reason, requested_by=principal.subject
    )
    return json_response(state)


@routes.post("/v1/orchestrations/{id}/steps")
async def steps(request: web.Request) -> web.Response:
    s, principal, oid = _on_orchestration(request, _WRITE)
    body = convert(await read_json(request), StepsRequest)
    receipts = await s.engine.record_step(
        principal.tenant_id, oid, [(e.type, e.payload) for e in body.events]
    )
    out = [{**msgspec.to_builtins(r), "orchestration_id": oid} for r in receipts]
    return json_response({"orchestration_id": oid, "receipts": out}, status=201)


@routes.get("/v1/orchestrations/{id}/bundle")
async def bundle(request: web.Request) -> web.StreamResponse:
    s, principal, oid = _on_orchestration(request, _READ)
    await _known(s, principal.tenant_id, oid)
    # ?witnessed=true: proven against the newest witnessed checkpoint, so that
    # maip-verify bundle --witness accepts it (spec §9.6), as export --witnessed does.
    witnessed = query_param(request, "witnessed") or "false"
    if witnessed not in ("true", "false"):
        raise bad_request("witnessed must be true or false", field="witnessed")
    if witnessed == "false" and query_param(request, "min_cosignatures") is not None:
        raise bad_request("min_cosignatures needs witnessed=true", field="min_cosignatures")
    header = await witnessed_checkpoint(request) if witnessed == "true" else None
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Disposition": f'attachment; filename="{oid}.bundle.jsonl"',
    }
    if request.method == "HEAD":
        # A StreamResponse writes whatever it is given, HEAD or not: the bundle would
        # follow the headers and be read as the next response on a kept-alive connection.
        return web.Response(headers=headers)
    response = web.StreamResponse(headers=headers)
    prepared = False

    async def write(line: bytes) -> None:
        nonlocal prepared
        if not prepared:
            await response.prepare(request)
            prepared = True
        await response.write(line)

    await write_bundle(s.log, principal.tenant_id, oid, write, header=header)
    await response.write_eof()
    return response
