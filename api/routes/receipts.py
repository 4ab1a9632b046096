"""``GET /v1/receipts/{receipt_id}``: a receipt (spec §4) plus its orchestration id.

Receipts are immutable, so an encoded receipt is cached per (tenant, receipt id).
"""

from __future__ import annotations

from aiohttp import web

from api.problems import not_found
from api.routes._common import services
from api.services import encode
from api.wire import ReceiptOut
from ledger.errors import NotFoundError
from ledger.merkle import leaf_hash
from ledger.receipt import receipt_id_for

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/receipts/{receipt_id}")
async def receipt(request: web.Request) -> web.Response:
    s = services(request)
    principal = s.authorize(request, "orchestrations:read")
    raw = request.match_info["receipt_id"]
    # The cache is keyed by canonical ids only, so a hit on the id as given is the hit
    # its canonical form would be; clients mostly send the canonical form.
    body = s.receipts.get((principal.tenant_id, raw))
    if body is not None:
        return web.Response(body=body, content_type="application/json")
    try:
        canonical = receipt_id_for(raw)
    except NotFoundError:
        raise not_found(f"no receipt {raw!r}") from None
    key = (principal.tenant_id, canonical)
    body = s.receipts.get(key)
    if body is None:
        rec = await s.log.recorded(canonical, principal.tenant_id)
        note = s.checkpoint_notes.get(rec.tree_size)
        if note is None:
            note = (await s.log.checkpoint_at(rec.tree_size)).note
            s.cache_checkpoint(rec.tree_size, note)
        out = ReceiptOut(
            receipt_id=rec.receipt_id,
            orchestration_id=rec.event.stream_id,
            event_id=rec.event.event_id,
            leaf_index=rec.leaf_index,
            leaf_hash=leaf_hash(rec.leaf),
            tree_size=rec.tree_size,
            inclusion_proof=await s.log.inclusion_proof(rec.leaf_index, rec.tree_size),
            checkpoint=note,
        )
        body = encode(out)
        s.cache_receipt(key, body)
    return web.Response(body=body, content_type="application/json")
