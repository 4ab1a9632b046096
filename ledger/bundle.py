"""The offline verification bundle (``specs/log-format.md`` §6) of one orchestration.

JSON Lines, in order: a header (covering checkpoint), one checkpoint line per distinct
receipt checkpoint (before its first event, with a consistency proof to the header's
size), one line per event in stream order (its leaf bytes, its inclusion proof against
the header checkpoint, and the receipt issued at append), and the claimed state.

Lines are produced one at a time through ``write``, so a large orchestration is never
held in memory as one document. Used by ``maip-ledger export`` and ``GET …/bundle``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ledger.errors import NotFoundError
from ledger.log import Log, RecordedEvent, SignedCheckpoint
from ledger.merkle import leaf_hash
from ledger.orchestration.state import replay

__all__ = ["BUNDLE_FORMAT", "write_bundle"]

BUNDLE_FORMAT = "maip-bundle/v1"

_ENCODER = msgspec.json.Encoder()


def _line(value: dict[str, Any]) -> bytes:
    return _ENCODER.encode(value) + b"\n"


async def write_bundle(
    log: Log,
    tenant_id: str,
    orchestration_id: str,
    write: Callable[[bytes], Awaitable[None]],
    *,
    header: SignedCheckpoint | None = None,
) -> int:
    """Write the bundle's lines; returns the number of events. Another tenant's
    orchestration, or one with no events, raises :class:`NotFoundError`.

    ``header`` is the checkpoint the bundle is proven against (default: the latest); a
    witnessed one (``ledger/witnessing.py``) carries cosignature lines, so that
    ``maip-verify bundle --witness`` accepts the bundle (§9.5). Events after it are left
    out, as for any checkpoint: the bundle says so (the orchestration is still running
    as of it)."""
    latest = log.latest_checkpoint() if header is None else header
    records: list[RecordedEvent] = await log.read_stream(tenant_id, orchestration_id)
    if latest is None or not records:
        raise NotFoundError(f"no orchestration {orchestration_id!r}")
    # A batch may be durable a moment before the log publishes its checkpoint: the
    # bundle covers exactly what the checkpoint taken above covers.
    records = [r for r in records if r.tree_size <= latest.size]
    if not records:
        raise NotFoundError(f"no orchestration {orchestration_id!r}")
    size = latest.size
    await write(
        _line(
            {
                "kind": "header",
                "format": BUNDLE_FORMAT,
                "origin": log.verifier.name,
                "vkey": log.verifier.vkey,
                "tenant_id": tenant_id,
                "orchestration_id": orchestration_id,
                "event_count": len(records),
                "checkpoint": latest.note,
            }
        )
    )
    written = {size}  # a receipt of the header's size uses the header checkpoint (§6)
    for rec in records:
        if rec.tree_size not in written:
            written.add(rec.tree_size)
            checkpoint = await log.checkpoint_at(rec.tree_size)
            await write(
                _line(
                    {
                        "kind": "checkpoint",
                        "checkpoint": checkpoint.note,
                        "consistency_proof": await log.consistency_proof(rec.tree_size, size),
                    }
                )
            )
        await write(
            _line(
                {
                    "kind": "event",
                    "leaf_index": rec.leaf_index,
                    "leaf": rec.leaf,
                    "inclusion_proof": await log.inclusion_proof(rec.leaf_index, size),
                    "receipt": {
                        "receipt_id": rec.receipt_id,
                        "event_id": rec.event.event_id,
                        "leaf_index": rec.leaf_index,
                        "leaf_hash": leaf_hash(rec.leaf),
                        "tree_size": rec.tree_size,
                        "inclusion_proof": await log.inclusion_proof(rec.leaf_index, rec.tree_size),
                    },
                }
            )
        )
    state = replay(r.event for r in records)
    await write(_line({"kind": "state", "state": state}))
    return len(records)
