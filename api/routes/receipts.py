"""``GET /v1/receipts/{receipt_id}``: a receipt (spec §4) plus its orchestration id;
``GET /v1/receipts/{receipt_id}/witnessed``: the same event proven against the newest
witnessed checkpoint instead (spec §9.6), for ``maip-verify receipt --witness``.

Receipts are immutable, so an encoded receipt is cached per (tenant, receipt id); those
the log issues are kept as issued (``Services.receipts_issued``) and encoded on first
fetch, the rest are read from the ledger.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from api.problems import not_found
from api.routes._common import NO_CACHE, services, witnessed_checkpoint
from api.services import encode
from api.wire import ReceiptOut
from ledger.errors import NotFoundError
from ledger.receipt import Receipt, receipt_id_for

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/receipts/{receipt_id}")
async def receipt(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, "orchestrations:read")
    raw = request.match_info["receipt_id"]
    # The cache is keyed by canonical ids only, so a hit on the id as given is the hit
    # its canonical form would be; clients mostly send the canonical form.
    hit = s.receipts.get((principal.tenant_id, raw))
    if type(hit) is bytes:
        return web.Response(body=hit, content_type="application/json")
    try:
        canonical = receipt_id_for(raw)
    except NotFoundError:
        raise not_found(f"no receipt {raw!r}") from None
    key = (principal.tenant_id, canonical)
    hit = s.receipts.get(key)
    if isinstance(hit, bytes):
        body = hit
    else:
        if hit is None:
            hit = await s.log.stream_receipt(canonical, principal.tenant_id)
        body = encode(_receipt_out(hit))
        s.cache_receipt(key, body)
    return web.Response(body=body, content_type="application/json")


@routes.get("/v1/receipts/{receipt_id}/witnessed")
async def witnessed_receipt(request: web.Request) -> web.Response:
    """The receipt with its inclusion proof against the newest checkpoint that
    ``min_cosignatures`` witnesses cosigned, and that checkpoint with their lines. A
    receipt is issued at once against a checkpoint no witness has seen yet; this is the
    one a client that requires witnesses keeps, once they have caught up."""
    s = services(request)
    principal = s.authorize(request, "orchestrations:read")
    raw = request.match_info["receipt_id"]
    try:
        canonical = receipt_id_for(raw)
    except NotFoundError:
        raise not_found(f"no receipt {raw!r}") from None
    stream, issued = await s.log.stream_receipt(canonical, principal.tenant_id)
    found = await witnessed_checkpoint(request)
    if issued.leaf_index >= found.size:
        raise not_found(
            f"the newest witnessed checkpoint (tree size {found.size}) does not cover leaf "
            f"{issued.leaf_index} yet: try again once the witnesses have caught up",
            headers=NO_CACHE,
        )
    proof = await s.log.inclusion_proof(issued.leaf_index, found.size)
    r = msgspec.structs.replace(
        issued, tree_size=found.size, inclusion_proof=proof, checkpoint=found.note
    )
    body = encode(_receipt_out((stream, r)))
    return web.Response(body=body, content_type="application/json", headers=NO_CACHE)


def _receipt_out(hit: tuple[str, Receipt]) -> ReceiptOut:
    stream, r = hit
    return ReceiptOut(
        receipt_id=r.receipt_id,
        orchestration_id=stream,
        event_id=r.event_id,
        leaf_index=r.leaf_index,
        leaf_hash=r.leaf_hash,
        tree_size=r.tree_size,
        inclusion_proof=r.inclusion_proof,
        checkpoint=r.checkpoint,
    )
