"""Helpers shared by the route modules: bodies, ids, query parameters."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from aiohttp import hdrs, web

from api.errors import ProblemError
from api.problems import bad_request, from_validation_error, not_found, unsupported_coding
from api.routes._repeated_keys import repeated_member
from api.services import SERVICES, Services
from ledger.ids import canonical_uuid
from ledger.log import SignedCheckpoint
from ledger.orchestration import MAX_JSON_NESTING, decode_json, parse_orchestration_id

__all__ = [
    "convert",
    "decimal",
    "int_query",
    "orchestration_id",
    "query_param",
    "read_json",
    "services",
    "while_connected",
]

T = TypeVar("T")
#: How long a request body may take to arrive in full (slowloris bound); 408 after.
BODY_READ_TIMEOUT_SECONDS = 30.0
_DECIMAL_RE = re.compile(r"[0-9]+")
#: Content codings aiohttp undoes for us (it would also take br and zstd, but only with
#: optional packages this server does not install).
_CODINGS = frozenset({"identity", "gzip", "deflate"})
#: How deep arrays and objects in a body may nest: as deep as any JSON from outside
#: (see ``ledger/orchestration/_json.py``), so whatever is accepted can be written to the
#: log and read back.
MAX_BODY_NESTING = MAX_JSON_NESTING


#: How often a request held open on purpose (a stream, a wait) checks that its client is
#: still there. aiohttp does not cancel a handler whose client left, so such a request
#: went on holding its tenant's request slot (api/tenant_limit.py) for up to a minute.
PRESENCE_SECONDS = 1.0


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def while_connected(request: web.Request, waiting: Awaitable[T]) -> T:
    """``await waiting``, unless the client leaves first: then ``ConnectionResetError``
    (and ``waiting`` is cancelled). For waits that only read (:meth:`Engine.wait`, a
    stream's queue), so nothing is left half done."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PRESENCE_SECONDS)
            if done:
                return task.result()
            if _client_gone(request):
                raise ConnectionResetError("the client left")
    finally:
        if not task.done():
            task.cancel()


def decimal(raw: str, max_digits: int) -> int | None:
    """``raw`` as an integer if it is ASCII digits, at most ``max_digits`` significant.

    Not ``str.isdigit()`` or a bare ``int()``: both are Unicode-aware. isdigit() takes
    "²", which int() then refuses (an uncaught ValueError, a 500); int() takes " 5",
    "5_0" and U+0665 (Arabic-Indic five). A number in a URL or a header is ASCII digits.
    """
    if not _DECIMAL_RE.fullmatch(raw):
        return None
    significant = raw.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The JSON body: 415 for another content type or coding, 413 over the limit, 400 if
    malformed (or if it does not decompress)."""
    if not request.body_exists:
        if optional:
            return None
        raise bad_request("a JSON request body is required", slug="malformed-json")
    ctype = request.content_type
    if ctype != "application/json" and not (
        ctype.startswith("application/") and ctype.endswith("+json")
    ):
        raise ProblemError(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"the body must be application/json, not {ctype or 'unspecified'}",
        )
    codings = request.headers.getall(hdrs.CONTENT_ENCODING, [])
    if codings and not (
        len(codings) == 1 and codings[0].isascii() and codings[0].lower() in _CODINGS
    ):
        # aiohttp hands over a body in a coding it does not know as it came, still coded.
        raise unsupported_coding()
    try:
        if request.content.is_eof():
            # The whole body is already here (the usual case for small bodies), so the
            # read cannot stall: skip arming and cancelling a timer on every request.
            raw = await request.read()
        else:
            async with asyncio.timeout(BODY_READ_TIMEOUT_SECONDS):
                raw = await request.read()
    except TimeoutError:
        # A slow (slowloris) body: aiohttp has no body read timeout of its own.
        raise ProblemError(
            408,
            "request-timeout",
            "Request timeout",
            f"the request body did not arrive within {BODY_READ_TIMEOUT_SECONDS:g} s",
            headers={"Connection": "close"},
        ) from None
    except web.RequestPayloadError as e:
        # A body that does not decompress, or broken chunked framing. Either way where
        # the next request on this connection would start is in doubt: close it.
        raise ProblemError(
            400,
            "malformed-body",
            "Bad request",
            "the request body could not be read: it does not match its Content-Encoding "
            "or Transfer-Encoding",
            headers={"Connection": "close"},
        ) from e
    if not raw.strip() and optional:
        return None
    try:
        value = decode_json(raw)
    except msgspec.DecodeError as e:
        raise bad_request(f"the body is not valid JSON: {e}", slug="malformed-json") from None
    repeated = repeated_member(raw, value)
    if repeated is not None:
        name, path = repeated
        raise bad_request(
            f"an object in the body has two members named {name!r}: which one is meant is "
            "ambiguous, so neither is taken (RFC 7493 §2.3)",
            slug="malformed-json",
            field=path,
        )
    return value


def convert(value: Any, type_: type[T]) -> T:
    """Validate a decoded body against a wire Struct (422 naming the failing field)."""
    if not isinstance(value, dict):
        raise ProblemError(
            422,
            "validation",
            "Validation failed",
            "the body must be a JSON object",
            errors=[{"field": "$", "message": "Expected `object`"}],
        )
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as e:
        raise from_validation_error(e) from None


def orchestration_id(request: web.Request) -> str:
    """The canonical UUID from ``{id}``: a UUID or ``maip-orch:<ULID>``; else 404."""
    raw = request.match_info["id"]
    try:
        return parse_orchestration_id(raw)
    except ValueError:
        raise not_found(f"no orchestration {raw!r}") from None


def uuid_param(request: web.Request, name: str, what: str) -> str:
    """The path parameter ``name`` as a canonical (lower-case) UUID; else 404: ids are
    stored canonical, so ``ABC…`` and ``abc…`` must name the same resource."""
    raw = request.match_info[name]
    try:
        return canonical_uuid(raw)
    except ValueError:
        raise not_found(f"no {what} {raw!r}") from None


def query_param(request: web.Request, name: str) -> str | None:
    """The query parameter ``name``, or ``None``; 400 if it is given more than once.

    Not ``request.query.get``, which takes the first and ignores the rest: a proxy or a
    check in front that reads the last one would see another request than the one served.
    """
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise bad_request(f"the query parameter {name!r} is given more than once", field=name)
    return values[0] if values else None


def int_query(
    request: web.Request, name: str, *, default: int | None = None, low: int = 0, high: int
) -> int:
    """A non-negative integer query parameter in ``low..high`` (400 otherwise)."""
    raw = query_param(request, name)
    if raw is None:
        if default is None:
            raise bad_request(f"the query parameter {name!r} is required", field=name)
        return default
    if not _DECIMAL_RE.fullmatch(raw):
        raise bad_request(f"{name} must be an integer", field=name)
    value = decimal(raw, len(str(high)))
    if value is None or not low <= value <= high:
        raise bad_request(f"{name} must be in {low}..{high}", field=name)
    return value


#: A client may ask for a checkpoint cosigned by up to this many witnesses.
_MAX_COSIGNATURES = 100
#: For answers that change as the log grows (a bare 200 or 404 may be kept by a cache).
NO_CACHE = {"Cache-Control": "no-cache"}


async def witnessed_checkpoint(request: web.Request) -> SignedCheckpoint:
    """The newest checkpoint cosigned by ``?min_cosignatures`` (default 1) of the log's
    witnesses (spec §9.6); a 404 problem while there is none, or no witness at all."""
    at_least = int_query(request, "min_cosignatures", default=1, low=1, high=_MAX_COSIGNATURES)
    witnessing = services(request).witnessing
    if witnessing is None:
        raise not_found("this log has no witnesses configured", headers=NO_CACHE)
    if at_least > len(witnessing.witnesses):
        raise bad_request(
            f"min_cosignatures must be in 1..{len(witnessing.witnesses)}, the witnesses "
            "this log has",
            field="min_cosignatures",
        )
    found = await witnessing.witnessed(at_least)
    if found is None:
        raise not_found(
            f"no checkpoint carries cosignatures from {at_least} of the log's witnesses yet",
            headers=NO_CACHE,
        )
    return found
