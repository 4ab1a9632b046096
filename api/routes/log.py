"""Public log endpoints (spec §5): checkpoints, the verifier key, proofs and hash tiles.
No credentials: they expose only hashes and signatures.

``/v1/log`` is also a C2SP tlog-tiles prefix: ``<prefix>/checkpoint`` and
``<prefix>/tile/<L>/<N>[.p/<W>]`` (ledger/tiles.py), so tile-reading clients (Go's
``sumdb/tlog.TileHashReader``, say) can prove inclusion and consistency themselves.
"""

from __future__ import annotations

from aiohttp import web

from api.errors import ProblemError
from api.problems import not_found
from api.routes._common import (
    NO_CACHE,
    decimal,
    int_query,
    services,
    witnessed_checkpoint,
)
from api.services import json_response
from ledger.errors import NotFoundError, ProofError
from ledger.tiles import Tile, parse_tile_path

__all__ = ["routes"]

routes = web.RouteTableDef()
_MAX = 2**62
_NOTE = "text/plain"


@routes.get("/v1/log/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    latest = services(request).log.latest_checkpoint()
    if latest is None:
        raise not_found("the log is empty: no checkpoint has been issued yet", headers=NO_CACHE)
    # Mutable: C2SP tlog-tiles asks that caches not keep it beyond a few seconds, and a
    # 200 without Cache-Control is heuristically cacheable (RFC 9111 §4.2.2).
    return web.Response(
        text=latest.note,
        content_type=_NOTE,
        charset="utf-8",
        headers=NO_CACHE,
    )


@routes.get("/v1/log/checkpoint/witnessed")
async def witnessed(request: web.Request) -> web.Response:
    """The newest checkpoint cosigned by at least ``min_cosignatures`` (default 1) of the
    configured witnesses: the log's signed note followed by their cosignature lines
    (spec §5, §9.6). Never the append path: receipts use ``/v1/log/checkpoint``'s."""
    found = await witnessed_checkpoint(request)
    return web.Response(text=found.note, content_type=_NOTE, charset="utf-8", headers=NO_CACHE)


@routes.get("/v1/log/checkpoints/{size}")
async def checkpoint_at(request: web.Request) -> web.Response:
    raw = request.match_info["size"]
    size = decimal(raw, 18)
    if size is None:
        raise not_found(f"no checkpoint was issued at tree size {raw!r}")
    cp = await services(request).log.checkpoint_at(size)
    return web.Response(text=cp.note, content_type=_NOTE, charset="utf-8")


def _tile(request: web.Request) -> Tile:
    found = parse_tile_path("tile/" + request.match_info["tile"])
    # The path as sent, not as decoded: %2F or %2E would spell the same tile another way.
    sent = request.rel_url.raw_path
    if sent != f"/v1/log/{found.path}":
        raise NotFoundError(f"{sent!r} names no tile: it is spelled /v1/log/{found.path}")
    return found


@routes.get("/v1/log/tile/{tile:.+}")
async def tile(request: web.Request) -> web.Response:
    try:
        data = await services(request).log.tile(_tile(request))
    except NotFoundError as e:
        # Not cached: the tree will hold this tile later.
        raise not_found(str(e), headers=NO_CACHE) from e
    # A tile's bytes never change once served, partial ones included (their hashes are
    # complete subtrees): any cache may keep them for good.
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@routes.get("/v1/log/key")
async def key(request: web.Request) -> web.Response:
    verifier = services(request).log.verifier
    return json_response({"origin": verifier.name, "vkey": verifier.vkey})


@routes.get("/v1/log/proof/inclusion")
async def inclusion(request: web.Request) -> web.Response:
    index = int_query(request, "index", high=_MAX)
    size = int_query(request, "tree_size", low=1, high=_MAX)
    log = services(request).log
    try:
        proof = await log.inclusion_proof(index, size)
    except ProofError as e:
        # The log checks the tree size first. It only grows, so one it has reached by
        # now may have been beyond it a moment ago; then the index is wrong as well.
        raise _unprovable(e, "tree_size" if size > log.size or index < size else "index") from None
    return json_response({"leaf_index": index, "tree_size": size, "proof": proof})


@routes.get("/v1/log/proof/consistency")
async def consistency(request: web.Request) -> web.Response:
    first = int_query(request, "first", high=_MAX)
    second = int_query(request, "second", high=_MAX)
    log = services(request).log
    if first == 0 and 0 <= second <= log.size:
        # Every tree extends the empty tree; the proof is empty (RFC 9162 §2.1.4).
        return json_response({"first": 0, "second": second, "proof": []})
    try:
        proof = await log.consistency_proof(first, second)
    except ProofError as e:
        refused = "second" if second > log.size or first <= second else "first"
        raise _unprovable(e, refused) from None
    return json_response({"first": first, "second": second, "proof": proof})


def _unprovable(e: ProofError, field: str) -> ProblemError:
    """The log's refusal, naming the query parameter the caller has to change."""
    return ProblemError(
        422,
        "proof",
        "Proof not available",
        str(e),
        errors=[{"field": field, "message": str(e)}],
    )
