"""``GET /v1/receipts/{receipt_id}``: a receipt (spec §4) plus its orchestration id.

Receipts are immutable, so an encoded receipt is cached per (tenant, receipt id); those
the log issues are kept as issued (``Services.receipts_issued``) and encoded on first
fetch, the rest are read from the ledger.
"""

from __future__ import annotations

from aiohttp import web

from api.problems import not_found
from api.routes._common import services
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
