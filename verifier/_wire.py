"""Wire types the verifier decodes (``specs/log-format.md`` §2, §4, §5, §6).

All are frozen msgspec Structs. Bundle lines, the leaf envelope, the consistency-proof
response and the monitor's state file forbid unknown fields: their shapes are fixed by
the spec, and a field we do not know is a field we would silently not check.

Receipts are the deliberate exception (§4: "verifiers ignore unknown receipt fields"):
the HTTP API adds ``orchestration_id`` for convenience, and a receipt saved from the API
must still verify offline. Unknown receipt fields are never trusted for anything.

Structs holding only scalars, bytes and raw JSON are ``gc=False`` (they cannot form
reference cycles), which keeps the garbage collector out of the per-event hot path.

``bytes`` fields are standard base64 with padding on the wire; msgspec decodes them.
The bundle's per-event proofs stay ``msgspec.Raw`` (the JSON array text): the verifier
decodes only the hashes it folds (see :class:`verifier._merkle.PathCursor`) and decodes
the whole array, strictly, whenever anything does not match.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "BundleCheckpoint",
    "BundleEvent",
    "BundleHeader",
    "BundleReceipt",
    "BundleState",
    "ConsistencyResponse",
    "Envelope",
    "LogKey",
    "Receipt",
    "TrustedState",
    "Version",
]


class Receipt(msgspec.Struct, frozen=True, gc=False):
    """§4 receipt. Unknown fields (e.g. the API's ``orchestration_id``) are ignored."""

    receipt_id: str
    event_id: str
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str


class BundleReceipt(msgspec.Struct, frozen=True, gc=False):
    """§6 step 3: a receipt inside a bundle, without its checkpoint (that is a
    checkpoint line of the same ``tree_size``). Unknown fields ignored, as for §4."""

    receipt_id: str
    event_id: str
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    inclusion_proof: msgspec.Raw


class BundleHeader(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="header"
):
    format: str
    origin: str
    vkey: str
    tenant_id: str
    orchestration_id: str
    event_count: int
    checkpoint: str


class BundleCheckpoint(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="checkpoint"
):
    checkpoint: str
    consistency_proof: tuple[bytes, ...]


class BundleEvent(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="event",
    gc=False,
):
    leaf_index: int
    leaf: bytes
    inclusion_proof: msgspec.Raw
    receipt: BundleReceipt


class BundleState(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="state"
):
    state: Any


BundleLine = BundleHeader | BundleCheckpoint | BundleEvent | BundleState


class Version(msgspec.Struct, frozen=True):
    """§2 "Versioning": only ``v`` is read first, so unknown fields are not an error here."""

    v: int


class Envelope(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    gc=False,
    kw_only=True,
    omit_defaults=True,
):
    """§2 leaf, version 1. The payload stays raw: it is decoded per type when folded.

    Fields in code-point order and absent optional ones omitted, as in the canonical
    leaf: encoded again, an envelope is its leaf's bytes exactly if the leaf outside its
    payload is canonical (one member of each name, sorted, no whitespace), which is how
    a bundle checks every leaf's envelope cheaply (``verifier._leaf.check_envelope``).
    """

    causation_id: str | None = None
    correlation_id: str | None = None
    event_id: str
    occurred_at: str
    payload: msgspec.Raw
    stream_id: str
    stream_seq: int
    tenant_id: str
    type: str
    v: int


class ConsistencyResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """§5 ``GET /v1/log/proof/consistency`` body; ``first``/``second`` may be omitted in a
    proof file given to ``maip-verify consistency``."""

    proof: tuple[bytes, ...]
    first: int | None = None
    second: int | None = None


class LogKey(msgspec.Struct, frozen=True):
    """§5 ``GET /v1/log/key`` body."""

    origin: str
    vkey: str


class TrustedState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The monitor's client-held trusted state: the last checkpoint it verified."""

    origin: str
    size: int
    root: bytes
    checkpoint: str
