"""Receipt verification, ``specs/log-format.md`` §4.1.

Needs only the receipt, the leaf bytes and the trusted vkey. Inclusion is RFC 9162
§2.1.3.2; the checkpoint is a C2SP signed note (§3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._errors import MalformedInput, ReceiptMismatch, VerificationError
from verifier._ids import receipt_id_for
from verifier._leaf import decode, decode_leaf
from verifier._merkle import leaf_hash, verify_inclusion
from verifier._note import VerifierKey, parse_vkey
from verifier._quorum import WitnessPolicy, verify_witnessed
from verifier._wire import Envelope, Receipt

__all__ = ["VerifiedReceipt", "parse_receipt", "verify_receipt"]

_RECEIPT = msgspec.json.Decoder(Receipt)


class VerifiedReceipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What :func:`verify_receipt` establishes: this event is in this signed tree."""

    receipt: Receipt
    checkpoint: Checkpoint
    event: Envelope


def parse_receipt(receipt: Receipt | bytes | str | Mapping[str, Any]) -> Receipt:
    """A :class:`Receipt` from JSON text/bytes or a decoded mapping."""
    if isinstance(receipt, Receipt):
        return receipt
    if isinstance(receipt, bytes | str):
        return decode(_RECEIPT, receipt, "receipt")  # type: ignore[no-any-return]
    if isinstance(receipt, Mapping):
        try:
            return msgspec.convert(receipt, Receipt)
        except (msgspec.ValidationError, ValueError, RecursionError) as e:
            raise MalformedInput(f"receipt does not decode: {e}") from e
    raise MalformedInput("a receipt must be JSON text, bytes or a mapping")


def verify_receipt(
    receipt: Receipt | bytes | str | Mapping[str, Any],
    leaf_bytes: bytes,
    vkey: str | VerifierKey,
    *,
    witnesses: WitnessPolicy | None = None,
) -> VerifiedReceipt:
    """§4.1: verify a receipt for ``leaf_bytes`` under the trusted ``vkey``.

    With ``witnesses``, step 1 also requires the checkpoint to carry a quorum of their
    cosignatures (§9.5); without, witness cosignatures are not read.

    Returns the :class:`VerifiedReceipt` or raises a :class:`VerificationError` subclass
    whose ``step`` names the §4.1 step that failed.
    """
    key = parse_vkey(vkey)
    r = parse_receipt(receipt)
    if not isinstance(leaf_bytes, bytes):
        raise MalformedInput("leaf bytes must be bytes")
    step = "§4.1 step 1 (checkpoint)"
    try:
        # 1. Verify the checkpoint under the trusted key; its origin is the key name.
        checkpoint = verify_checkpoint(r.checkpoint, key)
        #    With witnesses required, a quorum of them cosigned it (§9.5).
        if witnesses is not None:
            verify_witnessed(r.checkpoint, witnesses)
        # 2. tree_size equals the checkpoint's size.
        step = "§4.1 step 2 (tree size)"
        if r.tree_size != checkpoint.size:
            raise ReceiptMismatch(
                f"receipt tree_size {r.tree_size} is not its checkpoint's size {checkpoint.size}"
            )
        # 3. SHA-256(0x00 || leaf bytes) equals leaf_hash.
        step = "§4.1 step 3 (leaf hash)"
        computed = leaf_hash(leaf_bytes)
        if computed != r.leaf_hash:
            raise ReceiptMismatch(
                "the leaf bytes' hash is not the receipt's leaf_hash (the leaf was altered, "
                "or this is another event's receipt)"
            )
        # 4. The leaf's event_id is the receipt's; receipt_id is that ULID as a UUID.
        step = "§4.1 step 4 (event id)"
        event = decode_leaf(leaf_bytes)
        if event.event_id != r.event_id:
            raise ReceiptMismatch(
                f"leaf event_id {event.event_id!r} is not the receipt's {r.event_id!r}"
            )
        expected_id = receipt_id_for(event.event_id)
        if r.receipt_id != expected_id:
            raise ReceiptMismatch(
                f"receipt_id {r.receipt_id!r} is not derived from event {event.event_id} "
                f"(expected {expected_id!r})"
            )
        # 5. The inclusion proof leads from leaf_hash at leaf_index to the root.
        step = "§4.1 step 5 (inclusion)"
        verify_inclusion(r.leaf_hash, r.leaf_index, r.tree_size, r.inclusion_proof, checkpoint.root)
    except VerificationError as e:
        e.at_step(step)
        raise
    return VerifiedReceipt(r, checkpoint, event)
